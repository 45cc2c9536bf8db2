"""The node's HTTP API (FastAPI), built by `create_app` from already-constructed parts; no import-time state.
Routes validate, delegate (executor, payment policy, ledger) and serialize; every error becomes a 4xx/503
with `{"error": code, "detail": ...}` (codes and statuses in `node.api`). The per-token route,
`POST /sessions/{id}/forward`, lives in `node.forward`: the ASGI app `create_app` returns is that route in front
of the FastAPI app, so a forward call meets none of FastAPI's own middleware layers."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from node.api import (
    ADDRESS_PATTERN,
    SESSION_ID_PATTERN,
    ApiError,
    AppState,
    error_body,
    error_headers,
    executor_error,
)
from node.executor import ExecutorError
from node.forward import FORWARD_OPENAPI, PATH_PREFIX, PATH_SUFFIX, ForwardRoute

log = logging.getLogger("p2pnode.app")

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
    client_unpaid_wei: str = Field(description="what the client owes this node over all its sessions and the "
                                   "escrow has not paid yet (decimal wei): the client's allocation for this node "
                                   "must cover it besides what this session will cost")


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody}, 402: {"model": ErrorBody}, 404: {"model": ErrorBody},
    409: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody},
}


def _json_error(status: int, code: str, detail: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, detail), status, headers=headers, media_type="application/json")


def create_app(state: AppState) -> ForwardRoute:
    """The node's ASGI app over `state`: the forward route, passing everything else to the FastAPI app
    (`.app`), whose OpenAPI schema documents both."""
    app = FastAPI(title="P2P-LLM node", version="0.1.0",
                  description="Serves a layer range of a transformer for per-token payment receipts.")
    app.state.node = state
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain_openapi()
            schema["paths"][PATH_PREFIX + "{session_id}" + PATH_SUFFIX] = FORWARD_OPENAPI
            schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
                "ErrorBody", ErrorBody.model_json_schema())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        state.metrics.reject(exc.code)
        return _json_error(exc.status, exc.code, exc.detail, error_headers(state, exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        state.metrics.reject("invalid_request")
        return _json_error(422, "invalid_request", exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return _json_error(exc.status_code, "http_error", exc.detail, exc.headers)

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
            raise executor_error(exc) from exc
        with state.lock:
            state.clients[sid] = body.client
        return SessionOpened(session_id=sid, max_length=opened.max_length, free_tokens=state.executor.free_tokens,
                             client_unpaid_wei=str(state.exposure.unpaid_wei(body.client)))

    @app.delete("/sessions/{session_id}", status_code=204, responses=ERRORS)
    def close_session(session_id: Annotated[str, Path(pattern=SESSION_ID_PATTERN)]) -> Response:
        sid = session_id.lower()
        try:
            state.executor.close_session(sid)
        except ExecutorError as exc:
            raise executor_error(exc) from exc
        finally:
            with state.lock:
                state.clients.pop(sid, None)
                state.owed_wei.pop(sid, None)
                state.accepted.pop(sid, None)
                state.fresh_escrow_at.pop(sid, None)
        return Response(status_code=204)

    return ForwardRoute(app, state)
