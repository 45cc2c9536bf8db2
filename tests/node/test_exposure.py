"""`Exposure`: what each client owes the node unpaid, over all its sessions, kept in step with a real SQLite
ledger: loaded on a client's first sight (receipts from an earlier run count), updated by accepted receipts and
by payments, a settled session read back from the ledger when it continues."""

from __future__ import annotations

import os
import threading

from node.exposure import Exposure
from node.ledger import Ledger
from p2pllm.receipts import Receipt

CLIENT = "0x" + "Ab" * 20
NODE = "0x" + "Cd" * 20


def _held(ledger: Ledger, session: bytes, amount: int, deadline: int = 2_000_000_000) -> None:
    ledger.record(Receipt(CLIENT, NODE, session, 1, amount, deadline), b"\x00" * 65)


def test_a_clients_sessions_from_an_earlier_run_count(tmp_path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    a, b, c = os.urandom(32), os.urandom(32), os.urandom(32)
    _held(ledger, a, 50, deadline=100)
    _held(ledger, b, 30, deadline=300)
    _held(ledger, c, 20)
    ledger.mark_paid(CLIENT, c, 20)  # settled
    exposure = Exposure(ledger)
    assert exposure.unpaid_wei(CLIENT.lower()) == 80
    standing = exposure.standing(CLIENT, a)
    assert (standing.amount_wei, standing.paid_wei, standing.other_unpaid_wei, standing.other_deadline) == \
        (50, 0, 30, 300)
    assert exposure.standing(CLIENT, c).amount_wei == 20  # a settled session is read back from the ledger
    assert exposure.unpaid_wei("0x" + "11" * 20) == 0


def test_accept_and_paid_move_the_total(tmp_path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    exposure = Exposure(ledger)
    a, b = os.urandom(32), os.urandom(32)
    exposure.accept(CLIENT, a, 40, 0, 100)
    exposure.accept(CLIENT, b, 25, 0, 200)
    assert exposure.unpaid_wei(CLIENT) == 65
    exposure.paid(CLIENT, a, 30)
    assert exposure.unpaid_wei(CLIENT) == 35
    exposure.paid(CLIENT, a, 10)  # an older total never lowers what was paid
    assert exposure.standing(CLIENT, b).other_unpaid_wei == 10
    exposure.paid(CLIENT, a, 40)  # settled: dropped from memory
    assert exposure.standing(CLIENT, b).other_unpaid_wei == 0
    _held(ledger, a, 40)
    ledger.mark_paid(CLIENT, a, 40)
    again = exposure.standing(CLIENT, a)  # the session continues: its paid amount comes from the ledger
    assert (again.amount_wei, again.paid_wei) == (40, 40)


def test_hold_serializes_one_client(tmp_path) -> None:
    exposure = Exposure(Ledger(tmp_path / "l.sqlite"))
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with exposure.hold(CLIENT):
            inside.set()
            release.wait(5)
            order.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(5)
    with exposure.hold("0x" + "11" * 20):  # another client is not held up
        order.append("other")
    release.set()
    with exposure.hold(CLIENT.lower()):
        order.append("second")
    thread.join()
    assert order == ["other", "first", "second"]


def test_claim_marks_tell_whether_a_claim_overlapped(tmp_path) -> None:
    exposure = Exposure(Ledger(tmp_path / "l.sqlite"))
    other = "0x" + "11" * 20
    before = exposure.claim_mark(CLIENT)
    assert before == (0, 0) and exposure.wait_claims(CLIENT, 0)
    with exposure.claiming([CLIENT.lower(), CLIENT]):  # one claim, however the address is spelled
        assert exposure.claim_mark(CLIENT) == (0, 1)
        assert not exposure.wait_claims(CLIENT, 0.01)
        assert exposure.wait_claims(other, 0) and exposure.claim_mark(other) == (0, 0)
    assert exposure.claim_mark(CLIENT) == (1, 0) != before  # a claim that began and ended in between shows


def test_wait_claims_returns_when_the_claim_ends(tmp_path) -> None:
    exposure = Exposure(Ledger(tmp_path / "l.sqlite"))
    started, done = threading.Event(), threading.Event()

    def claim() -> None:
        with exposure.claiming([CLIENT]):
            started.set()
            done.wait(10)

    worker = threading.Thread(target=claim)
    worker.start()
    started.wait(10)
    waited = []
    waiter = threading.Thread(target=lambda: waited.append(exposure.wait_claims(CLIENT, 30)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # still waiting while the claim runs
    done.set()
    waiter.join(10)
    worker.join(10)
    assert waited == [True]
