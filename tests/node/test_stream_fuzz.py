"""Fuzzing the node's stream under a real uvicorn: at least 500 generated frames (random bytes, valid frames
with bytes flipped, cut or appended, and well-framed messages with arbitrary JSON metadata), sent on one open
session. Every frame is answered with a readable typed message (never a dropped stream, never an exception
escaping the node), and a good step is still served afterwards."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pllm.wire import HEADER_BYTES, KINDS, MAGIC, WIRE_VERSION, SessionOpened, StepError, StepResult, encode
from tests.node.helpers import PayingSession
from tests.node.test_stream import HIDDEN, Harness, harness  # noqa: F401  (the fixture)

FRAMES = 520
sent: list[int] = []


@pytest.fixture
def session(harness: Harness) -> Iterator[PayingSession]:  # noqa: F811
    opened = harness.session()
    assert isinstance(opened.open(32), SessionOpened)
    yield opened
    opened.close()


def _valid(session: PayingSession) -> bytes:
    return encode(session.step(torch.randn(1, 2, HIDDEN)))


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


def _frames(session: PayingSession) -> st.SearchStrategy[bytes]:
    base = _valid(session)
    flips = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=4)
    flipped = flips.map(lambda changes: bytes(_flip(base, changes)))
    cut = st.integers(0, len(base) - 1).map(lambda n: base[:n])
    extended = st.binary(min_size=1, max_size=64).map(lambda tail: base + tail)
    metas = st.tuples(st.sampled_from(sorted(KINDS)), st.dictionaries(st.text(max_size=12), json_values, max_size=6),
                      st.binary(max_size=64))
    framed = metas.map(lambda m: _frame(*m))
    known_keys = st.fixed_dictionaries({}, optional={
        "session_id": st.sampled_from(["0x" + session.session_id.hex(), "0x12", 7, None]),
        "position": st.one_of(st.integers(-2, 2**65), st.text(max_size=5)),
        "receipt": st.one_of(st.none(), json_values), "relay": st.one_of(json_values, st.just([]))})
    steps = known_keys.map(lambda meta: _frame(3, meta, base[HEADER_BYTES + int.from_bytes(base[4:8], "little"):]))
    return st.one_of(st.binary(max_size=300), flipped, cut, extended, framed, steps)


def _flip(base: bytes, changes: list[tuple[int, int]]) -> bytearray:
    out = bytearray(base)
    for index, value in changes:
        out[index] = value
    return out


def _frame(kind: int, meta: dict, payload: bytes) -> bytes:
    raw = json.dumps(meta).encode()
    return MAGIC + bytes([WIRE_VERSION, kind]) + len(raw).to_bytes(4, "little") + raw + payload


def test_every_frame_gets_a_typed_answer(session: PayingSession) -> None:
    @settings(max_examples=FRAMES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(frame=_frames(session))
    def check(frame: bytes) -> None:
        sent.append(len(frame))
        session.send(frame)
        answer = session.recv(timeout_s=30)  # a parsed message, or the test fails here
        assert isinstance(answer, StepError | StepResult), answer
        if isinstance(answer, StepResult):
            session.tokens = answer.position + int(answer.hidden.shape[1])

    check()
    assert len(sent) >= 500
    good = session.forward(torch.randn(1, 1, HIDDEN))
    assert isinstance(good, StepResult | StepError)  # the stream still answers
    fresh = PayingSession(session.endpoint, os.urandom(32), session.client_key, session.client, session.node,
                          session.domain, session.price_wei_per_token, session.deadline)
    assert isinstance(fresh.open(4), SessionOpened)
    assert isinstance(fresh.forward(torch.randn(1, 1, HIDDEN)), StepResult)
    fresh.close()
