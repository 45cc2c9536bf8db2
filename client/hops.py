"""One hop of a route: a session on one node over its own WebSocket stream, opened with the client's signature
and paid with cumulative EIP-712 receipts. `HopSession` sends and receives typed frames (`p2pllm.wire`) and
keeps the hop's payment state; it decides nothing about routes. A failure surfaces as `HopFailed` (unreachable,
closed, timed out, unreadable: the caller may reroute) or `HopRejected` (the node refused for a reason
rerouting will not fix, e.g. the client's funds). Knows nothing about routing or retries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from p2pllm.receipts import EscrowDomain, Receipt, SessionOpenTerms, sign_receipt, sign_session_open
from p2pllm.wire import (
    Message,
    OpenSession,
    Ping,
    Pong,
    ReceiptClaim,
    SessionOpened,
    Step,
    StepError,
    StepResult,
    WireError,
    encode,
    parse,
    stream_url,
)

OPEN_VALIDITY_S = 300  # how long a signed session open stays valid


class HopFailed(Exception):
    """The node is unreachable, its stream closed or timed out, or it answered what rerouting can fix."""

    def __init__(self, node: str, endpoint: str, reason: str) -> None:
        super().__init__(f"hop {node} at {endpoint} failed: {reason}")
        self.node = node
        self.endpoint = endpoint
        self.reason = reason


class HopRejected(Exception):
    """The node refused for a reason that rerouting will not fix (a bug, or the client's payment)."""

    def __init__(self, node: str, error: str, detail: object) -> None:
        super().__init__(f"node {node} refused ({error}): {detail}")
        self.node = node
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class Payer:
    """The client's signing identity for one escrow deployment."""

    address: str
    private_key: bytes
    domain: EscrowDomain
    receipt_validity_s: int = 3600


@dataclass(frozen=True)
class StreamOptions:
    """How the client dials nodes: TLS context for wss (a private CA when given), timeouts, frame size."""

    ssl_context: ssl.SSLContext | None = None
    connect_timeout_s: float = 10.0
    max_frame_bytes: int = 64 * 1024 * 1024
    max_unread_frames: int = 256  # a node that sends more than the client has taken is flooding it


@dataclass
class HopSession:
    """A session on one node serving layers [start, end) of a route."""

    payer: Payer
    node: str
    endpoint: str
    offer_id: int
    start: int
    end: int
    price_wei_per_token: int
    credit_wei: int
    max_length: int
    dtype: torch.dtype
    hidden_size: int
    options: StreamOptions = field(default_factory=StreamOptions)
    session_id: bytes = field(default_factory=lambda: os.urandom(32))
    tokens: int = 0
    signed_wei: int = 0
    signing_s: float = 0.0
    deadline: int = 0
    client_unpaid_wei: int = 0
    last_compute_ms: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _claim: ReceiptClaim | None = None
    _ws: ClientConnection | None = None
    _inbox: deque[Message | HopFailed] = field(default_factory=deque)
    _reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------ stream

    async def connect(self) -> None:
        url = stream_url(self.endpoint)
        try:
            self._ws = await connect(url, ssl=self.options.ssl_context if url.startswith("wss://") else None,
                                     open_timeout=self.options.connect_timeout_s,
                                     max_size=self.options.max_frame_bytes, compression=None, proxy=None)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ssl.SSLError, WireError) as exc:
            raise HopFailed(self.node, self.endpoint, f"cannot connect: {type(exc).__name__}: {exc}") from exc
        self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))

    async def _read(self, ws: ClientConnection) -> None:
        """Parse every frame as it arrives into the inbox and set `arrived` (which the route session may share
        between its hops, to wait on all of them at once); end with the failure that closed the stream."""
        failure: HopFailed
        try:
            async for frame in ws:
                if not isinstance(frame, bytes):
                    failure = HopFailed(self.node, self.endpoint, "sent a text frame")
                    break
                try:
                    message = parse(frame, max_bytes=self.options.max_frame_bytes, dtype=self.dtype,
                                    hidden_size=self.hidden_size)
                except WireError as exc:
                    failure = HopFailed(self.node, self.endpoint, f"unreadable frame: {exc}")
                    break
                if len(self._inbox) >= self.options.max_unread_frames:
                    failure = HopFailed(self.node, self.endpoint, f"sent more than {len(self._inbox)} frames that "
                                        "were not asked for")
                    break
                self._inbox.append(message)
                self.arrived.set()
            else:
                failure = HopFailed(self.node, self.endpoint, "stream closed by the node")
        except (ConnectionClosed, OSError) as exc:
            failure = HopFailed(self.node, self.endpoint, f"stream closed: {exc}")
        else:
            ws.transport.abort()  # a node that broke the protocol gets no more of this client's time
        self._inbox.append(failure)
        self.arrived.set()

    def take(self) -> Message | None:
        """The oldest frame received and not taken yet, or None; raises the failure that closed the stream."""
        if not self._inbox:
            return None
        item = self._inbox.popleft()
        if isinstance(item, HopFailed):
            self._inbox.appendleft(item)  # every later take raises it too
            raise item
        return item

    def put_back(self, message: Message) -> None:
        self._inbox.appendleft(message)

    def take_error(self, code: str, position: int, endpoint: str | None = None) -> StepError | None:
        """Remove and return a received `code` error about the step at `position` (and, when given, naming
        `endpoint` in its detail), if one is waiting."""
        for item in self._inbox:
            if (isinstance(item, StepError) and item.code == code and item.position == position
                    and (endpoint is None or item.detail.get("endpoint") == endpoint)):
                self._inbox.remove(item)
                return item
        return None

    @property
    def has_mail(self) -> bool:
        return bool(self._inbox)

    async def open(self) -> SessionOpened:
        """Connect if needed and open the session with a signed `OpenSession`. A refusal for lack of funds is a
        `HopRejected` with code insufficient_escrow (the caller may reserve and open again)."""
        if self._ws is None:
            await self.connect()
        deadline = int(time.time()) + OPEN_VALIDITY_S
        terms = SessionOpenTerms(self.node, self.session_id, self.max_length, self.start, self.end, deadline)
        signature = sign_session_open(terms, self.payer.domain, self.payer.private_key)
        await self.send(OpenSession(self.session_id, self.payer.address, self.node, self.max_length, self.start,
                                    self.end, deadline, signature))
        answer = await self.recv(self.options.connect_timeout_s)
        if isinstance(answer, SessionOpened) and answer.session_id == self.session_id:
            self.client_unpaid_wei = answer.client_unpaid_wei
            return answer
        if isinstance(answer, StepError):
            if answer.code in ("cache_full", "chain_unavailable", "session_exists"):
                raise HopFailed(self.node, self.endpoint, f"open refused: {answer}")
            raise HopRejected(self.node, answer.code, answer.detail)
        raise HopFailed(self.node, self.endpoint, f"unexpected answer to open: {type(answer).__name__}")

    async def send(self, message: Message) -> None:
        if self._ws is None:
            raise HopFailed(self.node, self.endpoint, "not connected")
        try:
            await self._ws.send(encode(message))
        except (ConnectionClosed, OSError) as exc:
            raise HopFailed(self.node, self.endpoint, f"stream closed: {exc}") from exc

    async def recv(self, timeout_s: float) -> Message:
        """The next frame from the node; HopFailed when the stream closes or sends what cannot be read, HopTimeout
        when it stays silent for `timeout_s`."""
        if self._ws is None and not self._inbox:
            raise HopFailed(self.node, self.endpoint, "not connected")
        deadline = time.monotonic() + timeout_s
        while (message := self.take()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HopTimeout(self.node, self.endpoint, f"no answer within {timeout_s:g} s")
            self.arrived.clear()
            if self._inbox:
                continue
            await wait_set(self.arrived, left)
        return message

    async def ping(self, timeout_s: float) -> int | None:
        """How far the node's session got (its next position), or None if it does not answer in time. Frames
        that arrive meanwhile (late results) are kept for the next `recv`."""
        held: list[Message] = []
        try:
            await self.send(Ping(self.session_id))
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                answer = await self.recv(left)
                if isinstance(answer, Pong):
                    return answer.length
                held.append(answer)
        except HopFailed:
            return None
        finally:
            for message in reversed(held):
                self.put_back(message)
        return None

    async def close(self) -> None:
        """End the stream; the node frees the session with it."""
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
                await asyncio.wait_for(self._ws.close(), 2.0)
            self._ws = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    # ------------------------------------------------------------------------------------------ payment

    @property
    def owed_wei(self) -> int:
        return self.tokens * self.price_wei_per_token

    @property
    def max_cost_wei(self) -> int:
        """The most this session can cost: every token up to its limit, plus the credit the client signs ahead."""
        return self.max_length * self.price_wei_per_token + self.credit_wei

    def claim_for(self, tokens_after: int) -> ReceiptClaim:
        """A cumulative receipt covering the session's first `tokens_after` tokens. With a node credit of c wei
        the client signs up to c ahead (amount = owed + c), so one signature covers several steps and the node
        is never owed more than it holds a receipt for; without credit every step is signed for exactly what it
        owes."""
        owed = tokens_after * self.price_wei_per_token
        now = int(time.time())
        if self._claim is not None and owed <= self.signed_wei and self.deadline - now > 300:
            return self._claim
        started = time.perf_counter()
        amount = owed + self.credit_wei
        self.deadline = now + self.payer.receipt_validity_s
        receipt = Receipt(self.payer.address, self.node, self.session_id, tokens_after, amount, self.deadline)
        signature = sign_receipt(receipt, self.payer.domain, self.payer.private_key)
        self._claim = ReceiptClaim(tokens_after, amount, self.deadline, signature)
        self.signed_wei = amount
        self.signing_s += time.perf_counter() - started
        return self._claim

    def step(self, position: int, hidden: torch.Tensor, relay: tuple[Any, ...] = ()) -> Step:
        """The step frame for positions [position, position + tokens), paid up to there."""
        return Step(self.session_id, position, self.claim_for(position + int(hidden.shape[1])), hidden, relay)

    def served(self, result: StepResult, tokens: int) -> None:
        """Record that the node computed `tokens` more tokens of the session."""
        self.tokens = result.position + tokens
        self.last_compute_ms = result.compute_ms


async def wait_set(event: asyncio.Event, timeout_s: float) -> None:
    """Return once `event` is set or `timeout_s` has passed, whichever comes first. Waits in the calling task:
    Python 3.11's `asyncio.wait_for` would wrap the wait in a task of its own, with two more turns of the event
    loop per frame received."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


class HopTimeout(HopFailed):
    """The node's stream stayed silent too long (it may be alive: probe it before rerouting)."""
