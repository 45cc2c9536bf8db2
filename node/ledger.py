"""The node's durable receipt ledger (SQLite): the newest receipt per (client, session) and what the
escrow has paid for it. A receipt is committed before the node returns the output it pays for, so a
crash loses no earnings. Knows nothing about HTTP, models or web3."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from p2pllm.receipts import Receipt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    client      TEXT    NOT NULL,
    session_id  BLOB    NOT NULL,
    node        TEXT    NOT NULL,
    tokens      INTEGER NOT NULL,
    amount_wei  TEXT    NOT NULL,
    deadline    INTEGER NOT NULL,
    signature   BLOB    NOT NULL,
    received_at REAL    NOT NULL,
    paid_wei    TEXT    NOT NULL DEFAULT '0',
    PRIMARY KEY (client, session_id)
);
"""


@dataclass(frozen=True)
class HeldReceipt:
    receipt: Receipt
    signature: bytes
    received_at: float
    paid_wei: int

    @property
    def unclaimed_wei(self) -> int:
        return max(self.receipt.amount_wei - self.paid_wei, 0)


class Ledger:
    """Thread-safe; every write is committed before the call returns. `sync="normal"` (WAL, the default)
    survives a crash of the process (kill -9, OOM) at ~0.1 ms a write; `sync="full"` also survives an OS crash
    or power loss, at the cost of an fsync per write (3–8 ms on a typical VM disk)."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        if sync not in ("normal", "full"):
            raise ValueError(f"ledger sync must be 'normal' or 'full', got {sync!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def latest(self, client: str, session_id: bytes) -> HeldReceipt | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM receipts WHERE client = ? AND session_id = ?", (client.lower(), session_id)
            ).fetchone()
        return _held(row) if row else None

    def held_by(self, client: str) -> list[HeldReceipt]:
        """Every receipt held from `client`, one per session."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM receipts WHERE client = ?", (client.lower(),)).fetchall()
        return [_held(r) for r in rows]

    def record(self, receipt: Receipt, signature: bytes) -> bool:
        """Store `receipt` as the newest for its (client, session), committed before returning.
        Returns False (and keeps the stored one) if a receipt with a larger amount is already held."""
        # One statement: amounts are decimal text (uint256 does not fit SQLite's INTEGER), so "not smaller"
        # is "longer, or as long and not lexically smaller".
        with self._lock:
            cursor = self._db.execute(
                """INSERT INTO receipts (client, session_id, node, tokens, amount_wei, deadline, signature, received_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (client, session_id) DO UPDATE SET
                       tokens = excluded.tokens, amount_wei = excluded.amount_wei, deadline = excluded.deadline,
                       signature = excluded.signature, received_at = excluded.received_at
                   WHERE length(excluded.amount_wei) > length(receipts.amount_wei)
                      OR (length(excluded.amount_wei) = length(receipts.amount_wei)
                          AND excluded.amount_wei >= receipts.amount_wei)""",
                (receipt.client.lower(), receipt.session_id, receipt.node, receipt.tokens, str(receipt.amount_wei),
                 receipt.deadline, signature, time.time()),
            )
            return cursor.rowcount == 1

    def mark_paid(self, client: str, session_id: bytes, paid_total_wei: int) -> None:
        """Record the escrow's cumulative payment for a session (read back from chain after a claim)."""
        with self._lock:
            self._db.execute(
                "UPDATE receipts SET paid_wei = ? WHERE client = ? AND session_id = ?",
                (str(paid_total_wei), client.lower(), session_id),
            )

    def unclaimed(self) -> list[HeldReceipt]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM receipts").fetchall()
        return [h for h in map(_held, rows) if h.unclaimed_wei > 0]

    def all(self) -> list[HeldReceipt]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM receipts ORDER BY received_at").fetchall()
        return [_held(r) for r in rows]


def _held(row: tuple) -> HeldReceipt:
    client, session_id, node, tokens, amount, deadline, signature, received_at, paid = row
    receipt = Receipt(client, node, bytes(session_id), int(tokens), int(amount), int(deadline))
    return HeldReceipt(receipt, bytes(signature), float(received_at), int(paid))
