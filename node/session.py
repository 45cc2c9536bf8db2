"""A session on this node as one object: who opened it (the client and the terms it signed), how it pays
(what is owed, the newest accepted receipt, when the chain was last asked on its behalf), where its results go
(the client's stream), where its outputs are relayed (node-to-node streams), and its lifecycle. Its KV cache
lives in the executor under the same id. `SessionTable` maps ids to sessions; closing a session (its client's
stream ended, it idled out, the node stops) frees the cache, the relay streams and the payment state with it.
Knows nothing about the payment policy, tensors or the chain."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from node.executor import ExecutorError, ShardExecutor
from p2pllm.receipts import Receipt
from p2pllm.wire import ReceiptClaim

SendFrame = Callable[[bytes], Awaitable[None]]


class RelayLinks(Protocol):
    """The session's node-to-node streams (`node.relay.Relay` provides them)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class AcceptedReceipt:
    """The newest receipt a session paid with, as it arrived, once it is stored in the ledger."""

    claim: ReceiptClaim
    receipt: Receipt


@dataclass
class NodeSession:
    session_id: bytes
    client: str
    max_length: int
    span: tuple[int, int]
    send_to_client: SendFrame
    relay: RelayLinks | None = None
    held: Receipt | None = None  # the ledger's newest receipt for this session from an earlier run, read at open
    owed_wei: int = 0
    accepted: AcceptedReceipt | None = None
    fresh_escrow_at: float = -math.inf
    closed: bool = False

    @property
    def key(self) -> str:
        """The id the executor files the session's cache under."""
        return "0x" + self.session_id.hex()


class SessionTable:
    """The node's open sessions by id, each opened in the executor too."""

    def __init__(self, executor: ShardExecutor) -> None:
        self.executor = executor
        self._sessions: dict[bytes, NodeSession] = {}
        self._lock = threading.Lock()

    def open(self, session: NodeSession) -> int:
        """Reserve the session's cache (ExecutorError when it exists or does not fit) and file it; returns the
        free tokens left."""
        self.executor.open_session(session.max_length, session_id=session.key, span=session.span)
        with self._lock:
            self._sessions[session.session_id] = session
        return self.executor.free_tokens

    def get(self, session_id: bytes) -> NodeSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    async def close(self, session: NodeSession) -> None:
        """Free everything the session holds (idempotent)."""
        with self._lock:
            if session.closed:
                return
            session.closed = True
            if self._sessions.get(session.session_id) is session:
                del self._sessions[session.session_id]
        with contextlib.suppress(ExecutorError):
            self.executor.close_session(session.key)
        if session.relay is not None:
            await session.relay.close()

    async def evict_idle(self) -> list[NodeSession]:
        """Close the sessions whose cache the executor evicted as idle."""
        evicted = set(self.executor.evict_idle())
        with self._lock:
            stale = [s for s in self._sessions.values() if s.key in evicted]
        for session in stale:
            await self.close(session)
        return stale

    async def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            await self.close(session)
