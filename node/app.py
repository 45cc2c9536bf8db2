"""The node's HTTP API (FastAPI), built by `create_app` from already-constructed parts; no import-time state.
Routes validate, delegate (executor, payment policy, ledger) and serialize. Every error maps here, in one
place, to a 4xx/503 with `{"error": code, "detail": ...}`; the executor and policy know nothing of HTTP."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from fastapi import FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from node.executor import (
    CacheBudgetExceeded,
    DtypeMismatch,
    ExecutorError,
    LengthExceeded,
    PositionMismatch,
    SessionExists,
    ShapeMismatch,
    ShardExecutor,
    UnknownSession,
)
from node.ledger import Ledger
from node.metrics import Metrics
from node.payment import EscrowView, PaymentError, Terms, check_receipt
from p2pllm import codec

log = logging.getLogger("p2pnode.app")

SESSION_ID_PATTERN = r"^0x[0-9a-fA-F]{64}$"
ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
_SESSION_ID_RE = re.compile(SESSION_ID_PATTERN)
_HEX_RE = re.compile(r"^0x[0-9a-fA-F]*$")


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


@dataclass
class AppState:
    """Everything the routes need, passed in by the caller."""

    executor: ShardExecutor
    ledger: Ledger
    terms: Terms
    escrow: EscrowView
    info: dict[str, Any]
    metrics: Metrics
    max_body_bytes: int = 4 * 1024 * 1024
    max_session_length: int = 4096
    retry_after_s: int = 2
    now: Callable[[], int] = lambda: int(time.time())
    on_receipt: Callable[[], None] = lambda: None
    clients: dict[str, str] = field(default_factory=dict)
    owed_wei: dict[str, int] = field(default_factory=dict)
    verified_receipt: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class OpenSession(BaseModel):
    session_id: str = Field(pattern=SESSION_ID_PATTERN, description="bytes32 hex; the receipts' sessionId")
    client: str = Field(pattern=ADDRESS_PATTERN, description="the client's address (receipt signer)")
    max_length: int = Field(ge=1, description="most tokens this session will ever hold in the cache")
    layer_start: int | None = Field(None, ge=0, description="run only layers [layer_start, layer_end) of the "
                                    "node's range (default: all of it)")
    layer_end: int | None = Field(None, ge=1)


class SessionOpened(BaseModel):
    session_id: str
    max_length: int
    free_tokens: int


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody}, 402: {"model": ErrorBody}, 404: {"model": ErrorBody},
    409: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody},
}

_TENSOR_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "hidden states (1, tokens, hidden) in the p2pllm wire codec, in the node's dtype",
    }
}


# The one place where the executor's typed errors become HTTP statuses and stable codes.
EXECUTOR_ERRORS: dict[type[ExecutorError], tuple[int, str]] = {
    CacheBudgetExceeded: (503, "cache_full"),
    UnknownSession: (404, "unknown_session"),
    SessionExists: (409, "session_exists"),
    PositionMismatch: (409, "position_mismatch"),
    LengthExceeded: (400, "length_exceeded"),
    ShapeMismatch: (400, "shape_mismatch"),
    DtypeMismatch: (400, "dtype_mismatch"),
}


def _executor_error(exc: ExecutorError) -> ApiError:
    data = {k: v for k, v in vars(exc).items() if not k.startswith("_")}
    status, code = EXECUTOR_ERRORS.get(type(exc), (400, type(exc).__name__))
    return ApiError(status, code, data)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def create_app(state: AppState) -> FastAPI:
    """The node's FastAPI app over `state`."""
    app = FastAPI(title="P2P-LLM node", version="0.1.0",
                  description="Serves a layer range of a transformer for per-token payment receipts.")
    app.state.node = state

    def error_response(err: ApiError) -> JSONResponse:
        headers = dict(err.headers or {})
        if err.status == 503:
            headers.setdefault("Retry-After", str(state.retry_after_s))
        return JSONResponse({"error": err.code, "detail": _jsonable(err.detail)}, err.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        state.metrics.reject(exc.code)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        state.metrics.reject("invalid_request")
        return JSONResponse({"error": "invalid_request", "detail": _jsonable(exc.errors())}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": "http_error", "detail": exc.detail}, exc.status_code)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "active_sessions": len(state.executor.sessions()),
                "free_tokens": state.executor.free_tokens}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {**state.info, "price_wei_per_token": str(state.terms.price_wei_per_token),
                "credit_wei": str(state.terms.credit_wei), "capacity_tokens": state.executor.budget_tokens,
                "free_tokens": state.executor.free_tokens}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return state.metrics.render()

    @app.post("/sessions", status_code=201, response_model=SessionOpened, responses=ERRORS)
    def open_session(body: OpenSession) -> SessionOpened:
        if body.max_length > state.max_session_length:
            raise ApiError(400, "length_exceeded", {"max_length": body.max_length,
                                                     "limit": state.max_session_length})
        sid = body.session_id.lower()
        shard = state.executor.shard
        span = (body.layer_start if body.layer_start is not None else shard.start,
                body.layer_end if body.layer_end is not None else shard.end)
        if not shard.start <= span[0] < span[1] <= shard.end:
            raise ApiError(400, "bad_span", {"requested": list(span), "serves": [shard.start, shard.end]})
        try:
            opened = state.executor.open_session(body.max_length, session_id=sid, span=span)
        except ExecutorError as exc:
            raise _executor_error(exc) from exc
        with state.lock:
            state.clients[sid] = body.client
        return SessionOpened(session_id=sid, max_length=opened.max_length, free_tokens=state.executor.free_tokens)

    @app.delete("/sessions/{session_id}", status_code=204, responses=ERRORS)
    def close_session(session_id: Annotated[str, Path(pattern=SESSION_ID_PATTERN)]) -> Response:
        sid = session_id.lower()
        try:
            state.executor.close_session(sid)
        except ExecutorError as exc:
            raise _executor_error(exc) from exc
        finally:
            with state.lock:
                state.clients.pop(sid, None)
                state.owed_wei.pop(sid, None)
                state.verified_receipt.pop(sid, None)
        return Response(status_code=204)

    @app.post("/sessions/{session_id}/forward", responses={200: {"content": {"application/octet-stream": {}}},
                                                           **ERRORS}, openapi_extra=_TENSOR_BODY)
    async def forward(
        request: Request,
        session_id: Annotated[str, Path(pattern=SESSION_ID_PATTERN)],
        x_position: Annotated[int, Header(ge=0, description="absolute position of the first token")],
        x_receipt: Annotated[str, Header(description='JSON {"tokens", "amount_wei", "deadline", "signature"}')],
    ) -> Response:
        sid = session_id.lower()
        body = await _read_body(request, state.max_body_bytes)
        # A decode step (a few tokens, tens of ms) runs right here: handing it to a worker thread costs ~0.7 ms
        # a hop, a real share of the per-hop overhead. Prefills can take seconds, so they go to a worker and
        # /health, /info and other sessions stay responsive meanwhile.
        if len(body) <= INLINE_MAX_TOKENS * _row_bytes(state) + 64:
            return _forward(state, sid, body, x_position, x_receipt)
        return await run_in_threadpool(_forward, state, sid, body, x_position, x_receipt)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", {"max_bytes": limit, "content_length": int(declared)})
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", {"max_bytes": limit})
        chunks.append(chunk)
    return b"".join(chunks)


INLINE_MAX_TOKENS = 8


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


def _forward(state: AppState, sid: str, body: bytes, position: int, receipt_header: str) -> Response:
    started = time.perf_counter()
    with state.lock:
        client = state.clients.get(sid)
    if client is None or not _SESSION_ID_RE.match(sid):
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
        raise _executor_error(exc) from exc
    tokens_now = int(hidden.shape[1])
    if position != session.length:
        raise ApiError(409, "position_mismatch", {"expected": session.length, "got": position})
    if position + tokens_now > session.max_length:
        raise ApiError(400, "length_exceeded", {"max_length": session.max_length, "requested": position + tokens_now})
    tokens, amount, deadline, signature = _parse_receipt_header(receipt_header)
    session_bytes = bytes.fromhex(sid[2:])
    held = state.ledger.latest(client, session_bytes)
    terms = state.terms
    with state.lock:
        owed_after = state.owed_wei.get(sid, 0) + terms.price_wei_per_token * tokens_now
    try:
        receipt = check_receipt(
            terms, state.escrow, client=client, session_id=session_bytes, tokens_after=position + tokens_now,
            owed_wei=owed_after, previous=held.receipt if held else None, paid_wei=held.paid_wei if held else 0,
            tokens=tokens, amount_wei=amount, deadline=deadline, signature=signature, now=state.now(),
            signature_verified=state.verified_receipt.get(sid) == receipt_header,
        )
    except PaymentError as exc:
        raise ApiError(402, exc.code, exc.detail) from exc
    positions = torch.arange(position, position + tokens_now, dtype=torch.int64)
    compute_started = time.perf_counter()
    try:
        out = state.executor.forward(sid, hidden, positions)
    except ExecutorError as exc:
        raise _executor_error(exc) from exc
    compute_s = time.perf_counter() - compute_started
    # Durable before the output leaves: a crash after this line loses no earnings.
    state.ledger.record(receipt, signature)
    with state.lock:
        state.owed_wei[sid] = owed_after
        state.verified_receipt[sid] = receipt_header
    state.on_receipt()
    payload = codec.encode(out)
    total_s = time.perf_counter() - started
    state.metrics.observe_step(total_s, tokens_now)
    return Response(payload, media_type="application/octet-stream",
                    headers={"X-Tokens-Processed": str(position + tokens_now),
                             "Server-Timing": f"compute;dur={1000 * compute_s:.3f}, total;dur={1000 * total_s:.3f}"})
