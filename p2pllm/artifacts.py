"""The compiled contracts (ABI + creation bytecode of OfferRegistry and PaymentEscrow) as the package ships them:
JSON files under `p2pllm/contracts/`, read with `importlib.resources`, so an installed package needs neither a
compiler nor the checkout's `contracts/`. They are built by `devkit.compile` (`make artifacts`), and a test
proves they equal a fresh compile of `contracts/src`. Knows nothing about chains or transactions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

CONTRACT_NAMES = ("OfferRegistry", "PaymentEscrow")
PACKAGE = "p2pllm.contracts"


class ArtifactError(RuntimeError):
    """A shipped artifact is missing or unreadable (a broken install, or a checkout without `make artifacts`)."""


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict]
    bytecode: str
    compiler: str
    evm_version: str
    optimizer_runs: int
    source_hash: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True) + "\n"


@cache
def load_artifacts() -> dict[str, Artifact]:
    """Every shipped artifact by contract name."""
    artifacts = {}
    for name in CONTRACT_NAMES:
        try:
            text = resources.files(PACKAGE).joinpath(f"{name}.json").read_text()
            artifacts[name] = Artifact(**json.loads(text))
        except (OSError, ValueError, TypeError) as exc:
            raise ArtifactError(f"contract artifact {name}.json unreadable in package {PACKAGE}: {exc}; "
                                "reinstall the package (in a checkout: `make artifacts`)") from exc
    return artifacts
