"""The node's payment policy. `check_receipt` table-driven: what the client owes this node unpaid, over all its
sessions, must fit in what it reserved for this node through the latest receipt deadline (a thawing part that
may leave before then does not count). `CachedEscrowView`: the allocation a node checks receipts against,
fresh for a TTL, then served stale while one background read replaces it (never blocking a request on the
chain), read inline when unknown, too old or asked for fresh, and `EscrowUnavailable` when the chain cannot be
read. The chain is an in-memory reader here; the view over a real anvil escrow is exercised by the app and
end-to-end tests."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import pytest
from eth_account import Account

from node.payment import CachedEscrowView, EscrowUnavailable, PaymentError, Terms, check_receipt
from p2pllm.chain import Allocation
from p2pllm.receipts import EscrowDomain, Receipt, sign_receipt

CLIENT = "0x" + "Ab" * 20
NODE = "0x" + "Cd" * 20
NOW = 1_700_000_000
PRICE = 10**12


@dataclass
class Reader:
    allocation: Allocation = field(default_factory=lambda: Allocation(100))
    reads: int = 0
    gate: threading.Event | None = None
    fail: bool = False
    asked: list[tuple[str, str]] = field(default_factory=list)

    def allocation_of(self, client: str, node: str) -> Allocation:
        self.reads += 1
        self.asked.append((client, node))
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise OSError("connection refused")
        return self.allocation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# ------------------------------------------------------------------------------------- check_receipt

CLIENT_KEY = Account.create()
DOMAIN = EscrowDomain(31337, "0x" + "E5" * 20)
TERMS = Terms(node=NODE, domain=DOMAIN, price_wei_per_token=PRICE, credit_wei=0, max_receipt_validity_s=86400)
SESSION = os.urandom(32)


class FixedEscrow:
    """Reserved for the node: `amount`, of which `thawing` leaves at `ready_at`."""

    def __init__(self, amount: int, thawing: int = 0, ready_at: int = 0) -> None:
        self.allocation = Allocation(amount, thawing, ready_at)
        self.until: list[int] = []

    def reserved_wei(self, client: str, until: int, fresh: bool = False) -> int:
        self.until.append(until)
        return self.allocation.reserved_until(until)

    def answers_now(self, client: str) -> bool:
        return True


def _check(escrow: FixedEscrow, amount: int, *, paid: int = 0, other: int = 0, other_deadline: int = 0,
           deadline: int = NOW + 3600, tokens: int | None = None) -> Receipt:
    tokens = amount // PRICE if tokens is None else tokens
    receipt = Receipt(CLIENT_KEY.address, NODE, SESSION, tokens, amount, deadline)
    return check_receipt(TERMS, escrow, client=CLIENT_KEY.address, session_id=SESSION, tokens_after=tokens,
                         owed_wei=tokens * PRICE, previous=None, paid_wei=paid, other_unpaid_wei=other,
                         other_deadline=other_deadline, tokens=tokens, amount_wei=amount, deadline=deadline,
                         signature=sign_receipt(receipt, DOMAIN, CLIENT_KEY.key), now=NOW)


@pytest.mark.parametrize(("case", "escrow", "amount", "kwargs", "ok"), [
    ("covered", FixedEscrow(10 * PRICE), 10 * PRICE, {}, True),
    ("one wei short", FixedEscrow(10 * PRICE - 1), 10 * PRICE, {}, False),
    ("paid part needs no cover", FixedEscrow(4 * PRICE), 10 * PRICE, {"paid": 6 * PRICE}, True),
    ("other sessions share the cover", FixedEscrow(10 * PRICE), 6 * PRICE, {"other": 5 * PRICE}, False),
    ("other sessions within the cover", FixedEscrow(10 * PRICE), 6 * PRICE, {"other": 4 * PRICE}, True),
    # A release requested while the node serves: the thawing part leaves at ready_at. Before the receipt's
    # deadline, it does not count; after it, it does (the node claims before its deadline).
    ("thaw ends before the deadline", FixedEscrow(10 * PRICE, 4 * PRICE, NOW + 1800), 7 * PRICE, {}, False),
    ("what stays reserved suffices", FixedEscrow(10 * PRICE, 4 * PRICE, NOW + 1800), 6 * PRICE, {}, True),
    ("thaw ends after the deadline", FixedEscrow(10 * PRICE, 4 * PRICE, NOW + 7200), 10 * PRICE, {}, True),
    ("another session's later deadline decides", FixedEscrow(10 * PRICE, 4 * PRICE, NOW + 5400), 6 * PRICE,
     {"other": PRICE, "other_deadline": NOW + 7200}, False),
    ("a thaw of more than is left takes it all", FixedEscrow(3 * PRICE, 5 * PRICE, NOW + 60), PRICE, {}, False),
])
def test_escrow_cover(case: str, escrow: FixedEscrow, amount: int, kwargs: dict, ok: bool) -> None:
    if ok:
        assert _check(escrow, amount, **kwargs).amount_wei == amount
        return
    with pytest.raises(PaymentError) as refused:
        _check(escrow, amount, **kwargs)
    assert refused.value.code == "insufficient_escrow"
    assert int(refused.value.detail["needed_wei"]) == amount - kwargs.get("paid", 0) + kwargs.get("other", 0)


def test_the_horizon_is_the_latest_deadline() -> None:
    escrow = FixedEscrow(10 * PRICE)
    _check(escrow, PRICE, deadline=NOW + 600, other=PRICE, other_deadline=NOW + 900)
    _check(escrow, PRICE, deadline=NOW + 600, other=PRICE, other_deadline=NOW + 300)
    assert escrow.until == [NOW + 900, NOW + 600]


# ------------------------------------------------------------------------------------- CachedEscrowView


def test_fresh_answers_are_cached_and_a_thaw_counts_before_the_deadline() -> None:
    reader, clock = Reader(Allocation(100, 30, 5000)), Clock()
    view = CachedEscrowView(reader, NODE, ttl_s=2, clock=clock)
    assert view.reserved_wei(CLIENT, until=4000) == 100  # the thaw completes after the receipt's deadline
    assert view.reserved_wei(CLIENT.lower(), until=6000) == 70
    clock.now += 1.9
    assert view.reserved_wei(CLIENT, until=0) == 100 and reader.reads == 1
    assert reader.asked == [(CLIENT, NODE)]  # the allocation for this node, not the client's pool


def test_a_stale_answer_is_served_while_one_background_read_replaces_it() -> None:
    reader, clock = Reader(), Clock()
    view = CachedEscrowView(reader, NODE, ttl_s=2, max_stale_s=15, clock=clock)
    assert view.reserved_wei(CLIENT, 0) == 100
    reader.allocation, reader.gate = Allocation(40), threading.Event()
    clock.now += 3
    started = time.monotonic()
    for _ in range(5):  # the chain read is blocked, yet every call answers at once, from the cache
        assert view.reserved_wei(CLIENT, 0) == 100
    assert time.monotonic() - started < 1
    wait_for(lambda: reader.reads == 2)
    reader.gate.set()
    wait_for(lambda: view.reserved_wei(CLIENT, 0) == 40)
    assert reader.reads == 2  # one refresh in flight per client, however many requests came meanwhile


def test_a_fresh_request_reads_the_chain() -> None:
    reader, clock = Reader(), Clock()
    view = CachedEscrowView(reader, NODE, ttl_s=2, clock=clock)
    assert view.reserved_wei(CLIENT, 0) == 100
    reader.allocation = Allocation(150)  # the client reserved more just now
    assert view.reserved_wei(CLIENT, 0) == 100 and reader.reads == 1
    assert view.reserved_wei(CLIENT, 0, fresh=True) == 150 and reader.reads == 2
    assert view.reserved_wei(CLIENT, 0) == 150 and reader.reads == 2


def test_refresh_replaces_the_answer_and_a_failed_one_forgets_it() -> None:
    reader, clock = Reader(), Clock()
    view = CachedEscrowView(reader, NODE, ttl_s=2, clock=clock)
    view.reserved_wei(CLIENT, 0)
    reader.allocation = Allocation(60)  # a claim spent 40
    view.refresh(CLIENT)
    assert view.reserved_wei(CLIENT, 0) == 60 and reader.reads == 2
    reader.fail = True
    view.refresh(CLIENT)
    with pytest.raises(EscrowUnavailable):  # no answer kept that might predate the claim
        view.reserved_wei(CLIENT, 0)


def test_too_old_or_unknown_is_read_inline_and_failure_is_reported() -> None:
    reader, clock = Reader(), Clock()
    view = CachedEscrowView(reader, NODE, ttl_s=2, max_stale_s=15, clock=clock)
    view.reserved_wei(CLIENT, 0)
    reader.fail = True
    clock.now += 3  # stale: served, and the failing background read keeps the old answer
    assert view.reserved_wei(CLIENT, 0) == 100
    wait_for(lambda: reader.reads == 2)
    clock.now += 20  # too old to serve: read inline, which fails
    with pytest.raises(EscrowUnavailable, match="connection refused"):
        view.reserved_wei(CLIENT, 0)
    with pytest.raises(EscrowUnavailable):
        view.reserved_wei("0x" + "11" * 20, 0)
    reader.fail = False
    assert view.reserved_wei(CLIENT, 0) == 100


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        CachedEscrowView(Reader(), NODE, ttl_s=5, max_stale_s=1)
