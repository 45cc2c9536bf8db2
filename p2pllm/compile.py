"""Compiles the Solidity contracts with the repo's offline solc wrapper through py-solc-x and caches the
artifacts (ABI + bytecode) under build/contracts/. Knows nothing about chains or transactions."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_SRC = REPO_ROOT / "contracts" / "src"
ARTIFACTS_DIR = REPO_ROOT / "build" / "contracts"
SOLC_BINARY = REPO_ROOT / ".tools" / "bin" / "solc"
SOLC_VERSION = "0.8.30"
EVM_VERSION = "cancun"
OPTIMIZER_RUNS = 10_000
REMAPPINGS = ["@openzeppelin/contracts/=node_modules/@openzeppelin/contracts/"]
CONTRACT_NAMES = ("OfferRegistry", "PaymentEscrow")


class CompileError(RuntimeError):
    """The compiler is missing, has the wrong version, or rejected the sources."""


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict]
    bytecode: str
    compiler: str
    source_hash: str


def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(CONTRACTS_SRC.glob("*.sol")):
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


def compile_contracts() -> dict[str, Artifact]:
    """Compile contracts/src with the pinned solc and write build/contracts/<Name>.json."""
    import solcx  # local import: only deploy/compile paths need the compiler

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
    source_hash = _source_hash()
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Artifact] = {}
    for name in CONTRACT_NAMES:
        contract = output["contracts"][f"contracts/src/{name}.sol"][name]
        artifact = Artifact(name, contract["abi"], "0x" + contract["evm"]["bytecode"]["object"], version, source_hash)
        tmp = ARTIFACTS_DIR / f"{name}.json.tmp"
        tmp.write_text(json.dumps(artifact.__dict__, indent=1))
        tmp.replace(ARTIFACTS_DIR / f"{name}.json")
        artifacts[name] = artifact
    return artifacts


def _binary_version() -> str:
    out = subprocess.run([str(SOLC_BINARY), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1].split()[-1].split("+")[0]


def load_artifacts() -> dict[str, Artifact]:
    """Artifacts for the current sources: from the cache when fresh, else compiled now."""
    source_hash = _source_hash()
    try:
        loaded = {
            name: Artifact(**json.loads((ARTIFACTS_DIR / f"{name}.json").read_text())) for name in CONTRACT_NAMES
        }
    except (OSError, ValueError, TypeError):
        return compile_contracts()
    if any(a.source_hash != source_hash for a in loaded.values()):
        return compile_contracts()
    return loaded
