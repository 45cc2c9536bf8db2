"""`CachedEscrowView`: the escrow answer a node checks receipts against — fresh for a TTL, then served stale
while one background read replaces it (never blocking a request on the chain), read inline when unknown
or too old, and `EscrowUnavailable` when the chain cannot be read. The chain is an in-memory reader here;
the view over a real anvil escrow is exercised by the app and end-to-end tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from node.payment import CachedEscrowView, EscrowUnavailable
from p2pllm.chain import Thaw

CLIENT = "0x" + "Ab" * 20


@dataclass
class Reader:
    balance: int = 100
    thaw: Thaw = field(default_factory=lambda: Thaw(0, 0))
    reads: int = 0
    gate: threading.Event | None = None
    fail: bool = False

    def escrow_balance(self, client: str) -> int:
        self.reads += 1
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise OSError("connection refused")
        return self.balance

    def thaw_of(self, client: str) -> Thaw:
        return self.thaw


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


def test_fresh_answers_are_cached_and_a_thaw_counts_before_the_deadline() -> None:
    reader, clock = Reader(thaw=Thaw(30, 5000)), Clock()
    view = CachedEscrowView(reader, ttl_s=2, clock=clock)
    assert view.available_wei(CLIENT, until=4000) == 100  # the thaw completes after the receipt's deadline
    assert view.available_wei(CLIENT.lower(), until=6000) == 70
    clock.now += 1.9
    assert view.available_wei(CLIENT, until=0) == 100 and reader.reads == 1


def test_a_stale_answer_is_served_while_one_background_read_replaces_it() -> None:
    reader, clock = Reader(), Clock()
    view = CachedEscrowView(reader, ttl_s=2, max_stale_s=15, clock=clock)
    assert view.available_wei(CLIENT, 0) == 100
    reader.balance, reader.gate = 40, threading.Event()
    clock.now += 3
    started = time.monotonic()
    for _ in range(5):  # the chain read is blocked, yet every call answers at once, from the cache
        assert view.available_wei(CLIENT, 0) == 100
    assert time.monotonic() - started < 1
    wait_for(lambda: reader.reads == 2)
    reader.gate.set()
    wait_for(lambda: view.available_wei(CLIENT, 0) == 40)
    assert reader.reads == 2  # one refresh in flight per client, however many requests came meanwhile


def test_too_old_or_unknown_is_read_inline_and_failure_is_reported() -> None:
    reader, clock = Reader(), Clock()
    view = CachedEscrowView(reader, ttl_s=2, max_stale_s=15, clock=clock)
    view.available_wei(CLIENT, 0)
    reader.fail = True
    clock.now += 3  # stale: served, and the failing background read keeps the old answer
    assert view.available_wei(CLIENT, 0) == 100
    wait_for(lambda: reader.reads == 2)
    clock.now += 20  # too old to serve: read inline, which fails
    with pytest.raises(EscrowUnavailable, match="connection refused"):
        view.available_wei(CLIENT, 0)
    with pytest.raises(EscrowUnavailable):
        view.available_wei("0x" + "11" * 20, 0)
    reader.fail = False
    assert view.available_wei(CLIENT, 0) == 100


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        CachedEscrowView(Reader(), ttl_s=5, max_stale_s=1)
