"""Deployment file lookup: explicit file, then ./deployments/, then the per-user data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pllm.deployments import DeploymentNotFound, candidate_paths, find_deployment, user_data_dir


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("P2PLLM_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_user_dir_follows_p2pllm_home_then_xdg(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert user_data_dir() == home / "xdg" / "p2pllm"
    monkeypatch.setenv("P2PLLM_HOME", str(home / "mine"))
    assert user_data_dir() == home / "mine"


def test_lookup_order(home: Path) -> None:
    cwd = home / "work"
    local = cwd / "deployments" / "anvil.json"
    user = home / "xdg" / "p2pllm" / "deployments" / "anvil.json"
    assert candidate_paths("anvil", cwd) == [local, user]
    with pytest.raises(DeploymentNotFound) as caught:
        find_deployment("anvil", cwd=cwd)
    assert str(local) in str(caught.value) and str(user) in str(caught.value)
    user.parent.mkdir(parents=True)
    user.write_text("{}")
    assert find_deployment("anvil", cwd=cwd) == user
    local.parent.mkdir(parents=True)
    local.write_text("{}")
    assert find_deployment("anvil", cwd=cwd) == local
    explicit = home / "elsewhere.json"
    assert find_deployment("anvil", explicit, cwd=cwd) == explicit


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_network_names_are_plain(name: str) -> None:
    with pytest.raises(ValueError):
        candidate_paths(name)
