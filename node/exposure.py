"""What each client owes this node and has not been paid yet: per (client, session) the amount of the newest
accepted receipt, what the escrow has paid for it, and its deadline. The escrow pays a node only from the
allocation its client reserved for it, shared by all of that client's sessions, so the payment policy weighs
a new receipt against the client's other unpaid sessions too.

A write-through cache over the ledger: a client's unpaid sessions are read from the ledger when the client is
first seen, after that the node reports each accepted receipt and each payment; a session with nothing left
unpaid is dropped from memory and read back from the ledger if it continues. `hold` serializes a client's
check-and-accept, so two concurrent requests cannot both spend the same reserve. Knows nothing about HTTP,
tensors or the chain."""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
