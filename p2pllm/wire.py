"""The wire protocol between clients and nodes, and between nodes: every message is a typed, versioned dataclass
with one encoder and one parser. Nothing else in the code builds or reads a message by hand.

Streams (one WebSocket per client, node and session, and one per relaying node and next session) carry binary
frames::

    offset  size  field
    0       2     magic b"PW"
    2       1     wire version (WIRE_VERSION)
    3       1     kind (KINDS)
    4       4     meta length m, little-endian
    8       m     meta: UTF-8 JSON object of the message's fields
    8+m     ...   payload: a hidden-state tensor in the `p2pllm.codec` format (steps and results), else empty

Every `StepResult` carries the node's `SignedCommitment` (input hash → output hash, see `p2pllm.commitments`);
a relayed `Step` carries the relaying node's commitment for the hidden states it pushes, and the next node
returns it to the client in its result (`upstream`), so the client holds the relaying node's signature on what
the next node actually received.

Plain HTTP answers `GET /info` with `NodeInfo` as JSON. Receipts travel as `ReceiptClaim`: the fields a client
signs that the receiving node does not already know (it knows the client, itself and the session).

`parse` validates every field and raises `WireError(code, **detail)` with a stable code; a node answers a bad
frame with a `StepError` carrying that code. Knows nothing about sockets, sessions, payment policy or models.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from p2pllm import codec
from p2pllm.commitments import Commitment
from p2pllm.receipts import SIGNATURE_BYTES, Receipt

WIRE_VERSION = 2
MAGIC = b"PW"
_HEADER = struct.Struct("<2sBBI")
HEADER_BYTES = _HEADER.size
MAX_META_BYTES = 64 * 1024

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HEX = re.compile(r"^0x(?:[0-9a-fA-F]{2})*$")
_UINT64 = 2**64
_UINT256 = 2**256


class WireError(ValueError):
    """A frame or message that does not follow the protocol; `code` is stable, `detail` holds data."""

    def __init__(self, code: str, /, **detail: Any) -> None:
        self.code = code
        self.detail = detail
        super().__init__(code + (f" ({', '.join(f'{k}={v!r}' for k, v in detail.items())})" if detail else ""))


# --------------------------------------------------------------------------------------------- field checks


def _field(meta: dict[str, Any], name: str) -> Any:
    if name not in meta:
        raise WireError("missing_field", field=name)
    return meta[name]


def _int(meta: dict[str, Any], name: str, bound: int = _UINT64) -> int:
    """An unsigned integer below `bound`; JSON numbers or decimal strings (for amounts past 2^53)."""
    value = _field(meta, name)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise WireError("bad_field", field=name, reason="not an integer")
    try:
        number = int(value)
    except ValueError as exc:
        raise WireError("bad_field", field=name, reason="not an integer") from exc
    if not 0 <= number < bound:
        raise WireError("bad_field", field=name, reason=f"out of range [0, {bound})")
    return number


def _str(meta: dict[str, Any], name: str, max_len: int = 512) -> str:
    value = _field(meta, name)
    if not isinstance(value, str) or len(value) > max_len:
        raise WireError("bad_field", field=name, reason=f"not a string of at most {max_len} characters")
    return value


def _address(meta: dict[str, Any], name: str) -> str:
    value = _str(meta, name)
    if not _ADDRESS.match(value):
        raise WireError("bad_field", field=name, reason="not a 0x-prefixed 20-byte address")
    return value


def _bytes(meta: dict[str, Any], name: str, size: int) -> bytes:
    value = _str(meta, name, 2 + 2 * size)
    if not _HEX.match(value) or len(value) != 2 + 2 * size:
        raise WireError("bad_field", field=name, reason=f"not 0x-hex of {size} bytes")
    return bytes.fromhex(value[2:])


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _float(meta: dict[str, Any], name: str) -> float:
    value = _field(meta, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0:
        raise WireError("bad_field", field=name, reason="not a non-negative number")
    return float(value)


def _dict(meta: dict[str, Any], name: str) -> dict[str, Any]:
    value = _field(meta, name)
    if not isinstance(value, dict):
        raise WireError("bad_field", field=name, reason="not an object")
    return value


# ------------------------------------------------------------------------------------------------ receipts


@dataclass(frozen=True)
class ReceiptClaim:
    """What a client signed for one hop: cumulative `amount_wei` for `tokens` tokens of the session, valid until
    `deadline`. The node it goes to completes it into a `Receipt` with the client, itself and the session."""

    tokens: int
    amount_wei: int
    deadline: int
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "amount_wei": str(self.amount_wei), "deadline": self.deadline,
                "signature": _hex(self.signature)}

    @classmethod
    def from_json(cls, data: Any) -> ReceiptClaim:
        if not isinstance(data, dict):
            raise WireError("bad_receipt", reason="not an object")
        try:
            return cls(_int(data, "tokens"), _int(data, "amount_wei", _UINT256), _int(data, "deadline"),
                       _bytes(data, "signature", SIGNATURE_BYTES))
        except WireError as exc:
            raise WireError("bad_receipt", **exc.detail) from exc

    def receipt(self, client: str, node: str, session_id: bytes) -> Receipt:
        return Receipt(client, node, session_id, self.tokens, self.amount_wei, self.deadline)


@dataclass(frozen=True)
class SignedCommitment:
    """A node's commitment to one step's output and its signature (verified by whoever relies on it)."""

    commitment: Commitment
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        c = self.commitment
        return {"session_id": _hex(c.session_id), "position": c.position, "tokens": c.tokens,
                "input_hash": _hex(c.input_hash), "output_hash": _hex(c.output_hash), "model_id": _hex(c.model_id),
                "layer_start": c.layer_start, "layer_end": c.layer_end, "issued_at": c.issued_at,
                "signature": _hex(self.signature)}

    @classmethod
    def from_json(cls, data: Any) -> SignedCommitment:
        if not isinstance(data, dict):
            raise WireError("bad_commitment", reason="not an object")
        try:
            commitment = Commitment(_bytes(data, "session_id", 32), _int(data, "position"),
                                    _int(data, "tokens", 2**32), _bytes(data, "input_hash", 32),
                                    _bytes(data, "output_hash", 32), _bytes(data, "model_id", 32),
                                    _int(data, "layer_start", 2**16), _int(data, "layer_end", 2**16),
                                    _int(data, "issued_at"))
            return cls(commitment, _bytes(data, "signature", SIGNATURE_BYTES))
        except WireError as exc:
            raise WireError("bad_commitment", **exc.detail) from exc


def _optional_commitment(meta: dict[str, Any], name: str) -> SignedCommitment | None:
    raw = meta.get(name)
    return None if raw is None else SignedCommitment.from_json(raw)


# ------------------------------------------------------------------------------------------------ messages


@dataclass(frozen=True)
class OpenSession:
    """The first frame of a client's stream: open `session_id` on `node` for at most `max_length` tokens of
    layers [layer_start, layer_end), signed by `client` (EIP-712 `SessionOpen`, see `p2pllm.receipts`)."""

    KIND: ClassVar[int] = 1
    session_id: bytes
    client: str
    node: str
    max_length: int
    layer_start: int
    layer_end: int
    deadline: int
    signature: bytes

    def meta(self) -> dict[str, Any]:
        return {"session_id": _hex(self.session_id), "client": self.client, "node": self.node,
                "max_length": self.max_length, "layer_start": self.layer_start, "layer_end": self.layer_end,
                "deadline": self.deadline, "signature": _hex(self.signature)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], payload: bytes) -> OpenSession:
        return cls(_bytes(meta, "session_id", 32), _address(meta, "client"), _address(meta, "node"),
                   _int(meta, "max_length", 2**32), _int(meta, "layer_start", 2**16), _int(meta, "layer_end", 2**16),
                   _int(meta, "deadline"), _bytes(meta, "signature", SIGNATURE_BYTES))


@dataclass(frozen=True)
class SessionOpened:
    """The node's answer to `OpenSession`. `client_unpaid_wei`: what the client owes this node unpaid over all
    its sessions; the client's allocation for this node must cover it besides what this session will cost."""

    KIND: ClassVar[int] = 2
    session_id: bytes
    max_length: int
    free_tokens: int
    client_unpaid_wei: int

    def meta(self) -> dict[str, Any]:
        return {"session_id": _hex(self.session_id), "max_length": self.max_length,
                "free_tokens": self.free_tokens, "client_unpaid_wei": str(self.client_unpaid_wei)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], payload: bytes) -> SessionOpened:
        return cls(_bytes(meta, "session_id", 32), _int(meta, "max_length", 2**32), _int(meta, "free_tokens"),
                   _int(meta, "client_unpaid_wei", _UINT256))


@dataclass(frozen=True)
class NextHop:
    """Where a relaying node pushes its output: the next node's stream endpoint, its session, and the receipt
    the client signed for it (which the relaying node passes on untouched)."""

    endpoint: str
    session_id: bytes
    receipt: ReceiptClaim

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "session_id": _hex(self.session_id), "receipt": self.receipt.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> NextHop:
        if not isinstance(data, dict):
            raise WireError("bad_field", field="relay", reason="not a list of objects")
        return cls(_str(data, "endpoint"), _bytes(data, "session_id", 32), ReceiptClaim.from_json(data.get("receipt")))


@dataclass(frozen=True)
class Step:
    """Hidden states (1, tokens, hidden) at positions [position, position + tokens) of a session, paid by
    `receipt` (None only when a relaying node dropped it). After computing, the node pushes its output to
    `relay[0]` with `relay[1:]`, and sends the client a copy (`StepResult`); with no relay the result is final.
    `upstream`: on a relayed step, the relaying node's signed commitment for `hidden`. `wire`: `hidden`'s
    encoding when already made (see `with_wire`)."""

    KIND: ClassVar[int] = 3
    session_id: bytes
    position: int
    receipt: ReceiptClaim | None
    hidden: torch.Tensor
    relay: tuple[NextHop, ...] = ()
    upstream: SignedCommitment | None = None
    wire: bytes | None = field(default=None, init=False, compare=False, repr=False)  # see `with_wire`

    def meta(self) -> dict[str, Any]:
        return {"session_id": _hex(self.session_id), "position": self.position,
                "receipt": self.receipt.to_json() if self.receipt is not None else None,
                "relay": [hop.to_json() for hop in self.relay],
                "upstream": self.upstream.to_json() if self.upstream is not None else None}

    def payload(self) -> bytes:
        """`hidden`'s wire encoding: the kept one (`with_wire`), else made now."""
        return self.wire if self.wire is not None else codec.encode(self.hidden)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], payload: bytes, **limits: Any) -> Step:
        relay = _field(meta, "relay")
        if not isinstance(relay, list) or len(relay) > 64:
            raise WireError("bad_field", field="relay", reason="not a list of at most 64 hops")
        raw_receipt = _field(meta, "receipt")
        receipt = None if raw_receipt is None else ReceiptClaim.from_json(raw_receipt)
        return cls(_bytes(meta, "session_id", 32), _int(meta, "position"), receipt, _tensor(payload, **limits),
                   tuple(NextHop.from_json(hop) for hop in relay), _optional_commitment(meta, "upstream"))


@dataclass(frozen=True)
class StepResult:
    """A node's output for positions [position, position + tokens): the final hidden states when `final`, else a
    copy of what it relayed (what the client keeps to replay the next hop on failover). `commitment`: the node's
    signed commitment for this step (every node sends one); `upstream`: the commitment the relaying node sent
    with this step's input, passed back untouched. `wire`: as `Step.wire`; `payload` as `Step.payload`."""

    KIND: ClassVar[int] = 4
    session_id: bytes
    position: int
    final: bool
    compute_ms: float
    hidden: torch.Tensor
    commitment: SignedCommitment | None = None
    upstream: SignedCommitment | None = None
    wire: bytes | None = field(default=None, init=False, compare=False, repr=False)  # see `with_wire`

    def meta(self) -> dict[str, Any]:
        return {"session_id": _hex(self.session_id), "position": self.position, "final": self.final,
                "compute_ms": round(self.compute_ms, 3),
                "commitment": self.commitment.to_json() if self.commitment is not None else None,
                "upstream": self.upstream.to_json() if self.upstream is not None else None}

    def payload(self) -> bytes:
        return self.wire if self.wire is not None else codec.encode(self.hidden)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], payload: bytes, **limits: Any) -> StepResult:
        final = _field(meta, "final")
        if not isinstance(final, bool):
            raise WireError("bad_field", field="final", reason="not a boolean")
        return cls(_bytes(meta, "session_id", 32), _int(meta, "position"), final, _float(meta, "compute_ms"),
                   _tensor(payload, **limits), _optional_commitment(meta, "commitment"),
                   _optional_commitment(meta, "upstream"))


@dataclass(frozen=True)
class StepError:
    """Why a node did not serve a frame: a stable `code` and its data. `node` is the reporting node's address,
    `position` the step's first position (None when the frame could not be read), `relayed` whether the step
    came from a relaying node rather than the client, and `retry_after_s` when waiting helps."""

    KIND: ClassVar[int] = 5
    code: str
    detail: dict[str, Any] = field(default_factory=dict)
    node: str = ""
    session_id: bytes = b""
    position: int | None = None
    relayed: bool = False
    retry_after_s: float | None = None

    def meta(self) -> dict[str, Any]:
        return {"code": self.code, "detail": json.loads(json.dumps(self.detail, default=str)), "node": self.node,
                "session_id": _hex(self.session_id), "position": self.position, "relayed": self.relayed,
                "retry_after_s": self.retry_after_s}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], payload: bytes) -> StepError:
        position = meta.get("position")
        retry = meta.get("retry_after_s")
        relayed = _field(meta, "relayed")
        if not isinstance(relayed, bool):
            raise WireError("bad_field", field="relayed", reason="not a boolean")
        session = _str(meta, "session_id", 66)
        return cls(_str(meta, "code", 64), _dict(meta, "detail"), _str(meta, "node", 42),
                   _bytes(meta, "session_id", 32) if session != "0x" else b"",
                   None if position is None else _int(meta, "position"), relayed,
                   None if retry is None else _float(meta, "retry_after_s"))

    def __str__(self) -> str:
        where = f" at position {self.position}" if self.position is not None else ""
        return f"{self.code}{where}: {self.detail}"


@dataclass(frozen=True)
class Ping:
    """Ask a node how far a session got (the client probes a hop whose result is late)."""

    KIND: ClassVar[int] = 6
    session_id: bytes

    def meta(self) -> dict[str, Any]:
        return {"session_id": _hex(self.session_id)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], payload: bytes) -> Ping:
        return cls(_bytes(meta, "session_id", 32))


@dataclass(frozen=True)
class Pong:
    """A session's cached length: the position its next step must start at."""

    KIND: ClassVar[int] = 7
    session_id: bytes
    length: int

    def meta(self) -> dict[str, Any]:
        return {"session_id": _hex(self.session_id), "length": self.length}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], payload: bytes) -> Pong:
        return cls(_bytes(meta, "session_id", 32), _int(meta, "length"))


TensorMessage = TypeVar("TensorMessage", Step, StepResult)


def with_wire(message: TensorMessage, encoded: bytes) -> TensorMessage:
    """`message` keeping `encoded`, which must be exactly `codec.encode(message.hidden)`, as its tensor's wire
    encoding: `encode` sends it as is, and a node hashes it for a commitment without encoding the tensor again.
    `parse` keeps a frame's payload this way (a valid payload is canonical: the header follows from dtype and
    shape, the data is the raw bytes). `dataclasses.replace` drops it, so a changed copy is encoded afresh."""
    object.__setattr__(message, "wire", encoded)
    return message


Message = OpenSession | SessionOpened | Step | StepResult | StepError | Ping | Pong
KINDS: dict[int, type] = {m.KIND: m for m in (OpenSession, SessionOpened, Step, StepResult, StepError, Ping, Pong)}
_TENSOR_KINDS = (Step, StepResult)


def _tensor(payload: bytes, *, max_bytes: int | None = None, dtype: torch.dtype | None = None,
            hidden_size: int | None = None) -> torch.Tensor:
    try:
        tensor = codec.decode(payload, max_bytes=max_bytes, expected_dtype=dtype, expected_trailing_dim=hidden_size)
    except codec.CodecError as exc:
        raise WireError(exc.reason, **exc.detail) from exc
    if tensor.dim() != 3 or tensor.shape[0] != 1 or tensor.shape[1] < 1:
        raise WireError("shape_mismatch", expected=[1, "tokens", hidden_size or "hidden"], got=list(tensor.shape))
    return tensor


# --------------------------------------------------------------------------------------------- framing


def encode(message: Message) -> bytes:
    """A message as one binary frame."""
    meta = json.dumps(message.meta(), separators=(",", ":")).encode()
    payload = message.payload() if isinstance(message, _TENSOR_KINDS) else b""
    return b"".join((_HEADER.pack(MAGIC, WIRE_VERSION, message.KIND, len(meta)), meta, payload))


def parse(frame: bytes | bytearray | memoryview, *, max_bytes: int | None = None, dtype: torch.dtype | None = None,
          hidden_size: int | None = None) -> Message:
    """One binary frame -> its message, every field validated; tensors are checked against `dtype` and
    `hidden_size` and the whole frame against `max_bytes` when given. Raises `WireError`."""
    size = len(frame)
    if max_bytes is not None and size > max_bytes:
        raise WireError("frame_too_large", size=size, max_bytes=max_bytes)
    if size < HEADER_BYTES:
        raise WireError("bad_frame", reason="shorter than the frame header", size=size)
    magic, version, kind, meta_len = _HEADER.unpack_from(frame, 0)
    if magic != MAGIC:
        raise WireError("bad_frame", reason="bad magic", got=bytes(magic).hex())
    if version != WIRE_VERSION:
        raise WireError("unsupported_version", got=version, supported=WIRE_VERSION)
    cls = KINDS.get(kind)
    if cls is None:
        raise WireError("bad_frame", reason="unknown message kind", kind=kind)
    if meta_len > MAX_META_BYTES or HEADER_BYTES + meta_len > size:
        raise WireError("bad_frame", reason="meta length beyond the frame", meta_len=meta_len, size=size)
    view = memoryview(frame)
    try:
        meta = json.loads(bytes(view[HEADER_BYTES:HEADER_BYTES + meta_len]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError("bad_frame", reason=f"meta is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise WireError("bad_frame", reason="meta is not a JSON object")
    payload = view[HEADER_BYTES + meta_len:]
    if cls in _TENSOR_KINDS:
        return with_wire(cls.from_meta(meta, payload, max_bytes=max_bytes, dtype=dtype, hidden_size=hidden_size),
                         bytes(payload))
    if len(payload):
        raise WireError("bad_frame", reason="unexpected payload", kind=kind, size=len(payload))
    return cls.from_meta(meta, payload)


# ---------------------------------------------------------------------------------------------- node info


@dataclass(frozen=True)
class NodeInfo:
    """What `GET /info` answers: who the node is, what it serves, on which chain and escrow, at what terms, and
    how busy it is."""

    VERSION: ClassVar[int] = 1
    node: str
    model: str
    model_id: bytes
    layer_start: int
    layer_end: int
    num_layers: int
    hidden_size: int
    dtype: str
    device: str
    compute_ms_per_layer: float
    chain_id: int
    escrow: str
    registry: str
    offer_id: int
    max_receipt_validity_s: int
    thaw_period_s: int
    price_wei_per_token: int
    credit_wei: int
    min_session_reserve_wei: int
    capacity_tokens: int
    free_tokens: int
    stream_path: str = "/stream"
    active_sessions: int = 0
    queued_steps: int = 0  # waiting for, or in, the compute worker
    max_batch: int = 1  # most decode steps of different sessions run as one forward

    def to_json(self) -> dict[str, Any]:
        return {"version": self.VERSION, "node": self.node, "model": self.model, "model_id": _hex(self.model_id),
                "layer_start": self.layer_start, "layer_end": self.layer_end, "num_layers": self.num_layers,
                "hidden_size": self.hidden_size, "dtype": self.dtype, "device": self.device,
                "compute_ms_per_layer": self.compute_ms_per_layer, "chain_id": self.chain_id, "escrow": self.escrow,
                "registry": self.registry, "offer_id": self.offer_id,
                "max_receipt_validity_s": self.max_receipt_validity_s, "thaw_period_s": self.thaw_period_s,
                "price_wei_per_token": str(self.price_wei_per_token), "credit_wei": str(self.credit_wei),
                "min_session_reserve_wei": str(self.min_session_reserve_wei),
                "capacity_tokens": self.capacity_tokens, "free_tokens": self.free_tokens,
                "stream_path": self.stream_path, "active_sessions": self.active_sessions,
                "queued_steps": self.queued_steps, "max_batch": self.max_batch}

    @classmethod
    def from_json(cls, data: Any) -> NodeInfo:
        if not isinstance(data, dict):
            raise WireError("bad_info", reason="not a JSON object")
        version = data.get("version")
        if version != cls.VERSION:
            raise WireError("unsupported_version", got=version, supported=cls.VERSION)
        return cls(
            _address(data, "node"), _str(data, "model"), _bytes(data, "model_id", 32), _int(data, "layer_start"),
            _int(data, "layer_end"), _int(data, "num_layers"), _int(data, "hidden_size"), _str(data, "dtype", 16),
            _str(data, "device", 32), _float(data, "compute_ms_per_layer"), _int(data, "chain_id", _UINT256),
            _address(data, "escrow"), _address(data, "registry"), _int(data, "offer_id", _UINT256),
            _int(data, "max_receipt_validity_s"), _int(data, "thaw_period_s"),
            _int(data, "price_wei_per_token", _UINT256), _int(data, "credit_wei", _UINT256),
            _int(data, "min_session_reserve_wei", _UINT256), _int(data, "capacity_tokens"),
            _int(data, "free_tokens"), _str(data, "stream_path", 64),
            # Load fields came later within version 1: a node without them reports no load and no batching.
            _int(data, "active_sessions") if "active_sessions" in data else 0,
            _int(data, "queued_steps") if "queued_steps" in data else 0,
            _int(data, "max_batch") if "max_batch" in data else 1)

    def stream_url(self, endpoint: str) -> str:
        """The WebSocket URL of this node's stream at `endpoint` (http -> ws, https -> wss)."""
        return stream_url(endpoint, self.stream_path)


def stream_url(endpoint: str, path: str = "/stream") -> str:
    """`http://host:port` -> `ws://host:port/stream` (`https` -> `wss`)."""
    if endpoint.startswith("https://"):
        return "wss://" + endpoint[len("https://"):].rstrip("/") + path
    if endpoint.startswith("http://"):
        return "ws://" + endpoint[len("http://"):].rstrip("/") + path
    raise WireError("bad_endpoint", endpoint=endpoint, reason="not an http:// or https:// URL")
