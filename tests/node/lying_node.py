"""A test fixture, not a product flag: `p2pnode` that perturbs its output hidden states on a fraction of its
steps (and signs commitments for what it sends, as a consistent liar would). Configured by environment:
P2PLLM_LIE_FRACTION (default 1.0), P2PLLM_LIE_SCALE (noise relative to the output's largest magnitude, default
1e-3), P2PLLM_LIE_SEED (default 0). Run as `python -m tests.node.lying_node serve ...` with `p2pnode serve`'s
arguments."""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import torch

from node.cli import main
from node.scheduler import Scheduler

FRACTION = float(os.environ.get("P2PLLM_LIE_FRACTION", "1.0"))
SCALE = float(os.environ.get("P2PLLM_LIE_SCALE", "1e-3"))
_rng = random.Random(int(os.environ.get("P2PLLM_LIE_SEED", "0")))
_run = Scheduler.run


async def _lying_run(self: Scheduler, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, float]:
    out, compute_s = await _run(self, *args, **kwargs)
    if _rng.random() < FRACTION:
        noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(_rng.randrange(2**31)))
        out = out + (noise * SCALE * out.abs().amax()).to(out.dtype)
    return out, compute_s


Scheduler.run = _lying_run  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
