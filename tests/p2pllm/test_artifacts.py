"""The contract artifacts the package ships equal a fresh compile of contracts/src, and load without a compiler."""

from __future__ import annotations

import pytest

from devkit.compile import SOLC_BINARY, compile_contracts, stale_artifacts
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
