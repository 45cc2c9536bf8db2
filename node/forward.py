"""The per-token hot path, `POST /sessions/{session_id}/forward`: parse, charge, compute, answer.

`_forward` is the whole request logic (session, wire codec, receipt and payment policy, shard, durable
ledger write) and knows nothing of HTTP beyond `ApiError`. `ForwardRoute` serves it as a bare ASGI app
in front of the FastAPI app: FastAPI's per-request machinery (its middleware stack, routing, parameter
validation, dependency solving, response classes) costs about 0.1 ms a hop, a real share of a decode step's
overhead, so this one route validates its few inputs by hand and writes the ASGI messages itself. `FORWARD_OPENAPI`
documents it in the app's OpenAPI schema exactly as the other routes are."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread
import torch

from node.api import SESSION_ID_PATTERN, AcceptedReceipt, ApiError, AppState, error_body, error_headers, executor_error
from node.executor import ExecutorError
from node.payment import EscrowUnavailable, PaymentError, check_receipt
from p2pllm import codec
from p2pllm.receipts import Receipt

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PATH_PREFIX, PATH_SUFFIX = "/sessions/", "/forward"
_SESSION_ID_RE = re.compile(SESSION_ID_PATTERN)
_HEX_RE = re.compile(r"^0x[0-9a-fA-F]*$")
_DIGITS_RE = re.compile(r"^[0-9]{1,18}$")

# A decode step (a few tokens, a few ms) runs on the event loop: handing it to a worker thread costs ~0.7 ms
# a hop. Prefills can take seconds, so they go to a worker and /health, /info and other sessions stay
# responsive meanwhile.
INLINE_MAX_TOKENS = 8


class ForwardRoute:
    """ASGI app: answers `POST /sessions/{id}/forward` itself and passes everything else to `app`."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path.startswith(PATH_PREFIX) and path.endswith(PATH_SUFFIX)
                and "/" not in path[len(PATH_PREFIX):-len(PATH_SUFFIX)]):
            await self.app(scope, receive, send)
            return
        state = self.state
        try:
            if scope["method"] != "POST":
                raise ApiError(405, "method_not_allowed", {"allowed": ["POST"]}, {"Allow": "POST"})
            sid, position, receipt, declared = _parse_request(scope, path)
            if declared is not None and declared > state.max_body_bytes:
                raise ApiError(413, "body_too_large", {"max_bytes": state.max_body_bytes, "content_length": declared})
            body = await _read_body(receive, state.max_body_bytes)
            if body is None:
                return  # the client went away
            if len(body) <= INLINE_MAX_TOKENS * _row_bytes(state) + 64:
                payload, headers = _forward(state, sid, body, position, receipt)
            else:
                payload, headers = await anyio.to_thread.run_sync(_forward, state, sid, body, position, receipt)
        except ApiError as err:
            state.metrics.reject(err.code)
            await _respond(send, err.status, error_body(err.code, err.detail), "application/json",
                           error_headers(state, err))
            return
        await _respond(send, 200, payload, "application/octet-stream", headers)


def _parse_request(scope: Scope, path: str) -> tuple[str, int, str, int | None]:
    """(session id, X-Position, X-Receipt, Content-Length) or a 422 naming every invalid input."""
    sid = path[len(PATH_PREFIX):-len(PATH_SUFFIX)]
    position = receipt = declared = None
    for name, value in scope["headers"]:
        if name == b"x-position":
            position = value
        elif name == b"x-receipt":
            receipt = value
        elif name == b"content-length":
            declared = value
    problems = []
    if not _SESSION_ID_RE.match(sid):
        problems.append({"loc": ["path", "session_id"], "msg": f"must match {SESSION_ID_PATTERN}"})
    if position is None:
        problems.append({"loc": ["header", "x-position"], "msg": "required"})
    elif not _DIGITS_RE.match(position.decode("latin-1")):
        problems.append({"loc": ["header", "x-position"], "msg": "must be an integer >= 0",
                         "input": position.decode("latin-1")[:40]})
    if receipt is None:
        problems.append({"loc": ["header", "x-receipt"], "msg": "required"})
    if problems:
        raise ApiError(422, "invalid_request", problems)
    length = declared.decode("latin-1") if declared is not None else ""
    return (sid.lower(), int(position), receipt.decode("latin-1"),  # type: ignore[union-attr]
            int(length) if length.isdigit() else None)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", {"max_bytes": limit})
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, media_type: str, headers: dict[str, str]) -> None:
    raw = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _row_bytes(state: AppState) -> int:
    shard = state.executor.shard
    return shard.hidden_size * shard.dtype.itemsize


def _parse_receipt_header(raw: str) -> tuple[int, int, int, bytes]:
    try:
        data = json.loads(raw)
        tokens, amount, deadline, signature = (data["tokens"], data["amount_wei"], data["deadline"],
                                               data["signature"])
        if not (isinstance(signature, str) and _HEX_RE.match(signature)):
            raise ValueError("signature must be 0x-hex")
        parsed = (int(tokens), int(amount), int(deadline), bytes.fromhex(signature[2:]))
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ApiError(400, "bad_receipt_header", str(exc)) from exc
    if any(isinstance(v, bool) or not isinstance(v, int | str) for v in (tokens, amount, deadline)):
        raise ApiError(400, "bad_receipt_header", "tokens, amount_wei and deadline must be integers")
    return parsed


def _forward(state: AppState, sid: str, body: bytes, position: int,
             receipt_header: str) -> tuple[bytes, dict[str, str]]:
    """One paid forward step: the output payload and response headers, or ApiError."""
    started = time.perf_counter()
    with state.lock:
        client = state.clients.get(sid)
    if client is None:
        raise ApiError(404, "unknown_session", {"session_id": sid})
    shard = state.executor.shard
    try:
        hidden = codec.decode(body, max_bytes=state.max_body_bytes, expected_dtype=shard.dtype,
                              expected_trailing_dim=shard.hidden_size)
    except codec.CodecError as exc:
        raise ApiError(400, exc.reason, exc.detail) from exc
    if hidden.dim() != 3 or hidden.shape[0] != 1 or hidden.shape[1] < 1:
        raise ApiError(400, "shape_mismatch", {"expected": [1, "tokens", shard.hidden_size],
                                               "got": list(hidden.shape)})
    try:
        session = state.executor.session(sid)
    except ExecutorError as exc:
        with state.lock:
            state.clients.pop(sid, None)
        raise executor_error(exc) from exc
    tokens_now = int(hidden.shape[1])
    if position != session.length:
        raise ApiError(409, "position_mismatch", {"expected": session.length, "got": position})
    if position + tokens_now > session.max_length:
        raise ApiError(400, "length_exceeded", {"max_length": session.max_length, "requested": position + tokens_now})
    tokens, amount, deadline, signature = _parse_receipt_header(receipt_header)
    session_bytes = bytes.fromhex(sid[2:])
    # A session's newest accepted receipt is kept in memory (`state.accepted`): the ledger is read only for a
    # session's first receipt here (it may hold one from an earlier run). A client with credit sends the same
    # receipt for several steps: it is already verified and stored, so only what changes with time and tokens
    # (deadline window, amount owed, escrow cover) is checked again.
    last = state.accepted.get(sid)
    repeated = last is not None and last.header == receipt_header
    if last is None:
        held = state.ledger.latest(client, session_bytes)
        previous = held.receipt if held else None
    else:
        previous = last.receipt
    terms = state.terms
    with state.lock:
        owed_after = state.owed_wei.get(sid, 0) + terms.price_wei_per_token * tokens_now

    with state.exposure.hold(client):
        standing = state.exposure.standing(client, session_bytes)

        def check(fresh: bool) -> Receipt:
            return check_receipt(
                terms, state.escrow, client=client, session_id=session_bytes, tokens_after=position + tokens_now,
                owed_wei=owed_after, previous=previous, paid_wei=standing.paid_wei,
                other_unpaid_wei=standing.other_unpaid_wei, other_deadline=standing.other_deadline, tokens=tokens,
                amount_wei=amount, deadline=deadline, signature=signature, now=state.now(),
                signature_verified=repeated, fresh_escrow=fresh,
            )

        try:
            try:
                receipt = check(False)
            except PaymentError as exc:
                # The client may just have reserved more: ask the chain before refusing, at most once a
                # second per session, so that no client makes the node read the chain on every request.
                now = time.monotonic()
                if exc.code != "insufficient_escrow" or \
                        now - state.fresh_escrow_at.get(sid, -math.inf) < state.fresh_escrow_min_s:
                    raise
                state.fresh_escrow_at[sid] = now
                receipt = check(True)
        except PaymentError as exc:
            raise ApiError(402, exc.code, exc.detail) from exc
        except EscrowUnavailable as exc:
            raise ApiError(503, "chain_unavailable", str(exc)) from exc
        # Counted before the compute, so a concurrent request of the same client weighs it; undone on failure.
        state.exposure.accept(client, session_bytes, amount, standing.paid_wei, deadline)
    positions = torch.arange(position, position + tokens_now, dtype=torch.int64)
    compute_started = time.perf_counter()
    try:
        out = state.executor.forward(sid, hidden, positions)
    except ExecutorError as exc:
        with state.exposure.hold(client):
            state.exposure.accept(client, session_bytes, standing.amount_wei, standing.paid_wei,
                                  previous.deadline if previous else 0)
        raise executor_error(exc) from exc
    compute_s = time.perf_counter() - compute_started
    if not repeated:
        # Durable before the output leaves: a crash after this line loses no earnings.
        state.ledger.record(receipt, signature)
    with state.lock:
        state.owed_wei[sid] = owed_after
        state.accepted[sid] = AcceptedReceipt(receipt_header, receipt)
    state.on_receipt()
    payload = codec.encode(out)
    total_s = time.perf_counter() - started
    state.metrics.observe_step(total_s, tokens_now)
    return payload, {"X-Tokens-Processed": str(position + tokens_now),
                     "Server-Timing": f"compute;dur={1000 * compute_s:.3f}, total;dur={1000 * total_s:.3f}"}


def _binary(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


FORWARD_OPENAPI: dict[str, Any] = {
    "post": {
        "summary": "Forward",
        "description": "Run hidden states through this node's layers for the session, paid by the receipt in "
                       "X-Receipt (stored durably before the output is returned).",
        "operationId": "forward_sessions__session_id__forward_post",
        "parameters": [
            {"name": "session_id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": SESSION_ID_PATTERN}},
            {"name": "x-position", "in": "header", "required": True,
             "description": "absolute position of the first token",
             "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}},
            {"name": "x-receipt", "in": "header", "required": True,
             "description": 'JSON {"tokens", "amount_wei", "deadline", "signature"}', "schema": {"type": "string"}},
        ],
        "requestBody": {"required": True, **_binary(
            "hidden states (1, tokens, hidden) in the p2pllm wire codec, in the node's dtype")},
        "responses": {
            "200": _binary("the node's output hidden states, same shape, in the wire codec"),
            **{str(status): _error(text) for status, text in (
                (400, "malformed body, shape, dtype or receipt header"), (402, "payment refused"),
                (404, "unknown or expired session"), (405, "method not allowed"),
                (409, "position mismatch"), (413, "body too large"), (422, "invalid request"),
                (503, "cache budget full (Retry-After)"))},
        },
    }
}
