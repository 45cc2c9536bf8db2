"""The contract artifacts the package ships equal a fresh compile of contracts/src, and load without a compiler;
`sources_unchanged` (which lets `scripts/deploy.py` skip the compile) sees a changed, added or missing file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devkit.compile import (
    CONTRACTS_SRC,
    PACKAGE_DATA,
    SOLC_BINARY,
    compile_contracts,
    sources_unchanged,
    stale_artifacts,
)
from p2pllm.artifacts import CONTRACT_NAMES, load_artifacts


@pytest.mark.skipif(not SOLC_BINARY.exists(), reason="no solc wrapper in .tools/bin (run `make setup`)")
def test_shipped_artifacts_equal_a_fresh_compile() -> None:
    fresh = compile_contracts()
    assert stale_artifacts(fresh) == [], "shipped contract artifacts are stale: run `make artifacts`"
    shipped = load_artifacts()
    for name in CONTRACT_NAMES:
        assert shipped[name] == fresh[name]


def test_shipped_artifacts_are_complete() -> None:
    artifacts = load_artifacts()
    assert set(artifacts) == set(CONTRACT_NAMES)
    for artifact in artifacts.values():
        assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 1000
        assert any(item.get("type") == "constructor" for item in artifact.abi)
        assert artifact.evm_version == "cancun" and artifact.compiler == "0.8.30"


def test_sources_unchanged_sees_each_change_to_the_sources_or_the_artifacts(tmp_path: Path) -> None:
    src, shipped = tmp_path / "src", tmp_path / "artifacts"
    shutil.copytree(CONTRACTS_SRC, src)
    shutil.copytree(PACKAGE_DATA, shipped)
    assert sources_unchanged(PACKAGE_DATA, CONTRACTS_SRC)  # the checkout as committed
    assert sources_unchanged(shipped, src)

    edited = sorted(src.glob("*.sol"))[0]
    original = edited.read_bytes()
    edited.write_bytes(original + b"\n// one more line\n")
    assert not sources_unchanged(shipped, src)
    edited.write_bytes(original)

    (src / "Extra.sol").write_text("// SPDX-License-Identifier: MIT\npragma solidity 0.8.30;\n")
    assert not sources_unchanged(shipped, src)
    (src / "Extra.sol").unlink()
    assert sources_unchanged(shipped, src)

    (shipped / f"{CONTRACT_NAMES[0]}.json").unlink()
    assert not sources_unchanged(shipped, src)
