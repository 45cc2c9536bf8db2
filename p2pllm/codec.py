"""Wire codec for tensors: a small fixed header, then raw little-endian data. No pickle, no JSON floats.

Layout (all integers little-endian)::

    offset  size      field
    0       4         magic  b"P2PT"
    4       1         version (1)
    5       1         dtype code (see DTYPE_CODES)
    6       1         ndim (0..8)
    7       1         reserved, must be 0
    8       8*ndim    shape, one uint64 per dimension
    ...     numel*sz  data, C order, little-endian

`decode` validates everything before touching the data: magic, version, dtype, ndim, shape, byte length,
optional size limit, expected dtype and trailing (hidden) dimension, and finiteness of float data. Every
failure is a `CodecError` whose `reason` is a stable machine-readable string and whose `detail` holds data.

Boundary: bytes <-> CPU tensors only; knows nothing about models, sessions, HTTP or payment.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import numpy as np
import torch

MAGIC = b"P2PT"
VERSION = 1
MAX_NDIM = 8
_PREFIX = struct.Struct("<4sBBBB")
_HEADERS = tuple(struct.Struct(f"<4sBBBB{ndim}Q") for ndim in range(MAX_NDIM + 1))

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.int64: 4,
    torch.int32: 5,
}
CODE_DTYPES: dict[int, torch.dtype] = {code: dtype for dtype, code in DTYPE_CODES.items()}
# The wire's little-endian layout of every dtype numpy has (all but bfloat16).
_WIRE_NUMPY: dict[torch.dtype, np.dtype] = {torch.float32: np.dtype("<f4"), torch.float16: np.dtype("<f2"),
                                            torch.int64: np.dtype("<i8"), torch.int32: np.dtype("<i4")}


class CodecError(ValueError):
    """A tensor could not be encoded or a payload failed validation; `reason` says which check."""

    def __init__(self, reason: str, /, **detail: Any) -> None:
        self.reason = reason
        self.detail = detail
        shown = ", ".join(f"{k}={v!r}" for k, v in detail.items())
        super().__init__(f"{reason}" + (f" ({shown})" if shown else ""))


def header_size(ndim: int) -> int:
    """Bytes of header for a tensor of `ndim` dimensions."""
    return _PREFIX.size + 8 * ndim


def encode(tensor: torch.Tensor) -> bytes:
    """A tensor (any device, any layout) -> header + little-endian bytes."""
    code = DTYPE_CODES.get(tensor.dtype)
    if code is None:
        raise CodecError("unsupported_dtype", dtype=str(tensor.dtype))
    if tensor.dim() > MAX_NDIM:
        raise CodecError("too_many_dims", ndim=tensor.dim(), max_ndim=MAX_NDIM)
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    # numpy has no bfloat16: its bytes travel as int16 (same size, same byte order rules).
    array = (data.view(torch.int16) if data.dtype == torch.bfloat16 else data).contiguous().numpy()
    if sys.byteorder != "little":
        array = array.byteswap()
    return b"".join((_HEADERS[data.dim()].pack(MAGIC, VERSION, code, data.dim(), 0, *data.shape), array))


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    max_bytes: int | None = None,
    expected_dtype: torch.dtype | None = None,
    expected_trailing_dim: int | None = None,
    allow_non_finite: bool = False,
) -> torch.Tensor:
    """Header + data -> a CPU tensor, after validating every field (raises `CodecError`)."""
    size = len(payload)
    if max_bytes is not None and size > max_bytes:
        raise CodecError("too_large", size=size, max_bytes=max_bytes)
    if size < _PREFIX.size:
        raise CodecError("truncated_header", size=size, need=_PREFIX.size)
    magic, version, code, ndim, reserved = _PREFIX.unpack_from(payload, 0)
    if magic != MAGIC:
        raise CodecError("bad_magic", got=bytes(magic), expected=MAGIC)
    if version != VERSION:
        raise CodecError("bad_version", got=version, expected=VERSION)
    dtype = CODE_DTYPES.get(code)
    if dtype is None:
        raise CodecError("unknown_dtype", code=code)
    if ndim > MAX_NDIM:
        raise CodecError("too_many_dims", ndim=ndim, max_ndim=MAX_NDIM)
    if reserved != 0:
        raise CodecError("bad_reserved", got=reserved)
    if size < header_size(ndim):
        raise CodecError("truncated_header", size=size, need=header_size(ndim))
    shape = struct.unpack_from(f"<{ndim}Q", payload, _PREFIX.size)
    if expected_dtype is not None and dtype != expected_dtype:
        raise CodecError("dtype_mismatch", got=str(dtype), expected=str(expected_dtype))
    if expected_trailing_dim is not None and (ndim == 0 or shape[-1] != expected_trailing_dim):
        raise CodecError("trailing_dim_mismatch", shape=shape, expected=expected_trailing_dim)
    itemsize = dtype.itemsize
    numel = 1
    for dim in shape:
        numel *= dim
    data_len = size - header_size(ndim)
    if numel * itemsize != data_len:
        raise CodecError("length_mismatch", shape=shape, expected_bytes=numel * itemsize, got_bytes=data_len)
    # A private, writable copy of the data (the payload may be a read-only buffer the caller reuses).
    data = bytearray(memoryview(payload)[header_size(ndim) :])
    if dtype == torch.bfloat16:
        tensor = _from_raw(data, dtype).reshape(shape)
        if not allow_non_finite and not bool(torch.isfinite(tensor).all()):
            raise CodecError("non_finite", count=int((~torch.isfinite(tensor)).sum()), numel=numel)
        return tensor
    # Validated and wrapped through numpy: a few times fewer calls than torch's frombuffer/view/reshape/isfinite
    # for a decode step's tensor, and this runs on every hop, both ways.
    array = np.frombuffer(data, dtype=_WIRE_NUMPY[dtype])
    if array.dtype.kind == "f" and not allow_non_finite:
        finite = np.isfinite(array)
        if not finite.all():
            raise CodecError("non_finite", count=int(array.size - np.count_nonzero(finite)), numel=numel)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(array).view(shape)


# ----------------------------------------------------------------------------------------------- internal


def _from_raw(buffer: bytearray, dtype: torch.dtype) -> torch.Tensor:
    if not buffer:
        return torch.empty(0, dtype=dtype)
    raw = torch.frombuffer(buffer, dtype=torch.uint8)
    if sys.byteorder != "little" and dtype.itemsize > 1:
        raw = raw.view(-1, dtype.itemsize).flip(-1).reshape(-1).contiguous()
    return raw.view(dtype)
