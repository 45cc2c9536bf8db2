"""Checking what nodes answer, with no I/O: commitments against the bytes that crossed the wire, outputs of two
nodes against each other within a tolerance, equivocation, and which steps get spot-checked.

Tolerance. Two honest nodes computing the same hop's outputs differ by floating-point reassociation only: one
decodes token by token (cached, maybe batched with other sessions), the checker runs all positions as one
prefill. Per position, the relative difference is max|a − b| / max|reference| over the hidden vector. Measured
on SmolLM2-135M, all three 10-layer shards, 24 positions (`benchmarks/verification.py` repeats it at scale):
float32 on CPU ≤ 1.0e-6 (batched vs solo decode: 1.1e-6); bfloat16 ≤ 1.4e-2. The tolerances below are about
100× (float32) and 7× (bfloat16) those figures. A float32 node checked against a bfloat16 one differs by up to
0.28 (first layers' outliers), so a check only ever compares nodes of the same dtype (the market already routes
one dtype); CUDA kernels were not measured (no GPU was lent), so a CPU/CUDA pair uses the same dtype bound."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from p2pllm.commitments import Commitment, RegistryDomain, is_signed_by, tensor_hash
from p2pllm.wire import SignedCommitment

TOLERANCES = {"float32": 1e-4, "bfloat16": 1e-1, "float16": 1e-1}
MAX_CLOCK_SKEW_S = 300  # a commitment dated further from the client's clock could not serve as a proof in time
DEFAULT_VERIFY_RATE = 0.02


def tolerance(dtype: str) -> float:
    """Largest per-position relative difference two honest nodes of this dtype may show."""
    try:
        return TOLERANCES[dtype]
    except KeyError as exc:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {sorted(TOLERANCES)}") from exc


@dataclass(frozen=True)
class Comparison:
    """How far `candidate` is from `reference` per position; `first_bad` is the first position beyond the
    tolerance (None when they agree)."""

    max_relative: float
    first_bad: int | None
    positions: int

    @property
    def agree(self) -> bool:
        return self.first_bad is None


def compare(reference: torch.Tensor, candidate: torch.Tensor, rel_tol: float) -> Comparison:
    """Compare (1, T, hidden) outputs position by position; shapes must match."""
    if reference.shape != candidate.shape:
        return Comparison(float("inf"), 0, int(reference.shape[1]) if reference.dim() == 3 else 0)
    ref = reference.float()
    diff = (candidate.float() - ref).abs().amax(-1)
    scale = ref.abs().amax(-1).clamp_min(torch.finfo(torch.float32).tiny)
    relative = (diff / scale).reshape(-1)
    relative = torch.where(torch.isfinite(relative), relative, torch.full_like(relative, float("inf")))
    bad = (relative > rel_tol).nonzero()
    return Comparison(float(relative.max()) if relative.numel() else 0.0,
                      int(bad[0]) if bad.numel() else None, int(relative.numel()))


@dataclass(frozen=True)
class Expected:
    """What a hop's commitment for one step must say."""

    node: str
    session_id: bytes
    position: int
    tokens: int
    model_id: bytes
    layers: tuple[int, int]
    input_encoded: bytes
    output_encoded: bytes
    now: int | None = None  # the client's clock (None: not checked)


def commitment_problem(signed: SignedCommitment | None, expected: Expected, domain: RegistryDomain) -> str | None:
    """Why `signed` is not the hop's valid commitment for the step, or None when it is."""
    if signed is None:
        return "no commitment"
    c = signed.commitment
    checks = (
        ((c.session_id, c.position, c.tokens) == (expected.session_id, expected.position, expected.tokens),
         "commitment names another step"),
        (c.model_id == expected.model_id, "commitment names another model"),
        ((c.layer_start, c.layer_end) == expected.layers, "commitment names other layers"),
        (c.input_hash == tensor_hash(expected.input_encoded), "commitment's input is not what the hop was sent"),
        (c.output_hash == tensor_hash(expected.output_encoded), "commitment's output is not what the hop returned"),
        (expected.now is None or abs(c.issued_at - expected.now) <= MAX_CLOCK_SKEW_S,
         "commitment dated too far from now to be a proof"),
        (is_signed_by(c, domain, signed.signature, expected.node), "commitment not signed by the hop's node"),
    )
    for ok, reason in checks:
        if not ok:
            return reason
    return None


def equivocates(a: SignedCommitment, b: SignedCommitment, node: str, domain: RegistryDomain) -> bool:
    """Whether `a` and `b` are both signed by `node` for the same step with different outputs: a proof the
    registry slashes."""
    return (a.commitment.conflicts_with(b.commitment) and is_signed_by(a.commitment, domain, a.signature, node)
            and is_signed_by(b.commitment, domain, b.signature, node))


class SpotCheckPolicy:
    """After each step, each hop is checked with probability `rate` (seeded for reproducibility)."""

    def __init__(self, rate: float, seed: int | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"verify rate must be in [0, 1], got {rate}")
        self.rate = rate
        self._rng = random.Random(seed)

    def draw(self) -> bool:
        return self.rate > 0 and self._rng.random() < self.rate


__all__ = ["DEFAULT_VERIFY_RATE", "Commitment", "Comparison", "Expected", "SpotCheckPolicy", "commitment_problem",
           "compare", "equivocates", "tolerance"]
