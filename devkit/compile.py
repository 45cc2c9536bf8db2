"""Compiles `contracts/src` with the checkout's offline solc wrapper (`.tools/bin/solc`) through py-solc-x and
writes the package data that `p2pllm.artifacts` ships. Dev-only: an installed package never compiles.

    python -m devkit.compile           # rebuild p2pllm/contracts/*.json (also `make artifacts`)
    python -m devkit.compile --check   # exit 1 if the shipped artifacts differ from a fresh compile
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from p2pllm.artifacts import CONTRACT_NAMES, Artifact

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_SRC = REPO_ROOT / "contracts" / "src"
PACKAGE_DATA = REPO_ROOT / "p2pllm" / "contracts"
SOLC_BINARY = REPO_ROOT / ".tools" / "bin" / "solc"
SOLC_VERSION = "0.8.30"
EVM_VERSION = "cancun"
OPTIMIZER_RUNS = 10_000
REMAPPINGS = ["@openzeppelin/contracts/=node_modules/@openzeppelin/contracts/"]


class CompileError(RuntimeError):
    """The compiler is missing, has the wrong version, or rejected the sources."""


def source_hash(src: Path = CONTRACTS_SRC) -> str:
    """What an artifact records of its inputs: the .sol files in `src` and the pinned solc, EVM version and
    optimizer runs."""
    digest = hashlib.sha256()
    for path in sorted(src.glob("*.sol")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(f"{SOLC_VERSION}/{EVM_VERSION}/{OPTIMIZER_RUNS}".encode())
    return digest.hexdigest()


def _standard_input() -> dict:
    sources = {
        f"contracts/src/{p.name}": {"content": p.read_text()} for p in sorted(CONTRACTS_SRC.glob("*.sol"))
    }
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "viaIR": True,
            "remappings": REMAPPINGS,
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }


def _binary_version() -> str:
    out = subprocess.run([str(SOLC_BINARY), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1].split()[-1].split("+")[0]


def compile_contracts() -> dict[str, Artifact]:
    """A fresh compile of contracts/src with the pinned solc (nothing written)."""
    import solcx  # dev dependency

    if not SOLC_BINARY.exists():
        raise CompileError(f"solc wrapper not found at {SOLC_BINARY}; run `make setup`")
    version = _binary_version()
    if version != SOLC_VERSION:
        raise CompileError(f"solc {version} found, {SOLC_VERSION} pinned; run `make setup`")
    try:
        output = solcx.compile_standard(
            _standard_input(), base_path=str(REPO_ROOT), allow_paths=[str(REPO_ROOT)], solc_binary=SOLC_BINARY
        )
    except solcx.exceptions.SolcError as exc:
        raise CompileError(str(exc)) from exc
    digest = source_hash()
    artifacts = {}
    for name in CONTRACT_NAMES:
        contract = output["contracts"][f"contracts/src/{name}.sol"][name]
        artifacts[name] = Artifact(name, contract["abi"], "0x" + contract["evm"]["bytecode"]["object"], version,
                                   EVM_VERSION, OPTIMIZER_RUNS, digest)
    return artifacts


def write_artifacts(artifacts: dict[str, Artifact], directory: Path = PACKAGE_DATA) -> list[Path]:
    """Write each artifact as <directory>/<Name>.json (atomically); returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, artifact in artifacts.items():
        path = directory / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(artifact.to_json())
        tmp.replace(path)
        paths.append(path)
    return paths


def sources_unchanged(directory: Path = PACKAGE_DATA, src: Path = CONTRACTS_SRC) -> bool:
    """Whether every artifact in `directory` records `source_hash(src)`: then a compile (seconds of solc) would
    only confirm them, and `scripts/deploy.py` skips it. The hash leaves out OpenZeppelin's pinned version and the
    other compiler settings; `python -m devkit.compile --check` and the test suite compile afresh for those."""
    current = source_hash(src)
    for name in CONTRACT_NAMES:
        try:
            recorded = Artifact(**json.loads((directory / f"{name}.json").read_text())).source_hash
        except (OSError, ValueError, TypeError):
            return False
        if recorded != current:
            return False
    return True


def stale_artifacts(fresh: dict[str, Artifact], directory: Path = PACKAGE_DATA) -> list[str]:
    """Names whose shipped JSON differs from `fresh` (or is missing)."""
    stale = []
    for name, artifact in fresh.items():
        path = directory / f"{name}.json"
        if not path.exists() or path.read_text() != artifact.to_json():
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare the shipped artifacts with a fresh compile")
    args = parser.parse_args(argv)
    try:
        fresh = compile_contracts()
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stale = stale_artifacts(fresh)
    if args.check:
        if stale:
            print(f"stale: {', '.join(stale)} (run `make artifacts`)", file=sys.stderr)
            return 1
        print("shipped artifacts equal a fresh compile")
        return 0
    for path in write_artifacts(fresh):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
