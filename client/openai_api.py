"""The OpenAI API's shapes as the gateway speaks them, with no I/O: request models (validated, with OpenAI's
defaults), response and streaming-chunk builders, error objects, and stop-sequence handling for streamed text.
Knows nothing about routes, payment or HTTP frameworks beyond the status codes it names."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOPS = 4


class ApiError(Exception):
    """An OpenAI-style error: HTTP `status` and the `error` object's fields."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text (text parts of a list joined; other parts are refused)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, "only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("n")
    @classmethod
    def _one(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"stop takes up to {MAX_STOPS} non-empty strings")
        return stop

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _single(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("only one prompt per request is supported")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported")
        return echo

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """The first pydantic error as an OpenAI invalid_request_error."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param=param)


# ------------------------------------------------------------------------------------------------ responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class Envelope:
    """What every object of one response shares."""

    id: str
    model: str
    chat: bool
    created: int = 0

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())

    def complete(self, text: str, finish_reason: str, use: dict[str, int], extension: dict[str, Any]) -> dict:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": use,
                "p2pllm": extension}

    def chunk(self, text: str | None, finish_reason: str | None = None, first: bool = False,
              extension: dict[str, Any] | None = None) -> dict:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                                "created": self.created, "model": self.model, "choices": [choice]}
        if extension is not None:
            body["p2pllm"] = extension
        return body

    def usage_chunk(self, use: dict[str, int]) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [], "usage": use}


# ------------------------------------------------------------------------------------------------ stops


class StopMatcher:
    """Cuts streamed text at the first stop sequence. `feed` returns the text safe to emit now: text that could
    still be the start of a stop sequence is held back until the next delta settles it."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""
        self.stopped = False
        self.text = ""  # everything emitted

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        buffer = self.pending + delta
        hits = [i for i in (buffer.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = buffer[:min(hits)], ""
        else:
            keep = max((k for stop in self.stops for k in range(1, len(stop)) if buffer.endswith(stop[:k])),
                       default=0)
            out, self.pending = buffer[:len(buffer) - keep], buffer[len(buffer) - keep:]
        self.text += out
        return out

    def flush(self) -> str:
        """At the end of the generation: what was held back (it never became a stop sequence)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        self.text += out
        return out
