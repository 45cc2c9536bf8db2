"""The exact argmax through an fp16 prefilter: equal to the full product's argmax (ties, overflow and real heads
included), and the prefilter's observed error well inside the bound it relies on."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedModel

from devkit.reference import run_shards
from p2pllm.argmax import PREFILTER_REL, RESULT_REL, ExactArgmax
from p2pllm.head import load_head
from p2pllm.models import ModelSource
from p2pllm.shard import load_shard


def full_argmax(weight: torch.Tensor, x: torch.Tensor) -> int:
    return int(torch.nn.functional.linear(x.reshape(1, -1), weight).argmax())


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 300), st.integers(1, 64), st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3),
       st.integers(0, 3))
def test_equals_the_full_argmax(rows: int, features: int, seed: int, scale: float, duplicates: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, features, generator=generator)
    for _ in range(duplicates):  # exact ties: the lowest index must win, as torch.argmax picks it
        src, dst = torch.randint(rows, (2,), generator=generator).tolist()
        weight[dst] = weight[src]
    x = torch.randn(features, generator=generator) * scale
    x[0] += 5 * scale  # a spread of values, not all near zero
    assert ExactArgmax(weight)(x) == full_argmax(weight, x)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-5, 1e-2))
def test_near_ties_below_fp16_resolution_are_decided_in_fp32(seed: int, spread: float) -> None:
    """Rows that differ by less than fp16 can resolve: the prefilter alone would pick by rounding, not by value."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(64, generator=generator)
    weight = base + spread * torch.randn(200, 64, generator=generator)  # 200 near-copies of one row
    x = torch.randn(64, generator=generator) * 3  # fp16 alone misorders such rows most of the time
    assert ExactArgmax(weight)(x) == full_argmax(weight, x)


def test_ties_overflow_and_bad_input() -> None:
    weight = torch.zeros(6, 4)
    weight[2] = weight[4] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    argmax = ExactArgmax(weight)
    assert argmax(torch.ones(4)) == 2  # the lower of two equal maxima
    assert argmax.fallbacks == 1  # a tie is left to the full product
    huge = torch.full((4,), 1e6)  # beyond fp16: the full product decides
    assert argmax(huge) == full_argmax(weight, huge) and argmax.fallbacks == 2
    with pytest.raises(ValueError):
        argmax(torch.ones(5))
    with pytest.raises(ValueError):
        ExactArgmax(torch.ones(3, 4, dtype=torch.float16))


def test_the_prefilter_error_is_well_inside_its_bound() -> None:
    """At SmolLM2's width: the observed |fp16 prefilter − fp32| over every row stays under half the bound (the
    bound has a margin of about 2 by its derivation; a kernel that accumulated in fp16 would break this)."""
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(8192, 576, generator=generator) * 0.05
    argmax = ExactArgmax(weight)
    worst = 0.0
    for _ in range(20):
        x = torch.randn(576, generator=generator) * 2
        exact = torch.nn.functional.linear(x, weight)
        approx = torch.nn.functional.linear(x.half(), argmax.half).float()
        bound = PREFILTER_REL * x.norm() * argmax.row_norms + RESULT_REL * approx.abs()
        worst = max(worst, float(((approx - exact).abs() / bound).max()))
    assert worst < 0.5, worst


def test_a_real_head_gives_the_greedy_token_of_its_logits(smollm2: ModelSource, smollm2_hf: PreTrainedModel) -> None:
    """SmolLM2's own hidden states after its last layer, at every position of a few random prompts:
    `Head.greedy` equals the argmax of `Head.logits` and of transformers' own logits."""
    head = load_head(smollm2, with_tokenizer=False)
    shard = load_shard(smollm2, 0, head.num_layers)
    generator = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        for _ in range(3):
            ids = torch.randint(0, head.config.vocab_size, (1, 24), generator=generator)
            hidden = run_shards([shard], head.embed(ids), torch.arange(ids.shape[1]))
            theirs = smollm2_hf(ids).logits[0].argmax(dim=-1)
            for t in range(ids.shape[1]):
                want = int(head.logits(hidden[:, t:t + 1]).reshape(-1).argmax())
                assert head.greedy(hidden[:, :t + 1]) == want == int(theirs[t])
