"""The package installs with pip on its own: a wheel built from the checkout, installed (not editable, with its
dependencies) into a fresh venv, gives working `p2pclient`, `p2pnode` and `p2pllm-deploy` from a directory
outside the checkout, deploys to a real anvil from the bytecode it ships, and finds the deployment file it wrote
(./deployments, then the per-user data directory) without the checkout, `.tools/` or `contracts/`.

Takes about a minute (the venv gets torch, transformers and web3 from pip's cache or the registry)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from devkit.devnet import Anvil

REPO = Path(__file__).resolve().parents[2]
DEV_ONLY = ("devkit/", "research/", "tests/", "scripts/", "benchmarks/", "contracts/src/")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def _source_copy(dest: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files (what a clean clone would build from)."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = _source_copy(root / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w",
          str(root / "dist"), str(source)], cwd=root, env=dict(os.environ), timeout=600)
    (built,) = (root / "dist").glob("p2p_llm-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("venv") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(path)], cwd=path.parent, env=dict(os.environ))
    _run([str(path / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", str(wheel)], cwd=path.parent,
         env=dict(os.environ), timeout=900)
    return path


def test_wheel_ships_the_contracts_and_no_dev_code(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {"p2pllm/contracts/OfferRegistry.json", "p2pllm/contracts/PaymentEscrow.json"} <= set(names)
    assert not [n for n in names if n.startswith(DEV_ONLY)]
    shipped = json.loads(zipfile.ZipFile(wheel).read("p2pllm/contracts/PaymentEscrow.json"))
    assert shipped == json.loads((REPO / "p2pllm" / "contracts" / "PaymentEscrow.json").read_text())


def test_installed_clis_work_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    bin_dir = venv / "bin"
    home = tmp_path / "home"
    work = tmp_path / "elsewhere"
    other = tmp_path / "another"
    for d in (home, work, other):
        d.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}

    where = _run([str(bin_dir / "python"), "-c", "import p2pllm, client, node; print(p2pllm.__file__)"], work, env)
    assert str(venv) in where.stdout and str(REPO) not in where.stdout
    missing = subprocess.run([str(bin_dir / "python"), "-c", "import devkit"], cwd=work, env=env,
                             capture_output=True, text=True)
    assert missing.returncode != 0, "dev-only code must not be installed"

    for tool in ("p2pclient", "p2pnode", "p2pllm-deploy"):
        help_text = _run([str(bin_dir / tool), "--help"], work, env).stdout
        assert "usage:" in help_text

    with Anvil() as anvil:
        deployed = _run([str(bin_dir / "p2pllm-deploy"), "--network", "anvil", "--rpc-url", anvil.rpc_url], work, env)
        local_file = work / "deployments" / "anvil.json"
        assert str(local_file) in deployed.stdout and local_file.is_file()

        # Found in ./deployments from `work` ...
        balance = _run([str(bin_dir / "p2pclient"), "balance", "--dev-account", "3"], work, env)
        assert "pool" in balance.stdout.lower()
        # ... and nowhere from another directory, with a message naming the places looked at.
        lost = subprocess.run([str(bin_dir / "p2pclient"), "balance", "--dev-account", "3"], cwd=other, env=env,
                              capture_output=True, text=True, timeout=120)
        assert lost.returncode == 1 and "deployments/anvil.json" in lost.stderr and "p2pllm-deploy" in lost.stderr

        # A deploy with --user lands in the per-user data directory, found from any directory.
        _run([str(bin_dir / "p2pllm-deploy"), "--network", "anvil", "--rpc-url", anvil.rpc_url, "--user"], other, env)
        user_file = home / ".local" / "share" / "p2pllm" / "deployments" / "anvil.json"
        assert user_file.is_file()
        _run([str(bin_dir / "p2pclient"), "balance", "--dev-account", "3"], other, env)
        site = Path(_run([str(bin_dir / "python"), "-c", "import p2pllm; print(p2pllm.__file__)"], work,
                         env).stdout.strip()).parent
        assert not list(site.rglob("deployments")), "deployment files must never land inside the package"
