"""The node's WebSocket stream (`/stream`): binary frames in order, each parsed into a typed `p2pllm.wire`
message and answered. A stream is bound by its first frame:

- `OpenSession` (a client): the client's signed open is checked, and the session is opened only if the client
  has reserved for this node at least the session minimum beyond what it already owes. The session then lives
  as long as this stream: results and errors of its steps, wherever they came from, go to the client here.
- `Step` (a relaying node): steps for an existing session, pushed by the node before it on the route.

A step is admitted against its receipt (`node.steps`), queued for the compute worker (`node.scheduler`, which
batches it with other sessions' steps), then a copy of its output, or the final result, goes to the client and
the output is pushed to the next hop when the step says so (`node.relay`). A frame that cannot be read, a step
that cannot be paid, a next hop that cannot be reached: each is a `StepError` with a stable code, sent to the
client (or, for a relayed step whose session is unknown, back to the relaying node). The event loop never waits
on compute, SQLite or the chain: those run on the compute worker or in worker threads. A stream handles its
frames one at a time, so each session's steps stay in order and a fast sender is held back by TCP. Knows
nothing about HTTP routes or uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import anyio.to_thread
from starlette.websockets import WebSocket, WebSocketDisconnect

from node.api import AppState, StepFailure, executor_failure
from node.executor import ExecutorError
from node.payment import EscrowUnavailable
from node.relay import Relay, RelaySettings, RelayUnreachable
from node.scheduler import SchedulerClosed
from node.session import NodeSession
from node.steps import NeedsChain, admit, record, refund, settle
from p2pllm import codec
from p2pllm.commitments import tensor_hash
from p2pllm.receipts import Receipt, ReceiptSignatureError, SessionOpenTerms, recover_session_signer
from p2pllm.wire import (
    Message,
    OpenSession,
    Ping,
    Pong,
    SessionOpened,
    Step,
    StepError,
    StepResult,
    WireError,
    encode,
    parse,
    with_wire,
)

log = logging.getLogger("p2pnode.stream")


class StreamConnection:
    """One WebSocket and what it is bound to: the session it opened, or the session it relays steps into."""

    def __init__(self, state: AppState, websocket: WebSocket, relay: RelaySettings) -> None:
        self.state = state
        self.websocket = websocket
        self.relay_settings = relay
        self.owned: NodeSession | None = None
        self.relays_into: NodeSession | None = None
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        await self.websocket.accept()
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                frame = message.get("bytes")
                if frame is None:
                    await self._error(StepFailure("bad_frame", {"reason": "a text frame; frames are binary"}))
                    continue
                await self._dispatch(frame)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        finally:
            if self.owned is not None:
                await self.state.sessions.close(self.owned)

    async def send_frame(self, frame: bytes) -> None:
        async with self._send_lock:
            await self.websocket.send_bytes(frame)

    # ------------------------------------------------------------------------------------------ dispatch

    async def _dispatch(self, frame: bytes) -> None:
        shard = self.state.executor.shard
        try:
            message: Message = parse(frame, max_bytes=self.state.max_frame_bytes, dtype=shard.dtype,
                                     hidden_size=shard.hidden_size)
        except WireError as exc:
            await self._error(StepFailure(exc.code, exc.detail))
            return
        if isinstance(message, OpenSession):
            await self._open(message)
        elif isinstance(message, Step):
            await self._step(message)
        elif isinstance(message, Ping):
            await self._ping(message)
        else:
            await self._error(StepFailure("unexpected_message", {"kind": type(message).__name__}))

    async def _error(self, failure: StepFailure, session_id: bytes = b"", position: int | None = None,
                     relayed: bool = False, to: NodeSession | None = None) -> None:
        """Report a failure to the session's client when there is one, else on this stream."""
        self.state.metrics.reject(failure.code)
        error = StepError(failure.code, failure.detail, self.state.terms.node, session_id, position, relayed,
                          failure.retry_after_s)
        frame = encode(error)
        if to is not None and not to.closed:
            with contextlib.suppress(Exception):  # the client may be gone; there is nobody else to tell
                await to.send_to_client(frame)
            return
        with contextlib.suppress(Exception):
            await self.send_frame(frame)

    # ------------------------------------------------------------------------------------------ open

    async def _open(self, message: OpenSession) -> None:
        state = self.state
        sid = message.session_id
        if self.owned is not None or self.relays_into is not None:
            await self._error(StepFailure("stream_bound", {"reason": "a stream carries one session"}), sid)
            return
        try:
            session = await self._admit_open(message)
            free = state.sessions.open(session)
        except StepFailure as failure:
            await self._error(failure, sid)
            return
        except ExecutorError as exc:
            await self._error(executor_failure(state, exc), sid)
            return
        self.owned = session
        unpaid = state.exposure.unpaid_wei(session.client)
        await self.send_frame(encode(SessionOpened(sid, session.max_length, free, unpaid)))

    async def _admit_open(self, message: OpenSession) -> NodeSession:
        state = self.state
        shard = state.executor.shard
        now = state.now()
        if message.node.lower() != state.terms.node.lower():
            raise StepFailure("wrong_node", {"node": state.terms.node, "got": message.node})
        if not shard.start <= message.layer_start < message.layer_end <= shard.end:
            raise StepFailure("bad_span", {"requested": [message.layer_start, message.layer_end],
                                           "serves": [shard.start, shard.end]})
        if not 1 <= message.max_length <= state.max_session_length:
            raise StepFailure("length_exceeded", {"max_length": message.max_length,
                                                  "limit": state.max_session_length})
        if not now <= message.deadline <= now + state.terms.max_receipt_validity_s:
            raise StepFailure("bad_deadline", {"deadline": message.deadline, "earliest": now,
                                               "latest": now + state.terms.max_receipt_validity_s})
        terms = SessionOpenTerms(message.node, message.session_id, message.max_length, message.layer_start,
                                 message.layer_end, message.deadline)
        try:
            signer = recover_session_signer(terms, state.terms.domain, message.signature)
        except ReceiptSignatureError as exc:
            raise StepFailure("bad_signature", {"reason": exc.reason}) from exc
        if signer != bytes.fromhex(message.client[2:]):
            raise StepFailure("bad_signature", {"reason": "not signed by the client for this node, chain and escrow"})
        if state.sessions.get(message.session_id) is not None:
            raise StepFailure("session_exists", {"session_id": "0x" + message.session_id.hex()})
        # The chain and the ledger are read in a worker thread: an unknown client's escrow read must not stall
        # the other streams.
        reserved, unpaid, held = await anyio.to_thread.run_sync(self._cover, message.client, message.session_id, now)
        needed = unpaid + state.session_reserve_wei
        if reserved < needed:
            raise StepFailure("insufficient_escrow", {"reserved_wei": str(reserved), "client_unpaid_wei": str(unpaid),
                                                      "min_session_reserve_wei": str(state.session_reserve_wei),
                                                      "needed_wei": str(needed)})
        session = NodeSession(message.session_id, message.client, message.max_length,
                              (message.layer_start, message.layer_end), self.send_frame, held=held)
        session.relay = Relay(self.relay_settings, self.send_frame)
        return session

    def _cover(self, client: str, session_id: bytes, now: int) -> tuple[int, int, Receipt | None]:
        """What `client` has reserved for this node through a receipt's longest validity (read fresh when the
        cached answer falls short), what it owes this node unpaid, and the ledger's receipt for this session
        from an earlier run, if any. Reserve and debt are read together under the client's hold; a shortfall
        that a claim of the client's receipts overlapped is read again once the claim is counted."""
        state = self.state
        until = now + state.terms.max_receipt_validity_s
        for attempt in range(2):
            mark = state.exposure.claim_mark(client)
            try:
                with state.exposure.hold(client):
                    unpaid = state.exposure.unpaid_wei(client)
                    reserved = state.escrow.reserved_wei(client, until)
                    if reserved < unpaid + state.session_reserve_wei:
                        reserved = state.escrow.reserved_wei(client, until, fresh=True)
            except EscrowUnavailable as exc:
                raise StepFailure("chain_unavailable", {"reason": str(exc)}, state.retry_after_s) from exc
            overlapped = state.exposure.claim_overlapped(client, mark)
            if reserved >= unpaid + state.session_reserve_wei or attempt or not overlapped:
                break
            state.exposure.wait_claims(client, state.claim_wait_s)
        held = state.ledger.latest(client, session_id)
        return reserved, unpaid, held.receipt if held is not None else None

    # ------------------------------------------------------------------------------------------ steps

    async def _step(self, step: Step) -> None:
        state = self.state
        session = state.sessions.get(step.session_id)
        if self.owned is None and self.relays_into is None and session is not None:
            self.relays_into = session  # a relaying node's stream: bound to the session of its first step
        relayed = self.owned is None
        bound = self.owned or self.relays_into
        if session is None or session is not bound:
            code = "unknown_session" if session is None else "stream_bound"
            await self._error(StepFailure(code, {"session_id": "0x" + step.session_id.hex()}), step.session_id,
                              step.position, relayed)
            return
        started = time.perf_counter()
        tokens = int(step.hidden.shape[1])
        input_hash = tensor_hash(step.payload()) if state.committer is not None else b""
        if relayed and state.committer is not None:
            upstream = step.upstream
            named = None if upstream is None else upstream.commitment
            if named is None or (named.position, named.tokens) != (step.position, tokens) \
                    or named.output_hash != input_hash:
                # The client must be able to hold the relaying node to what it pushed here.
                await self._error(StepFailure("bad_upstream", {"reason": "relayed hidden states need the relaying "
                                                               "node's commitment to exactly them"}),
                                  step.session_id, step.position, relayed, to=session)
                return
        try:
            try:
                admission = admit(state, session, step.position, tokens, step.receipt, blocking=False)
            except NeedsChain:
                admission = await anyio.to_thread.run_sync(admit, state, session, step.position, tokens,
                                                            step.receipt, True)
        except StepFailure as failure:
            await self._error(failure, step.session_id, step.position, relayed, to=session)
            return
        try:
            out, compute_s = await state.scheduler.run(session.key, step.hidden, step.position,
                                                       after=lambda: record(state, admission), relayed=relayed)
        except Exception as exc:  # not served: the receipt no longer counts
            refund(state, session, admission)
            if isinstance(exc, ExecutorError):
                failure = executor_failure(state, exc)
            elif isinstance(exc, SchedulerClosed):
                failure = StepFailure("shutting_down", {}, state.retry_after_s)
            else:
                log.exception("step of session %s failed", session.key)
                failure = StepFailure("internal", {"reason": type(exc).__name__})
            await self._error(failure, step.session_id, step.position, relayed, to=session)
            return
        settle(state, session, admission)
        unreachable: RelayUnreachable | None = None
        # The client's copy leaves before the push: on a host shared with the next node, the client then handles
        # it before the next node starts computing instead of preempting that compute (measured: 7 ms a token on
        # one core over three hops). A client gone mid-step: its session closes with its stream.
        commitment = None
        out_wire = codec.encode(out)  # encoded once: hashed, sent to the client and pushed on
        if state.committer is not None:
            commitment = state.committer.sign(step.session_id, step.position, tokens, input_hash,
                                              tensor_hash(out_wire), session.span)
        result = with_wire(StepResult(step.session_id, step.position, not step.relay, 1000 * compute_s, out,
                                      commitment, step.upstream), out_wire)
        with contextlib.suppress(Exception):
            await session.send_to_client(encode(result))
        if step.relay:
            following = step.relay[0]
            onward = with_wire(Step(following.session_id, step.position, following.receipt, out, step.relay[1:],
                                    commitment), out_wire)
            try:
                assert session.relay is not None
                await session.relay.push(following.endpoint, following.session_id, encode(onward))
            except RelayUnreachable as exc:
                unreachable = exc
        if unreachable is not None:  # told before the result, so the client feeds the next hop at once
            await self._error(StepFailure("next_hop_unreachable", {"endpoint": unreachable.endpoint,
                                                                   "reason": unreachable.reason}),
                              step.session_id, step.position, relayed, to=session)
        state.metrics.observe_step(time.perf_counter() - started, tokens)

    async def _ping(self, ping: Ping) -> None:
        try:
            length = self.state.executor.session("0x" + ping.session_id.hex()).length
        except ExecutorError:
            await self._error(StepFailure("unknown_session", {"session_id": "0x" + ping.session_id.hex()}),
                              ping.session_id)
            return
        await self.send_frame(encode(Pong(ping.session_id, length)))

