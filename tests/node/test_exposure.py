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
