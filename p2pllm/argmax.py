"""The exact argmax of a linear map (an LM head) with most of the rows read in half precision: a greedy client
reads its head's weights once per token, and on a CPU that read is most of the head's cost (SmolLM2: 49,152 ×
576 fp32 = 113 MB, ~10 ms on one core; the fp16 copy takes ~3.2 ms).

`ExactArgmax(weight)(x)` returns what `int(torch.nn.functional.linear(x, weight).argmax())` returns, the lowest
index among equal maxima included:

1. Prefilter: y16 = fp16(x) · fp16(W)ᵀ. Row j's error against the exact x·w_j is bounded by
   `b_j = 2⁻⁸ ‖x‖ ‖w_j‖ + 2⁻¹⁰ |y16_j|`. Rounding x and w_j to fp16 costs at most 2·2⁻¹¹ ‖x‖‖w_j‖
   (Cauchy–Schwarz), an fp32 accumulation at most 576·2⁻²⁴ ‖x‖‖w_j‖ at this width, and the fp16 result 2⁻¹¹
   |y16_j|, so the bound has a margin of about 2 (`tests/p2pllm/test_argmax.py` measures the observed error
   against it).
2. Candidates: every row whose upper bound reaches the largest lower bound (`y16_j + b_j ≥ max(y16 − b)`); no
   other row can be the maximum.
3. The candidates' rows are computed in fp32, as the full product computes them; the largest wins, the lowest
   index first. If the best two are closer than twice what a different summation order could change one of
   them by (`2.2 · in · 2⁻²⁴ ‖x‖ max‖w_j‖`), or the prefilter overflowed, the full product decides instead.

The weight must be fp32 (the head of a client that decodes in fp32 on CPU; elsewhere the full product is cheap
or already in half precision).

Boundary: tensors only; one input row at a time; no model, tokenizer or I/O.
"""

from __future__ import annotations

import torch

PREFILTER_REL = 2.0 ** -8  # × ‖x‖‖w_j‖: input rounding and accumulation
RESULT_REL = 2.0 ** -10  # × |y16_j|: rounding of the fp16 result
FP16_MAX = 65504.0


class ExactArgmax:
    """Exact argmax of `x @ weight.T` for one row `x` (shape `(in,)` or `(1, in)`), via an fp16 prefilter."""

    def __init__(self, weight: torch.Tensor) -> None:
        if weight.dim() != 2 or weight.dtype != torch.float32:
            raise ValueError(f"weight must be 2-D (out, in) fp32, got {tuple(weight.shape)} {weight.dtype}")
        self.weight = weight
        self.half = weight.detach().to(torch.float16)
        self.row_norms = weight.detach().float().norm(dim=1)
        self.max_row_norm = float(self.row_norms.max()) if weight.shape[0] else 0.0
        self.tie_rel = 2.2 * weight.shape[1] * 2.0 ** -24
        self.fallbacks = 0  # calls the full product decided (overflow or a near tie)

    def __call__(self, x: torch.Tensor) -> int:
        row = x.reshape(-1)
        if row.shape[0] != self.weight.shape[1]:
            raise ValueError(f"x has {row.shape[0]} features, the weight {self.weight.shape[1]}")
        if self.weight.shape[0] == 1:
            return 0
        x_norm = float(row.float().norm())
        if not x_norm < FP16_MAX / 2 or not torch.isfinite(row).all():
            return self._full(row)
        approx = torch.nn.functional.linear(row.to(torch.float16), self.half).float()
        if not torch.isfinite(approx).all():
            return self._full(row)
        bound = PREFILTER_REL * x_norm * self.row_norms + RESULT_REL * approx.abs()
        floor = (approx - bound).max()
        candidates = torch.nonzero(approx + bound >= floor).reshape(-1)  # ascending
        exact = torch.nn.functional.linear(row.float(), self.weight.index_select(0, candidates))
        if candidates.shape[0] > 1:
            top = torch.topk(exact.float(), 2).values
            if float(top[0] - top[1]) <= self.tie_rel * x_norm * self.max_row_norm:
                return self._full(row)
        return int(candidates[int(exact.argmax())])

    def _full(self, row: torch.Tensor) -> int:
        self.fallbacks += 1
        return int(torch.nn.functional.linear(row.float(), self.weight).argmax())
