"""The OpenAI-compatible gateway (`p2pclient serve-api`): a long-running client that keeps the model's head
loaded and the market fresh, and serves `/v1/models`, `/v1/chat/completions` and `/v1/completions` (streamed as
SSE or whole) over P2P-LLM routes, each request a session of its own on one event loop, paid per hop as any
generation; a spending budget refuses what it cannot cover. `/` is a page of the network (`client/web/`) fed
by `/api/network`. Boundary: HTTP and the OpenAI shapes (`client.openai_api`) around `InferenceClient.stream`;
routing, payment and verification are the client library's."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from client.budget import Budget, Hold, OverBudget
from client.funding import InsufficientPool
from client.hops import HopRejected
from client.inference import GenerationResult, InferenceClient, SamplingParams
from client.network_view import network_view
from client.openai_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Envelope,
    StopMatcher,
    new_id,
    usage,
    validation_error,
)
from client.routing import NoRouteError
from client.session import FailoverExhausted, RouteTooExpensive
from p2pllm.chain import ChainError

log = logging.getLogger("p2pclient.gateway")
_END = object()  # the producer's last queue item: the generation is closed and booked


@dataclass
class GatewaySettings:
    model_name: str  # the model id clients ask for
    alpha: float = 0.5
    max_price_wei_per_token: int | None = None
    budget_wei: int | None = None
    api_key: str | None = None
    refresh_s: float = 30.0
    default_max_tokens: int = 256


@dataclass
class GatewayState:
    client: InferenceClient
    settings: GatewaySettings
    budget: Budget = field(init=False)
    requests: int = 0
    verification: dict[str, int] = field(default_factory=lambda: {
        "commitments_verified": 0, "checks": 0, "agreed": 0, "disagreed": 0, "unverifiable": 0})
    earnings: dict[str, int] = field(default_factory=dict)
    earnings_at: float = 0.0
    producers: set[asyncio.Task[None]] = field(default_factory=set)  # running streamed generations

    def __post_init__(self) -> None:
        self.budget = Budget(self.settings.budget_wei)


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _extension(result: GenerationResult) -> dict[str, Any]:
    verification = result.verification
    return {"route": [{"node": h.node, "layers": list(h.layers), "price_wei_per_token": str(h.price_wei_per_token),
                       "tokens": h.tokens, "cost_wei": str(h.cost_wei), "check": h.check, "failed": h.failed}
                      for h in result.hops],
            "cost_wei": str(result.total_cost_wei),
            "failovers": [{"node": f.node, "layers": list(f.span), "reason": f.reason} for f in result.failovers],
            "verification": None if verification is None else {
                "commitments_verified": verification.commitments_verified, "checks": verification.checks,
                "agreed": verification.agreed, "disagreed": verification.disagreed,
                "unverifiable": verification.unverifiable, "verdicts": list(verification.verdicts)}}


def _library_error(exc: Exception) -> ApiError:
    """The client library's refusals as OpenAI-style errors."""
    if isinstance(exc, NoRouteError):
        return ApiError(503, f"no route covers the model's layers right now: {exc}", "service_unavailable",
                        "no_route")
    if isinstance(exc, RouteTooExpensive):
        return ApiError(503, str(exc), "service_unavailable", "route_too_expensive")
    if isinstance(exc, OverBudget):
        return ApiError(429, f"spending budget exhausted: {exc}", "insufficient_quota", "insufficient_quota")
    if isinstance(exc, InsufficientPool):
        return ApiError(402, str(exc), "insufficient_quota", "insufficient_funds")
    if isinstance(exc, (FailoverExhausted, HopRejected, ChainError)):
        return ApiError(502, str(exc), "api_error", "network_error")
    if isinstance(exc, ValueError):
        return ApiError(400, str(exc))
    return ApiError(500, f"{type(exc).__name__}: {exc}", "api_error", "internal_error")


def create_gateway(state: GatewayState) -> FastAPI:
    settings = state.settings
    client = state.client

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def refresh() -> None:
            while True:
                await asyncio.sleep(settings.refresh_s)
                try:
                    await asyncio.to_thread(client.market, True)
                except Exception as exc:  # a failed refresh keeps the last market; retried next time
                    log.warning("market refresh failed: %s", exc)

        task = asyncio.get_running_loop().create_task(refresh())
        yield
        task.cancel()

    app = FastAPI(title="P2P-LLM gateway", description="OpenAI-compatible API over P2P-LLM routes", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(validation_error(list(exc.errors())))

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", "invalid_request_error",
                           "invalid_api_key")

    def check_model(model: str) -> None:
        if model != settings.model_name:
            raise ApiError(404, f"the model '{model}' does not exist; this gateway serves '{settings.model_name}'",
                           "invalid_request_error", "model_not_found", "model")

    async def parse(request: Request, kind: type[ChatRequest] | type[CompletionRequest]) -> Any:
        authorize(request)
        try:
            body = await request.json()
        except ValueError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        try:
            parsed = kind.model_validate(body)
        except Exception as exc:
            errors = getattr(exc, "errors", None)
            raise validation_error(errors() if callable(errors) else []) from exc
        check_model(parsed.model)
        return parsed

    async def start(prompt_ids: list[int], max_tokens: int) -> Hold:
        """Hold the most this request can cost (route price × tokens, twice that with spot checks, which replay
        a hop at most once more) or refuse it; a missing route is refused here too, before anything is paid."""
        try:
            route = await asyncio.to_thread(client.route, settings.alpha, settings.max_price_wei_per_token)
            factor = 2 if client.policy.rate > 0 else 1
            return state.budget.hold(route.price_wei_per_token * (len(prompt_ids) + max_tokens) * factor)
        except (NoRouteError, RouteTooExpensive, OverBudget) as exc:
            raise _library_error(exc) from exc

    def finish(hold: Hold, result: GenerationResult) -> None:
        state.budget.settle(hold, result.total_cost_wei)
        state.requests += 1
        v = result.verification
        if v is not None:
            for key in state.verification:
                state.verification[key] += getattr(v, key)

    async def run(prompt_ids: list[int], request: ChatRequest | CompletionRequest, max_tokens: int, chat: bool,
                  stream: bool) -> Any:
        hold = await start(prompt_ids, max_tokens)
        sampling = SamplingParams(request.temperature, request.top_p, request.seed)
        envelope = Envelope(new_id("chatcmpl" if chat else "cmpl"), settings.model_name, chat)
        matcher = StopMatcher(request.stops())
        result = GenerationResult(len(prompt_ids))
        events = client.stream(prompt_ids, max_tokens, settings.alpha, settings.max_price_wei_per_token, sampling,
                               result=result)

        def finish_reason() -> str:
            if matcher.stopped or (result.token_ids and result.token_ids[-1] in client.head.eos_token_ids):
                return "stop"
            return "length"

        if not stream:
            try:
                async for event in events:
                    matcher.feed(event.text)
                    if matcher.stopped:
                        break
            except Exception as exc:
                raise _library_error(exc) from exc
            finally:
                await events.aclose()
                finish(hold, result)
            matcher.flush()
            return JSONResponse(envelope.complete(matcher.text, finish_reason(),
                                                  usage(len(prompt_ids), len(result.token_ids)), _extension(result)))

        # The generation runs in a task of its own that feeds a queue, so that a reader who leaves mid-stream
        # (which cancels the response) only tells it to stop after the current token: it still closes its
        # sessions and books its cost. Errors before the first token are answered as HTTP errors; later ones as a
        # final error chunk.
        queue: asyncio.Queue[Any] = asyncio.Queue()
        leave = asyncio.Event()

        async def produce() -> None:
            try:
                async for event in events:
                    queue.put_nowait(event)
                    if leave.is_set():
                        break
            except Exception as exc:
                queue.put_nowait(exc)
            finally:
                try:
                    await events.aclose()
                finally:
                    finish(hold, result)
                    queue.put_nowait(_END)

        producer = asyncio.get_running_loop().create_task(produce())
        state.producers.add(producer)
        producer.add_done_callback(state.producers.discard)
        first = await queue.get()
        if isinstance(first, Exception):
            while await queue.get() is not _END:
                pass
            raise _library_error(first)

        async def body() -> AsyncIterator[bytes]:
            item = first
            try:
                if chat:
                    yield _sse(envelope.chunk("", first=True))
                while item is not _END:
                    if isinstance(item, Exception):
                        yield _sse(_library_error(item).body())
                        yield _sse("[DONE]")
                        while await queue.get() is not _END:
                            pass
                        return
                    text = matcher.feed(item.text)
                    if text:
                        yield _sse(envelope.chunk(text))
                    if matcher.stopped:
                        leave.set()
                    item = await queue.get()
                tail = matcher.flush()
                if tail:
                    yield _sse(envelope.chunk(tail))
            finally:
                leave.set()  # a reader who left: the producer stops after this token and books the cost
            yield _sse(envelope.chunk(None, finish_reason(), extension=_extension(result)))
            if request.stream_options is not None and request.stream_options.include_usage:
                yield _sse(envelope.usage_chunk(usage(len(prompt_ids), len(result.token_ids))))
            yield _sse("[DONE]")

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "p2p-llm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        parsed: ChatRequest = await parse(request, ChatRequest)
        if client.head.tokenizer is None or not getattr(client.head.tokenizer, "chat_template", None):
            raise ApiError(400, f"model {settings.model_name} has no chat template; use /v1/completions")
        messages = [{"role": m.role, "content": m.text()} for m in parsed.messages]
        prompt_ids = client.head.encode_chat(messages)
        return await run(prompt_ids, parsed, parsed.token_limit(settings.default_max_tokens), True, parsed.stream)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        parsed: CompletionRequest = await parse(request, CompletionRequest)
        if client.head.tokenizer is None:
            raise ApiError(400, f"model {settings.model_name} has no tokenizer")
        prompt_ids = client.head.encode(parsed.text())
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        return await run(prompt_ids, parsed, parsed.max_tokens, False, parsed.stream)

    @app.get("/api/network")
    async def network(request: Request) -> dict[str, Any]:
        authorize(request)
        market = await asyncio.to_thread(client.market)
        if time.monotonic() - state.earnings_at > 5:
            with contextlib.suppress(ChainError):
                state.earnings = await asyncio.to_thread(client.chain.earnings)
                state.earnings_at = time.monotonic()
        budget = state.budget
        spending = {"spent_wei": str(budget.spent_wei), "held_wei": str(budget.held_wei),
                    "budget_wei": None if budget.total_wei is None else str(budget.total_wei),
                    "requests": state.requests}
        return network_view(market, settings.alpha, client.excluded(), state.earnings, spending,
                            dict(state.verification))

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("client.web").joinpath("index.html").read_text()
        return HTMLResponse(html.replace("{{MODEL}}", settings.model_name))

    return app
