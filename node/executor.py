"""The node's shard executor: sessions, their KV caches, a token budget and idle eviction.

A session is opened with a maximum length; that many tokens (times the batch size) are reserved from the
shard's cache budget until it closes or idles out. `forward(session_id, hidden, positions)` runs a prefill of
many tokens or a decode of one through the shard, appending to the session's cache; positions must continue
exactly where the cache ends. `forward_batch` runs decode steps of many sessions as one batched forward per
layer span (`p2pllm.batch`), refusing each bad step alone. Every failure is a typed error carrying its data;
`node.api` maps them to stable codes (e.g. `CacheBudgetExceeded` -> `cache_full` with a retry delay).

Thread-safe: a lock guards the session table and budget, and a per-session lock serializes each session's
forwards (a batch takes its sessions' locks in one global order).

Boundary: knows shards, tensors and time; knows nothing about HTTP, the wire format, receipts or payment.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from p2pllm.batch import decode_batch, prefill_batch
from p2pllm.shard import Shard

# ------------------------------------------------------------------------------------------------- errors


class ExecutorError(Exception):
    """Base of every error the executor raises on purpose."""


class UnknownSession(ExecutorError):
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"unknown session {session_id!r}")


class SessionExists(ExecutorError):
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id!r} already exists")


class LengthExceeded(ExecutorError):
    def __init__(self, session_id: str, max_length: int, requested: int) -> None:
        self.session_id = session_id
        self.max_length = max_length
        self.requested = requested
        super().__init__(f"session {session_id!r}: {requested} tokens exceed max_length {max_length}")


class ShapeMismatch(ExecutorError):
    """`expected` uses None for a free dimension (the token count)."""

    def __init__(self, expected: tuple[int | None, ...], got: tuple[int, ...]) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"shape {got} does not match {expected}")


class DtypeMismatch(ExecutorError):
    def __init__(self, expected: str, got: str) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"dtype {got} does not match {expected}")


class PositionMismatch(ExecutorError):
    """Positions must be ``cached_length, cached_length + 1, ...``."""

    def __init__(self, session_id: str, expected_start: int, got: tuple[int, ...]) -> None:
        self.session_id = session_id
        self.expected_start = expected_start
        self.got = got
        shown = got if len(got) <= 4 else (*got[:2], "...", got[-1])
        super().__init__(f"session {session_id!r}: positions {shown} must be contiguous from {expected_start}")


class CacheBudgetExceeded(ExecutorError):
    def __init__(self, budget_tokens: int, in_use: int, requested: int) -> None:
        self.budget_tokens = budget_tokens
        self.in_use = in_use
        self.requested = requested
        super().__init__(f"cache budget {budget_tokens} tokens: {in_use} in use, {requested} requested")


# -------------------------------------------------------------------------------------------------- types


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one session."""

    session_id: str
    max_length: int
    batch_size: int
    length: int
    reserved_tokens: int
    opened_at: float
    last_used_at: float


@dataclass
class _Session:
    session_id: str
    max_length: int
    batch_size: int
    cache: DynamicCache
    opened_at: float
    last_used_at: float
    span: tuple[int, int] | None = None
    length: int = 0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def reserved_tokens(self) -> int:
        return self.max_length * self.batch_size

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.session_id,
            self.max_length,
            self.batch_size,
            self.length,
            self.reserved_tokens,
            self.opened_at,
            self.last_used_at,
        )


# -------------------------------------------------------------------------------------------------- class


class ShardExecutor:
    """Runs one shard for many sessions within a KV-cache budget counted in tokens."""

    def __init__(
        self,
        shard: Shard,
        *,
        budget_tokens: int,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget_tokens <= 0:
            raise ValueError(f"budget_tokens must be positive, got {budget_tokens}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.shard = shard
        self.budget_tokens = budget_tokens
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._in_use = 0

    # ------------------------------------------------------------------------------------------ external

    def open_session(
        self,
        max_length: int,
        *,
        batch_size: int = 1,
        session_id: str | None = None,
        span: tuple[int, int] | None = None,
    ) -> SessionInfo:
        """Reserve ``max_length * batch_size`` cache tokens for a new session (evicting idle ones first).
        `span` (absolute layers inside the shard) makes the session run only that part of the shard."""
        if max_length <= 0 or batch_size <= 0:
            raise ValueError(f"max_length and batch_size must be positive, got {max_length}, {batch_size}")
        self.shard.local_span(span)  # raises ShardRangeError for a span outside the shard
        self.evict_idle()
        sid = session_id if session_id is not None else secrets.token_hex(16)
        requested = max_length * batch_size
        now = self._clock()
        with self._lock:
            if sid in self._sessions:
                raise SessionExists(sid)
            if self._in_use + requested > self.budget_tokens:
                raise CacheBudgetExceeded(self.budget_tokens, self._in_use, requested)
            session = _Session(sid, max_length, batch_size, self.shard.new_cache(), now, now, span=span)
            self._sessions[sid] = session
            self._in_use += requested
            return session.info()

    def forward(self, session_id: str, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hidden ``(batch, tokens, hidden)`` at `positions` ``(tokens,)`` through the shard and cache."""
        session = self._get(session_id)
        with session.lock:
            if session.closed:
                raise UnknownSession(session_id)
            self._validate(session, hidden, positions)
            try:
                with torch.inference_mode():
                    out = self.shard(
                        hidden.to(self.shard.device), positions.to(self.shard.device), session.cache, session.span
                    )
            except BaseException:
                # A half-updated cache is useless: drop the session so its budget comes back.
                self._drop(session)
                raise
            session.length += int(positions.shape[0])
            session.last_used_at = self._clock()
            return out

    def forward_batch(self, steps: Sequence[tuple[str, torch.Tensor, int]]) -> list[torch.Tensor | ExecutorError]:
        """Decode steps ``(session_id, hidden (1, 1, hidden), position)`` of distinct sessions, run as one batched
        forward per layer span; each step's output ``(1, 1, hidden)``, or the typed error that refused it alone
        (unknown or closed session, wrong position, shape or dtype, too long). A failure inside a batched forward
        leaves every cache of that batch half-updated: those sessions are dropped, and the error re-raised."""
        return self._batched(steps, prompts=False)

    def prefill_batch(self, steps: Sequence[tuple[str, torch.Tensor, int]]) -> list[torch.Tensor | ExecutorError]:
        """Prompts ``(session_id, hidden (1, n, hidden), 0)`` of distinct sessions that have computed nothing yet,
        run as one batched forward per layer span (right-padded, `p2pllm.batch.prefill_batch`); each prompt's
        output ``(1, n, hidden)``, or the typed error that refused it alone, as `forward_batch`."""
        return self._batched(steps, prompts=True)

    def _batched(self, steps: Sequence[tuple[str, torch.Tensor, int]],
                 prompts: bool) -> list[torch.Tensor | ExecutorError]:
        results: list[torch.Tensor | ExecutorError | None] = [None] * len(steps)
        found: list[tuple[int, _Session]] = []
        seen: set[str] = set()
        for index, (session_id, _, _) in enumerate(steps):
            if session_id in seen:
                raise ValueError(f"session {session_id!r} appears twice in one batch")
            seen.add(session_id)
            try:
                found.append((index, self._get(session_id)))
            except ExecutorError as exc:
                results[index] = exc
        found.sort(key=lambda item: item[1].session_id)  # one lock order for every caller: no deadlock
        locked: list[_Session] = []
        try:
            groups: dict[tuple[int, int] | None, list[tuple[int, _Session]]] = {}
            for index, session in found:
                session.lock.acquire()
                locked.append(session)
                _, hidden, position = steps[index]
                tokens = int(hidden.shape[1]) if hidden.dim() == 3 else 0
                try:
                    if session.closed:
                        raise UnknownSession(session.session_id)
                    self._validate(session, hidden, torch.arange(position, position + max(tokens, 1)))
                    if prompts and position != 0:
                        raise PositionMismatch(session.session_id, 0, (position,))
                    if not prompts and tokens != 1:
                        raise ShapeMismatch((session.batch_size, 1, self.shard.hidden_size), tuple(hidden.shape))
                except ExecutorError as exc:
                    results[index] = exc
                    continue
                groups.setdefault(session.span, []).append((index, session))
            for span, group in groups.items():
                try:
                    with torch.inference_mode():
                        if prompts:
                            outs = prefill_batch(self.shard,
                                                 [steps[index][1].to(self.shard.device) for index, _ in group],
                                                 [session.cache for _, session in group], span)
                        else:
                            out = decode_batch(self.shard,
                                               torch.cat([steps[index][1] for index, _ in group]).to(self.shard.device),
                                               [steps[index][2] for index, _ in group],
                                               [session.cache for _, session in group], span)
                            outs = [out[row:row + 1] for row in range(len(group))]
                except BaseException:
                    for _, session in group:
                        self._drop(session)
                    raise
                now = self._clock()
                for (index, session), output in zip(group, outs, strict=True):
                    session.length += int(output.shape[1])
                    session.last_used_at = now
                    results[index] = output
        finally:
            for session in locked:
                session.lock.release()
        return [r if r is not None else UnknownSession(steps[i][0]) for i, r in enumerate(results)]

    def close_session(self, session_id: str) -> None:
        """Free a session's cache and budget; waits for a forward in flight on it."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        with session.lock:
            if session.closed:
                raise UnknownSession(session_id)
            self._drop(session)

    def evict_idle(self) -> list[str]:
        """Close sessions idle for longer than the TTL (skipping any mid-forward); their ids."""
        now = self._clock()
        with self._lock:
            stale = [s for s in self._sessions.values() if now - s.last_used_at > self.ttl_s]
        evicted: list[str] = []
        for session in stale:
            if not session.lock.acquire(blocking=False):
                continue
            try:
                if not session.closed and now - session.last_used_at > self.ttl_s:
                    self._drop(session)
                    evicted.append(session.session_id)
            finally:
                session.lock.release()
        return evicted

    # --------------------------------------------------------------------------------------------- views

    def session(self, session_id: str) -> SessionInfo:
        return self._get(session_id).info()

    def sessions(self) -> list[SessionInfo]:
        with self._lock:
            return [s.info() for s in self._sessions.values()]

    def open_ids(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._sessions)

    @property
    def in_use_tokens(self) -> int:
        with self._lock:
            return self._in_use

    @property
    def free_tokens(self) -> int:
        with self._lock:
            return self.budget_tokens - self._in_use

    # ------------------------------------------------------------------------------------------ internal

    def _get(self, session_id: str) -> _Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return session

    def _drop(self, session: _Session) -> None:
        """Remove a session whose lock the caller holds."""
        session.closed = True
        with self._lock:
            if self._sessions.get(session.session_id) is session:
                del self._sessions[session.session_id]
                self._in_use -= session.reserved_tokens
        session.cache = self.shard.new_cache()

    def _validate(self, session: _Session, hidden: torch.Tensor, positions: torch.Tensor) -> None:
        expected_shape = (session.batch_size, None, self.shard.hidden_size)
        shape = tuple(hidden.shape)
        if len(shape) != 3 or shape[0] != session.batch_size or shape[2] != self.shard.hidden_size or shape[1] < 1:
            raise ShapeMismatch(expected_shape, shape)
        if hidden.dtype != self.shard.dtype:
            raise DtypeMismatch(str(self.shard.dtype).removeprefix("torch."), str(hidden.dtype).removeprefix("torch."))
        if tuple(positions.shape) != (shape[1],):
            raise ShapeMismatch((shape[1],), tuple(positions.shape))
        if positions.dtype not in (torch.int64, torch.int32):
            raise DtypeMismatch("int64", str(positions.dtype).removeprefix("torch."))
        got = tuple(int(p) for p in positions.tolist())
        if got != tuple(range(session.length, session.length + len(got))):
            raise PositionMismatch(session.session_id, session.length, got)
        if session.length + len(got) > session.max_length:
            raise LengthExceeded(session.session_id, session.max_length, session.length + len(got))
