"""What each client owes this node and has not been paid yet: per (client, session) the amount of the newest
accepted receipt, what the escrow has paid for it, and its deadline. The escrow pays a node only from the
allocation its client reserved for it, shared by all of that client's sessions, so the payment policy weighs
a new receipt against the client's other unpaid sessions too.

A write-through cache over the ledger: a client's unpaid sessions are read from the ledger when the client is
first seen, after that the node reports each accepted receipt and each payment; a session with nothing left
unpaid is dropped from memory and read back from the ledger if it continues. `hold` serializes a client's
check-and-accept, so two concurrent requests cannot both spend the same reserve.

A claim makes the chain and this table disagree for a moment: once its transaction is mined the allocation has
shrunk by what it paid, while the table still counts that amount unpaid until the claimer reports it. The claimer
declares the window (`claiming`), and a refusal for lack of cover that overlapped one (`claim_mark` before the
check differs from after, or a claim is still running) waits for it to end (`wait_claims`) and is checked again,
so a client is never refused for what it has just paid. Knows nothing about HTTP, tensors or the chain."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from node.ledger import Ledger


@dataclass(frozen=True)
class Standing:
    """A session's place in its client's debt: its own receipt amount and payment, and the other sessions'
    unpaid total and latest receipt deadline."""

    amount_wei: int
    paid_wei: int
    other_unpaid_wei: int
    other_deadline: int


@dataclass
class _Session:
    amount_wei: int
    paid_wei: int
    deadline: int

    @property
    def unpaid_wei(self) -> int:
        return max(self.amount_wei - self.paid_wei, 0)


class Exposure:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._clients: dict[str, dict[bytes, _Session]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._claims = threading.Condition()
        self._claiming: dict[str, int] = {}  # client -> claims under way
        self._claimed: dict[str, int] = {}  # client -> claims ended

    @contextmanager
    def claiming(self, clients: Iterable[str]) -> Iterator[None]:
        """A claim of `clients`' receipts is under way, from before its transaction is sent until its payments
        are counted (`paid`)."""
        keys = {client.lower() for client in clients}
        with self._claims:
            for key in keys:
                self._claiming[key] = self._claiming.get(key, 0) + 1
        try:
            yield
        finally:
            with self._claims:
                for key in keys:
                    left = self._claiming[key] - 1
                    if left:
                        self._claiming[key] = left
                    else:
                        del self._claiming[key]
                    self._claimed[key] = self._claimed.get(key, 0) + 1
                self._claims.notify_all()

    def claim_mark(self, client: str) -> tuple[int, int]:
        """(claims ended, claims under way) for `client`: two equal marks with nothing under way bracket a
        stretch of time no claim overlapped."""
        key = client.lower()
        with self._claims:
            return self._claimed.get(key, 0), self._claiming.get(key, 0)

    def claim_overlapped(self, client: str, mark: tuple[int, int]) -> bool:
        """Whether a claim of `client`'s receipts ran at some time since `claim_mark` gave `mark`."""
        return bool(mark[1]) or self.claim_mark(client) != mark

    def wait_claims(self, client: str, timeout_s: float) -> bool:
        """Wait until no claim of `client`'s receipts is under way; False if one still is after `timeout_s`."""
        key = client.lower()
        with self._claims:
            return self._claims.wait_for(lambda: key not in self._claiming, timeout_s)

    @contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """Exclusive use of `client`'s standing while a receipt is checked and accepted."""
        key = client.lower()
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def standing(self, client: str, session_id: bytes) -> Standing:
        sessions = self._sessions(client)
        with self._lock:
            own = sessions.get(session_id)
        if own is None:
            held = self._ledger.latest(client, session_id)
            own = _Session(held.receipt.amount_wei, held.paid_wei, held.receipt.deadline) if held else _Session(0, 0, 0)
        with self._lock:
            others = [s for sid, s in sessions.items() if sid != session_id and s.unpaid_wei]
        return Standing(own.amount_wei, own.paid_wei, sum(s.unpaid_wei for s in others),
                        max((s.deadline for s in others), default=0))

    def accept(self, client: str, session_id: bytes, amount_wei: int, paid_wei: int, deadline: int) -> None:
        """The session's newest receipt is now for `amount_wei` (of which `paid_wei` is paid)."""
        sessions = self._sessions(client)
        with self._lock:
            sessions[session_id] = _Session(amount_wei, paid_wei, deadline)
            if not sessions[session_id].unpaid_wei:
                del sessions[session_id]

    def paid(self, client: str, session_id: bytes, paid_wei: int) -> None:
        """The escrow has now paid `paid_wei` in total for the session."""
        with self._lock:
            sessions = self._clients.get(client.lower())
            session = sessions.get(session_id) if sessions is not None else None
            if session is None:
                return
            session.paid_wei = max(session.paid_wei, paid_wei)
            if not session.unpaid_wei:
                del sessions[session_id]

    def unpaid_wei(self, client: str) -> int:
        sessions = self._sessions(client)
        with self._lock:
            return sum(s.unpaid_wei for s in sessions.values())

    def _sessions(self, client: str) -> dict[bytes, _Session]:
        key = client.lower()
        with self._lock:
            sessions = self._clients.get(key)
        if sessions is not None:
            return sessions
        loaded = {h.receipt.session_id: _Session(h.receipt.amount_wei, h.paid_wei, h.receipt.deadline)
                  for h in self._ledger.held_by(key) if h.unclaimed_wei}
        with self._lock:
            return self._clients.setdefault(key, loaded)
