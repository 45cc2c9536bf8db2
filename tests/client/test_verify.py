"""Checking nodes' answers without I/O: the tolerance comparison (literals and properties), commitment checks
(each field that can be wrong), equivocation, and the spot-check draw."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from client.verify import Expected, SpotCheckPolicy, commitment_problem, compare, equivocates, tolerance
from p2pllm import codec
from p2pllm.commitments import Commitment, RegistryDomain, sign_commitment, tensor_hash
from p2pllm.wire import SignedCommitment

KEY = bytes.fromhex("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
OTHER_KEY = bytes.fromhex("5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a")
NODE = Account.from_key(KEY).address
DOMAIN = RegistryDomain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
MODEL = b"\x07" * 32
SESSION = b"\x01" * 32


def test_tolerances_by_dtype() -> None:
    assert tolerance("float32") == 1e-4 and tolerance("bfloat16") == 1e-1
    with pytest.raises(ValueError, match="no tolerance"):
        tolerance("int8")


def test_compare_literals() -> None:
    ref = torch.tensor([[[1.0, -2.0], [10.0, 0.0], [0.5, 0.5]]])
    assert compare(ref, ref.clone(), 1e-4).agree
    close = ref.clone()
    close[0, 1, 0] += 10.0 * 5e-5  # 5e-5 relative to that position's max (10)
    assert compare(ref, close, 1e-4).agree
    far = ref.clone()
    far[0, 2, 1] += 0.5 * 2e-4
    result = compare(ref, far, 1e-4)
    assert not result.agree and result.first_bad == 2 and result.positions == 3
    assert result.max_relative == pytest.approx(2e-4, rel=1e-3)
    assert not compare(ref, ref[:, :2], 1e-4).agree  # a shorter answer never agrees
    nan = ref.clone()
    nan[0, 0, 0] = float("nan")
    assert compare(ref, nan, 1e-4).first_bad == 0


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.floats(1e-3, 1e3), st.integers(0, 2**31 - 1))
def test_compare_properties(positions: int, hidden: int, scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    ref = torch.randn(1, positions, hidden, generator=generator) * scale
    assert compare(ref, ref, 0.0).agree
    noise = torch.randn(1, positions, hidden, generator=generator)
    nudged = ref + noise / noise.abs().amax() * ref.abs().amax(-1, keepdim=True) * 1e-6
    assert compare(ref, nudged, 1e-4).agree  # honest-sized differences pass at any scale
    bad = ref.clone()
    bad[0, positions - 1] += ref[0, positions - 1].abs().amax() * 1e-2 + 1e-3
    assert compare(ref, bad, 1e-4).first_bad == positions - 1


def _signed(key: bytes, output: bytes = b"out", **changes: object) -> tuple[SignedCommitment, Expected]:
    hidden_in, hidden_out = torch.ones(1, 2, 4), torch.full((1, 2, 4), 2.0)
    out_bytes = codec.encode(hidden_out) if output == b"out" else output
    commitment = Commitment(SESSION, 5, 2, tensor_hash(codec.encode(hidden_in)), tensor_hash(out_bytes), MODEL, 0,
                            10, 1_700_000_000)
    commitment = dataclasses.replace(commitment, **changes)
    expected = Expected(NODE, SESSION, 5, 2, MODEL, (0, 10), codec.encode(hidden_in), codec.encode(hidden_out),
                        1_700_000_000)
    return SignedCommitment(commitment, sign_commitment(commitment, DOMAIN, key)), expected


@pytest.mark.parametrize(("changes", "key", "reason"), [
    ({}, KEY, None),
    ({"position": 6}, KEY, "another step"),
    ({"session_id": b"\x02" * 32}, KEY, "another step"),
    ({"tokens": 1}, KEY, "another step"),
    ({"model_id": b"\x08" * 32}, KEY, "another model"),
    ({"layer_end": 9}, KEY, "other layers"),
    ({"input_hash": b"\x00" * 32}, KEY, "input is not"),
    ({"output_hash": b"\x00" * 32}, KEY, "output is not"),
    ({}, OTHER_KEY, "not signed by"),
    ({"issued_at": 1_700_000_000 + 301}, KEY, "too far from now"),
    ({"issued_at": 1_700_000_000 - 301}, KEY, "too far from now"),
])
def test_commitment_problems(changes: dict, key: bytes, reason: str | None) -> None:
    signed, expected = _signed(key, **changes)
    problem = commitment_problem(signed, expected, DOMAIN)
    assert (problem is None) if reason is None else (problem is not None and reason in problem)
    assert commitment_problem(None, expected, DOMAIN) == "no commitment"


def test_equivocation_needs_one_signer_one_step_two_outputs() -> None:
    first, _ = _signed(KEY)
    second, _ = _signed(KEY, output=b"something else")
    assert equivocates(first, second, NODE, DOMAIN)
    assert not equivocates(first, first, NODE, DOMAIN)
    forged, _ = _signed(OTHER_KEY, output=b"something else")
    assert not equivocates(first, forged, NODE, DOMAIN)  # not both the node's
    later, _ = _signed(KEY, output=b"something else", position=6)
    assert not equivocates(first, later, NODE, DOMAIN)  # another step


def test_spot_check_policy_rate_and_reproducibility() -> None:
    draws = [SpotCheckPolicy(0.25, seed=1).draw() for _ in range(1)]
    policy = SpotCheckPolicy(0.25, seed=1)
    sample = [policy.draw() for _ in range(4000)]
    assert 0.22 < sum(sample) / len(sample) < 0.28
    again = SpotCheckPolicy(0.25, seed=1)
    assert [again.draw() for _ in range(4000)] == sample and draws[0] == sample[0]
    assert not any(SpotCheckPolicy(0.0).draw() for _ in range(100))
    assert all(SpotCheckPolicy(1.0).draw() for _ in range(100))
    with pytest.raises(ValueError):
        SpotCheckPolicy(1.5)
