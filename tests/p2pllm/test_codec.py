"""The tensor wire codec round-trips exactly and rejects every malformed payload with a typed error."""

from __future__ import annotations

import struct

import pytest
import torch

from p2pllm.codec import MAGIC, CodecError, decode, encode, header_size

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32]


def payload(code: int = 1, ndim: int = 1, shape: tuple[int, ...] = (2,), data: bytes = b"\0" * 8, **kw: int) -> bytes:
    """A hand-built payload whose fields can be corrupted one at a time."""
    magic = kw.get("magic_bytes", MAGIC)
    version = kw.get("version", 1)
    reserved = kw.get("reserved", 0)
    head = struct.pack("<4sBBBB", magic, version, code, ndim, reserved) + struct.pack(f"<{len(shape)}Q", *shape)
    return head + data


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (1, 1, 576), (2, 3, 4), (1, 7, 5, 1)])
def test_round_trip_is_bit_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    tensor = (torch.randn(shape) * 100).to(dtype)
    out = decode(encode(tensor))
    assert out.dtype == dtype and tuple(out.shape) == shape
    assert torch.equal(out.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8))


def test_header_layout_is_fixed_and_little_endian() -> None:
    tensor = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float32)
    raw = encode(tensor)
    assert raw[:8] == b"P2PT" + bytes([1, 1, 2, 0])
    assert raw[8:24] == struct.pack("<QQ", 1, 3)
    assert raw[24:] == struct.pack("<3f", 1.0, -2.0, 0.5)
    assert len(raw) == header_size(2) + 12


def test_bfloat16_bytes_are_the_top_halves_of_float32() -> None:
    values = torch.tensor([1.0, -3.5, 65280.0], dtype=torch.float32)
    raw = encode(values.to(torch.bfloat16))
    assert raw[5] == 3  # dtype code
    halves = [struct.pack("<f", v)[2:] for v in values.tolist()]
    assert raw[header_size(1) :] == b"".join(halves)


def test_non_contiguous_and_sliced_tensors_encode_their_values() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    for view in (base.transpose(0, 2), base[:, 1:, ::2], base[1:, -1:]):
        assert torch.equal(decode(encode(view)), view.contiguous())


def test_decoded_tensor_owns_its_memory() -> None:
    raw = bytearray(encode(torch.ones(4)))
    out = decode(raw)
    raw[-4:] = struct.pack("<f", 9.0)
    assert out.tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_only_payloads_decode_to_writable_tensors_without_warnings(dtype: torch.dtype) -> None:
    import warnings

    data = bytes(encode(torch.ones(2, 3, dtype=dtype)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a non-writable numpy array
        for source in (data, memoryview(data)):
            out = decode(source)
            out += 1  # raises if the tensor shares a read-only buffer
            assert out.dtype == dtype and torch.equal(out, torch.full((2, 3), 2, dtype=dtype))


def test_tensors_that_require_grad_or_come_from_inference_mode_encode() -> None:
    leaf = torch.ones(3, requires_grad=True)
    with torch.inference_mode():
        inference = torch.full((3,), 2.0)
    assert decode(encode(leaf * 2)).tolist() == [2.0, 2.0, 2.0]
    assert decode(encode(inference)).tolist() == [2.0, 2.0, 2.0]


# ------------------------------------------------------------------------------------- error cases


def reason_of(data: bytes | bytearray, **kwargs: object) -> CodecError:
    with pytest.raises(CodecError) as info:
        decode(data, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_bad_magic() -> None:
    err = reason_of(payload(magic_bytes=b"PK\x03\x04"))
    assert err.reason == "bad_magic" and err.detail["got"] == b"PK\x03\x04"


def test_bad_version() -> None:
    err = reason_of(payload(version=2))
    assert err.reason == "bad_version" and err.detail == {"got": 2, "expected": 1}


def test_unknown_dtype_code() -> None:
    err = reason_of(payload(code=99))
    assert err.reason == "unknown_dtype" and err.detail == {"code": 99}


def test_reserved_byte_must_be_zero() -> None:
    assert reason_of(payload(reserved=1)).reason == "bad_reserved"


def test_too_many_dims() -> None:
    err = reason_of(payload(ndim=9, shape=(1,) * 9, data=b"\0" * 4))
    assert err.reason == "too_many_dims" and err.detail["ndim"] == 9


@pytest.mark.parametrize("cut", [0, 3, 7])
def test_truncated_prefix(cut: int) -> None:
    err = reason_of(payload()[:cut])
    assert err.reason == "truncated_header" and err.detail == {"size": cut, "need": 8}


def test_truncated_shape() -> None:
    err = reason_of(payload(ndim=3, shape=(1,), data=b""))
    assert err.reason == "truncated_header" and err.detail["need"] == header_size(3)


@pytest.mark.parametrize("data_len", [0, 7, 9, 16])
def test_byte_length_must_match_shape(data_len: int) -> None:
    err = reason_of(payload(shape=(2,), data=b"\0" * data_len))
    assert err.reason == "length_mismatch"
    assert err.detail == {"shape": (2,), "expected_bytes": 8, "got_bytes": data_len}


def test_huge_shape_cannot_allocate() -> None:
    err = reason_of(payload(ndim=2, shape=(2**40, 2**40), data=b"\0" * 8))
    assert err.reason == "length_mismatch"


def test_max_bytes() -> None:
    raw = encode(torch.zeros(1, 4, 8))
    assert decode(raw, max_bytes=len(raw)).shape == (1, 4, 8)
    err = reason_of(raw, max_bytes=len(raw) - 1)
    assert err.reason == "too_large" and err.detail == {"size": len(raw), "max_bytes": len(raw) - 1}


def test_expected_trailing_dim() -> None:
    raw = encode(torch.zeros(1, 4, 8))
    assert decode(raw, expected_trailing_dim=8).shape == (1, 4, 8)
    err = reason_of(raw, expected_trailing_dim=576)
    assert err.reason == "trailing_dim_mismatch" and err.detail == {"shape": (1, 4, 8), "expected": 576}
    assert reason_of(encode(torch.tensor(1.0)), expected_trailing_dim=1).reason == "trailing_dim_mismatch"


def test_expected_dtype() -> None:
    raw = encode(torch.zeros(2, dtype=torch.bfloat16))
    assert decode(raw, expected_dtype=torch.bfloat16).dtype == torch.bfloat16
    err = reason_of(raw, expected_dtype=torch.float32)
    assert err.reason == "dtype_mismatch" and err.detail == {
        "got": "torch.bfloat16",
        "expected": "torch.float32",
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_rejected(dtype: torch.dtype, bad: float) -> None:
    tensor = torch.tensor([[1.0, bad, 2.0, bad]], dtype=dtype)
    err = reason_of(encode(tensor))
    assert err.reason == "non_finite" and err.detail == {"count": 2, "numel": 4}
    assert decode(encode(tensor), allow_non_finite=True).isfinite().sum() == 2


def test_float16_overflow_in_payload_is_caught() -> None:
    raw = bytearray(encode(torch.zeros(3, dtype=torch.float16)))
    raw[-2:] = b"\x00\x7c"  # +inf in IEEE half precision, little-endian
    assert reason_of(raw).reason == "non_finite"


def test_integers_are_never_checked_for_finiteness() -> None:
    positions = torch.arange(5, dtype=torch.int64)
    assert torch.equal(decode(encode(positions)), positions)


def test_unsupported_dtypes_cannot_be_encoded() -> None:
    for tensor in (
        torch.zeros(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.bool),
        torch.zeros(2, dtype=torch.uint8),
    ):
        with pytest.raises(CodecError) as info:
            encode(tensor)
        assert info.value.reason == "unsupported_dtype"
    with pytest.raises(CodecError) as info:
        encode(torch.zeros((1,) * 9))
    assert info.value.reason == "too_many_dims"


def test_codec_error_is_a_value_error_with_readable_text() -> None:
    err = reason_of(payload(version=7))
    assert isinstance(err, ValueError)
    assert "bad_version" in str(err) and "7" in str(err)
