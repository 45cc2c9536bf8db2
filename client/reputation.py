"""The client's persistent memory of nodes caught misbehaving: one SQLite file (by default
`<per-user data dir>/reputation.sqlite`, see `p2pllm.deployments.user_data_dir`) of verdicts, each with the
evidence that produced it. Routing excludes every node with a verdict against it. Knows nothing about
networks, tensors or the chain."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pllm.deployments import user_data_dir

VERDICTS = ("wrong_output", "equivocation", "bad_commitment")


@dataclass(frozen=True)
class Verdict:
    node: str
    verdict: str
    reason: str
    evidence: dict[str, Any]
    at: float


def default_path() -> Path:
    return user_data_dir() / "reputation.sqlite"


class ReputationStore:
    """Verdicts by node address (stored lower-case). Thread-safe; each write is committed at once."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (node TEXT NOT NULL, verdict TEXT NOT NULL, "
                             "reason TEXT NOT NULL, evidence TEXT NOT NULL, at REAL NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS verdicts_node ON verdicts (node)")

    def record(self, node: str, verdict: str, reason: str, evidence: dict[str, Any] | None = None) -> Verdict:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        entry = Verdict(node.lower(), verdict, reason, evidence or {}, time.time())
        with self._lock, self._db:
            self._db.execute("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?)",
                             (entry.node, verdict, reason, json.dumps(entry.evidence, default=str), entry.at))
        return entry

    def verdicts(self, node: str | None = None) -> list[Verdict]:
        query = "SELECT node, verdict, reason, evidence, at FROM verdicts"
        args: tuple[str, ...] = ()
        if node is not None:
            query += " WHERE node = ?"
            args = (node.lower(),)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY at", args).fetchall()
        return [Verdict(n, v, r, json.loads(e), a) for n, v, r, e, a in rows]

    def excluded(self) -> set[str]:
        """Every node (lower-case) with a verdict against it."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT DISTINCT node FROM verdicts")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
