"""The node's ASGI app (FastAPI), built by `create_app` from already-constructed parts; no import-time state.
Plain HTTP for what is not per token: `GET /info` (`p2pllm.wire.NodeInfo`), `GET /health`, `GET /metrics`
(Prometheus) and the OpenAPI docs. Everything per session and per token goes over the WebSocket `/stream`
(`node.stream`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, WebSocket
from fastapi.responses import PlainTextResponse

from node.api import AppState
from node.relay import RelaySettings
from node.stream import StreamConnection


def create_app(state: AppState, relay: RelaySettings | None = None, evict_every_s: float | None = None) -> FastAPI:
    """The app over `state`; with `evict_every_s`, sessions idle past the executor's TTL are closed that often."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        evictor = asyncio.get_running_loop().create_task(_evict(state, evict_every_s)) if evict_every_s else None
        try:
            yield
        finally:
            if evictor is not None:
                evictor.cancel()
            await state.sessions.close_all()
            await anyio.to_thread.run_sync(state.scheduler.close)

    app = FastAPI(title="P2P-LLM node", version="0.2.0", lifespan=lifespan,
                  description="Serves a layer range of a transformer for per-token payment receipts. Sessions "
                              "and steps travel as binary frames (p2pllm.wire) over the WebSocket /stream.")
    app.state.node = state
    relay_settings = relay or RelaySettings(max_frame_bytes=state.max_frame_bytes)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "active_sessions": len(state.sessions), "free_tokens": state.executor.free_tokens}

    @app.get("/info")
    def info() -> dict[str, Any]:
        load = state.scheduler.load()
        active = len(state.sessions)
        current = dataclasses.replace(state.info, price_wei_per_token=state.terms.price_wei_per_token,
                                      credit_wei=state.terms.credit_wei,
                                      min_session_reserve_wei=state.session_reserve_wei,
                                      capacity_tokens=state.executor.budget_tokens,
                                      free_tokens=state.executor.free_tokens,
                                      compute_ms_per_layer=state.compute_ms_per_layer(),
                                      active_sessions=active, queued_steps=load.queued, max_batch=load.max_batch)
        return current.to_json()

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return state.metrics.render()

    @app.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        await StreamConnection(state, websocket, relay_settings).run()

    return app


async def _evict(state: AppState, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        await state.sessions.evict_idle()
