"""Where deployment files (`<network>.json`, written by `p2pllm-deploy`) are kept and looked up, never inside the
installed package: an explicit `--deployment FILE`; else `./deployments/<network>.json` under the current
directory; else the per-user data directory (`$P2PLLM_HOME`, else `$XDG_DATA_HOME/p2pllm`, else
`~/.local/share/p2pllm`), `deployments/<network>.json`. Paths only; reading the file is `p2pllm.chain`'s."""

from __future__ import annotations

import os
from pathlib import Path


class DeploymentNotFound(FileNotFoundError):
    """No deployment file for the network in any of the places looked at."""

    def __init__(self, network: str, searched: list[Path]) -> None:
        places = ", ".join(str(p) for p in searched)
        super().__init__(f"no deployment for network {network!r}: looked at {places}; deploy with "
                         f"`p2pllm-deploy --network {network}` or pass --deployment FILE")
        self.searched = searched


def user_data_dir() -> Path:
    """The per-user data directory of P2P-LLM."""
    if os.environ.get("P2PLLM_HOME"):
        return Path(os.environ["P2PLLM_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "p2pllm"


def candidate_paths(network: str, cwd: Path | None = None) -> list[Path]:
    """The places looked at for `network`, in order."""
    if not network or "/" in network or network.startswith("."):
        raise ValueError(f"network name must be a plain name like 'anvil', got {network!r}")
    here = Path.cwd() if cwd is None else cwd
    return [here / "deployments" / f"{network}.json", user_data_dir() / "deployments" / f"{network}.json"]


def find_deployment(network: str, explicit: Path | None = None, cwd: Path | None = None) -> Path:
    """The deployment file to use: `explicit` as given (even if missing: the reader says so), else the first of
    `candidate_paths` that exists; DeploymentNotFound when none does."""
    if explicit is not None:
        return explicit
    paths = candidate_paths(network, cwd)
    for path in paths:
        if path.is_file():
            return path
    raise DeploymentNotFound(network, paths)


def default_output_dir(cwd: Path | None = None) -> Path:
    """Where `p2pllm-deploy` writes by default: `./deployments/`, the first place looked at."""
    return (Path.cwd() if cwd is None else cwd) / "deployments"
