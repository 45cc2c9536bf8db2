"""The receipt ledger: newest receipt per (client, session), never replaced by a smaller amount (uint256
amounts compared as numbers, though SQLite stores them as text), durable across reopening."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.ledger import Ledger
from p2pllm.receipts import Receipt

CLIENT = "0x" + "Ab" * 20
NODE = "0x" + "cd" * 20
SESSION = b"\x01" * 32


def receipt(amount: int, tokens: int = 1, session: bytes = SESSION) -> Receipt:
    return Receipt(CLIENT, NODE, session, tokens, amount, 2_000_000_000)


def test_roundtrip_and_durable_across_reopen(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    assert ledger.latest(CLIENT, SESSION) is None
    assert ledger.record(receipt(5), b"\x11" * 65)
    ledger.close()
    again = Ledger(tmp_path / "l.sqlite", sync="full")
    held = again.latest(CLIENT.lower(), SESSION)
    assert held is not None and held.receipt == Receipt(CLIENT.lower(), NODE, SESSION, 1, 5, 2_000_000_000)
    assert held.signature == b"\x11" * 65 and held.paid_wei == 0 and held.unclaimed_wei == 5
    again.mark_paid(CLIENT, SESSION, 5)
    assert again.unclaimed() == [] and again.latest(CLIENT, SESSION).paid_wei == 5  # type: ignore[union-attr]
    again.close()


@pytest.mark.parametrize(("stored", "offered", "replaced"), [
    (999, 1000, True), (1000, 999, False), (10**30, 10**30, True), (10**30, 10**29 * 9, False),
    (0, 1, True), (2**256 - 2, 2**256 - 1, True), (2**256 - 1, 9, False),
])
def test_never_replaced_by_a_smaller_amount(tmp_path: Path, stored: int, offered: int, replaced: bool) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    assert ledger.record(receipt(stored), b"a" * 65)
    assert ledger.record(receipt(offered, tokens=2), b"b" * 65) is replaced
    held = ledger.latest(CLIENT, SESSION)
    assert held is not None and held.receipt.amount_wei == (offered if replaced else stored)
    assert held.signature == (b"b" if replaced else b"a") * 65


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**256 - 1), min_size=1, max_size=12))
def test_keeps_the_running_maximum(tmp_path_factory: pytest.TempPathFactory, amounts: list[int]) -> None:
    ledger = Ledger(tmp_path_factory.mktemp("ledger") / "l.sqlite")
    best = -1
    for amount in amounts:
        assert ledger.record(receipt(amount), b"s" * 65) is (amount >= best)
        best = max(best, amount)
    held = ledger.latest(CLIENT, SESSION)
    assert held is not None and held.receipt.amount_wei == best
    ledger.close()


def test_sessions_are_separate_and_sync_is_validated(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.record(receipt(7), b"s" * 65)
    ledger.record(receipt(3, session=b"\x02" * 32), b"s" * 65)
    assert sorted(h.receipt.amount_wei for h in ledger.all()) == [3, 7]
    with pytest.raises(ValueError, match="sync"):
        Ledger(tmp_path / "other.sqlite", sync="off")
