"""The reputation store persists verdicts with their evidence across instances and lists whom to exclude."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.reputation import ReputationStore, default_path

NODE = "0xAbCdEf0000000000000000000000000000000001"


def test_verdicts_persist_and_exclude(tmp_path: Path) -> None:
    path = tmp_path / "rep.sqlite"
    store = ReputationStore(path)
    assert store.excluded() == set() and store.verdicts() == []
    store.record(NODE, "wrong_output", "differs from two others", {"first_bad_position": 3})
    store.close()
    again = ReputationStore(path)
    (verdict,) = again.verdicts(NODE.upper().replace("0X", "0x"))
    assert verdict.node == NODE.lower() and verdict.verdict == "wrong_output"
    assert verdict.evidence == {"first_bad_position": 3}
    assert again.excluded() == {NODE.lower()}
    with pytest.raises(ValueError, match="verdict must be"):
        again.record(NODE, "rude", "")


def test_default_path_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("P2PLLM_HOME", str(tmp_path))
    assert default_path() == tmp_path / "reputation.sqlite"
