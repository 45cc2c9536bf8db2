"""The OpenAI shapes without I/O: request validation with OpenAI's defaults and errors, response objects, and
stop sequences cut exactly, also when they arrive split across deltas."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from client.openai_api import ChatRequest, CompletionRequest, Envelope, StopMatcher, usage, validation_error


def test_chat_request_defaults_and_limits() -> None:
    request = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert (request.temperature, request.top_p, request.n, request.stream) == (1.0, 1.0, 1, False)
    assert request.token_limit(64) == 64 and request.stops() == []
    assert ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                       "max_completion_tokens": 5, "stop": "\n"}).token_limit(64) == 5
    for bad, param in (({"n": 2}, "n"), ({"temperature": 3}, "temperature"), ({"top_p": 0}, "top_p"),
                       ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"messages": []}, "messages"),
                       ({"max_tokens": 0}, "max_tokens")):
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **bad}
        with pytest.raises(ValidationError) as caught:
            ChatRequest.model_validate(body)
        error = validation_error(caught.value.errors())
        assert error.status == 400 and error.param == param and error.body()["error"]["type"] == \
            "invalid_request_error"


def test_completion_request() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": ["once"]})
    assert request.max_tokens == 16 and request.text() == "once"
    for bad in ({"prompt": ["a", "b"]}, {"echo": True}):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"model": "m", "prompt": "x", **bad})


def test_response_objects() -> None:
    chat = Envelope("chatcmpl-1", "m", chat=True, created=7)
    done = chat.complete("hello", "stop", usage(3, 1), {"cost_wei": "5"})
    assert done["object"] == "chat.completion" and done["choices"][0]["message"] == {"role": "assistant",
                                                                                     "content": "hello"}
    assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert chat.chunk("", first=True)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = chat.chunk(None, "length", extension={"cost_wei": "5"})
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chat.usage_chunk(usage(1, 1))["choices"] == []
    text = Envelope("cmpl-1", "m", chat=False)
    assert text.complete("x", "stop", usage(1, 1), {})["choices"][0]["text"] == "x"
    assert text.chunk("y")["object"] == "text_completion"


def test_stop_sequences_split_across_deltas() -> None:
    matcher = StopMatcher(["END", "\n\n"])
    assert matcher.feed("Hello E") == "Hello "  # "E" may start END: held back
    assert matcher.feed("N") == ""
    assert matcher.feed("Dless") == "" and matcher.stopped
    assert matcher.text == "Hello " and matcher.flush() == ""
    other = StopMatcher(["END"])
    assert other.feed("a E") == "a " and other.feed("x") == "Ex" and other.flush() == ""
    tail = StopMatcher(["END"])
    assert tail.feed("abEN") == "ab" and tail.flush() == "EN" and tail.text == "abEN"


@given(st.lists(st.text(alphabet="abE\nND", max_size=5), max_size=12), st.sampled_from(["END", "\n\n", "ab"]))
def test_stop_matcher_equals_cutting_the_whole_text(deltas: list[str], stop: str) -> None:
    matcher = StopMatcher([stop])
    emitted = "".join(matcher.feed(d) for d in deltas) + matcher.flush()
    whole = "".join(deltas)
    expected = whole[:whole.find(stop)] if stop in whole else whole
    assert emitted == expected == matcher.text
