"""The wire protocol: every message survives encode → parse unchanged (property-tested), every malformed frame
or field is refused with its stable code, `NodeInfo` round-trips through JSON and refuses what is not one, and
stream URLs follow the endpoint's scheme."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm import codec
from p2pllm.wire import (
    HEADER_BYTES,
    MAGIC,
    WIRE_VERSION,
    NextHop,
    NodeInfo,
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
    with_wire,
)

ADDRESS = "0x" + "Ab" * 20
SESSION = b"\x05" * 32

claims = st.builds(ReceiptClaim, st.integers(0, 2**64 - 1), st.integers(0, 2**256 - 1), st.integers(0, 2**64 - 1),
                   st.binary(min_size=65, max_size=65))
sessions = st.binary(min_size=32, max_size=32)
hiddens = st.tuples(st.integers(1, 5), st.integers(1, 8)).map(lambda shape: torch.randn(1, *shape))
hops = st.builds(NextHop, st.sampled_from(["http://10.0.0.2:8000", "https://node.example:443"]), sessions, claims)


def _same(a: object, b: object) -> None:
    assert type(a) is type(b)
    for name in a.__dataclass_fields__:  # type: ignore[attr-defined]
        left, right = getattr(a, name), getattr(b, name)
        if name == "wire":  # a parsed message keeps its tensor's encoding: exactly what encoding it again gives
            for kept in (left, right):
                assert kept is None or kept == codec.encode(b.hidden)  # type: ignore[attr-defined]
        elif isinstance(left, torch.Tensor):
            assert torch.equal(left, right)
        else:
            assert left == right, name


@settings(max_examples=60, deadline=None)
@given(st.one_of(
    st.builds(OpenSession, sessions, st.just(ADDRESS), st.just(ADDRESS), st.integers(0, 2**32 - 1),
              st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1), st.integers(0, 2**64 - 1),
              st.binary(min_size=65, max_size=65)),
    st.builds(SessionOpened, sessions, st.integers(0, 2**32 - 1), st.integers(0, 2**63), st.integers(0, 2**256 - 1)),
    st.builds(Step, sessions, st.integers(0, 2**64 - 1), st.none() | claims, hiddens,
              st.lists(hops, max_size=3).map(tuple)),
    st.builds(StepResult, sessions, st.integers(0, 2**64 - 1), st.booleans(),
              st.floats(0, 1e6, allow_nan=False).map(lambda ms: round(ms, 3)), hiddens),  # sent to the µs
    st.builds(StepError, st.text(min_size=1, max_size=30), st.dictionaries(st.text(max_size=8), st.integers()),
              st.just(ADDRESS), sessions, st.none() | st.integers(0, 2**64 - 1), st.booleans(),
              st.none() | st.floats(0, 100)),
    st.builds(Ping, sessions),
    st.builds(Pong, sessions, st.integers(0, 2**64 - 1)),
))
def test_every_message_round_trips(message: object) -> None:
    _same(parse(encode(message)), message)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_parsed_tensor_keeps_its_canonical_encoding(dtype: torch.dtype) -> None:
    """`parse` keeps the tensor payload as `wire`; it is `codec.encode` of the parsed tensor, so hashing or
    sending it on needs no new encoding, and a message sent on with it is the frame it came in."""
    for message in (_step(), StepResult(SESSION, 7, True, 1.5, torch.randn(1, 2, 16))):
        message = dataclasses.replace(message, hidden=message.hidden.to(dtype))
        frame = encode(message)
        parsed = parse(frame)
        assert isinstance(parsed, (Step, StepResult)) and parsed.wire == codec.encode(parsed.hidden)
        assert encode(parsed) == frame
        assert encode(with_wire(dataclasses.replace(parsed), codec.encode(parsed.hidden))) == frame
        changed = dataclasses.replace(parsed, hidden=parsed.hidden + 1)  # a changed copy is encoded afresh
        assert changed.wire is None and parse(encode(changed)).hidden.equal(changed.hidden)


def _step() -> Step:
    claim = ReceiptClaim(3, 3 * 10**12, 1_800_000_000, bytes(range(65)))
    return Step(SESSION, 7, claim, torch.randn(1, 3, 16), (NextHop("http://127.0.0.1:9", SESSION, claim),))


def _with_meta(frame: bytes, change: dict) -> bytes:
    meta_len = int.from_bytes(frame[4:8], "little")
    meta = json.loads(frame[HEADER_BYTES:HEADER_BYTES + meta_len])
    meta.update(change)
    raw = json.dumps(meta).encode()
    return frame[:4] + len(raw).to_bytes(4, "little") + raw + frame[HEADER_BYTES + meta_len:]


@pytest.mark.parametrize(("mangle", "code"), [
    (lambda f: f[:5], "bad_frame"),
    (lambda f: b"XX" + f[2:], "bad_frame"),
    (lambda f: f[:2] + bytes([WIRE_VERSION + 1]) + f[3:], "unsupported_version"),
    (lambda f: f[:3] + bytes([99]) + f[4:], "bad_frame"),
    (lambda f: f[:4] + (10**6).to_bytes(4, "little") + f[8:], "bad_frame"),
    (lambda f: f[:8] + b"[" + f[9:], "bad_frame"),
    (lambda f: _with_meta(f, {"position": -1}), "bad_field"),
    (lambda f: _with_meta(f, {"position": "x"}), "bad_field"),
    (lambda f: _with_meta(f, {"position": True}), "bad_field"),
    (lambda f: _with_meta(f, {"session_id": "0x1234"}), "bad_field"),
    (lambda f: _with_meta(f, {"relay": {"not": "a list"}}), "bad_field"),
    (lambda f: _with_meta(f, {"relay": [{"endpoint": "x", "session_id": "0x" + "00" * 32}] * 65}), "bad_field"),
    (lambda f: _with_meta(f, {"receipt": {"tokens": 1}}), "bad_receipt"),
    (lambda f: _with_meta(f, {"receipt": "nope"}), "bad_receipt"),
    (lambda f: _drop(f, "position"), "missing_field"),
    (lambda f: f[:-4], "length_mismatch"),
    (lambda f: _tensor_byte(f, 5, 0), "unknown_dtype"),  # its detail has a "code" too (found by the stream fuzz)
])
def test_malformed_frames_are_refused_with_a_code(mangle: object, code: str) -> None:
    with pytest.raises(WireError) as refused:
        parse(mangle(encode(_step())))  # type: ignore[operator]
    assert refused.value.code == code, refused.value


def _tensor_byte(frame: bytes, offset: int, value: int) -> bytes:
    """`frame` with byte `offset` of its tensor payload (`p2pllm.codec`'s header: 5 is the dtype code) set."""
    at = HEADER_BYTES + int.from_bytes(frame[4:8], "little") + offset
    return frame[:at] + bytes([value]) + frame[at + 1:]


def _drop(frame: bytes, name: str) -> bytes:
    meta_len = int.from_bytes(frame[4:8], "little")
    meta = json.loads(frame[HEADER_BYTES:HEADER_BYTES + meta_len])
    del meta[name]
    raw = json.dumps(meta).encode()
    return frame[:4] + len(raw).to_bytes(4, "little") + raw + frame[HEADER_BYTES + meta_len:]


def test_limits_and_expectations() -> None:
    frame = encode(_step())
    with pytest.raises(WireError, match="frame_too_large"):
        parse(frame, max_bytes=len(frame) - 1)
    with pytest.raises(WireError, match="dtype_mismatch"):
        parse(frame, dtype=torch.bfloat16)
    with pytest.raises(WireError, match="trailing_dim_mismatch"):
        parse(frame, hidden_size=17)
    assert parse(frame, max_bytes=len(frame), dtype=torch.float32, hidden_size=16).position == 7
    flat = Step(SESSION, 0, None, torch.randn(3, 16))
    with pytest.raises(WireError, match="shape_mismatch"):
        parse(encode(flat))
    ping = encode(Ping(SESSION))
    with pytest.raises(WireError, match="bad_frame"):
        parse(ping + b"extra")
    tensor = codec.encode(torch.randn(1, 1, 4))
    assert codec.decode(tensor).shape == (1, 1, 4)
    assert encode(Ping(SESSION)).startswith(MAGIC + bytes([WIRE_VERSION, Ping.KIND]))


def _info() -> NodeInfo:
    return NodeInfo(ADDRESS, "smollm2-135m", os.urandom(32), 0, 10, 30, 576, "float32", "cpu", 2.5, 31337, ADDRESS,
                    ADDRESS, 3, 86400, 172800, 2 * 10**12, 10**13, 10**12, 8192, 4096)


def test_node_info_round_trips_and_refuses_what_is_not_one() -> None:
    info = _info()
    data = info.to_json()
    assert NodeInfo.from_json(json.loads(json.dumps(data))) == info
    assert data["price_wei_per_token"] == "2000000000000"  # amounts as strings: JSON numbers lose precision
    for broken, code in (({**data, "version": 2}, "unsupported_version"), ({**data, "node": "nobody"}, "bad_field"),
                         ({**data, "compute_ms_per_layer": -1}, "bad_field"), ("[]", "bad_info")):
        with pytest.raises(WireError) as refused:
            NodeInfo.from_json(broken)
        assert refused.value.code == code
    missing = dict(data)
    del missing["hidden_size"]
    with pytest.raises(WireError, match="missing_field"):
        NodeInfo.from_json(missing)


def test_stream_urls() -> None:
    assert stream_url("http://10.0.0.1:8000") == "ws://10.0.0.1:8000/stream"
    assert stream_url("https://node.example/") == "wss://node.example/stream"
    assert _info().stream_url("https://n:1") == "wss://n:1/stream"
    with pytest.raises(WireError, match="bad_endpoint"):
        stream_url("ftp://x")


def test_receipt_claim_completes_a_receipt() -> None:
    claim = ReceiptClaim(4, 4 * 10**12, 1_800_000_000, bytes(65))
    receipt = claim.receipt(ADDRESS, "0x" + "cd" * 20, SESSION)
    assert (receipt.tokens, receipt.amount_wei, receipt.deadline, receipt.session_id) == (4, 4 * 10**12,
                                                                                        1_800_000_000, SESSION)
    assert ReceiptClaim.from_json(claim.to_json()) == claim
