"""Batched decode equals solo decode: sessions with different prompt lengths are prefilled (alone, or together
with `prefill_batch`), then decoded together with `decode_batch`, and every session's outputs, prompt included,
match the same session run alone through `Shard.forward` within 1e-4 of the largest magnitude (fp32). Covers the
tiny Llama, Qwen2 (sliding and full layers mixed), Mistral (sliding window 8, so windows fill up mid-run, and a
12-token prompt overflows the window) and SmolLM2 (slow), a sub-span of a shard, and sessions joining and
leaving the batch between steps."""

from __future__ import annotations

import pytest
import torch

from p2pllm.batch import decode_batch, prefill_batch
from p2pllm.models import ModelSource
from p2pllm.shard import Shard, load_shard

TOLERANCE = 1e-4
PROMPTS = (5, 1, 12, 7)  # sessions' prompt lengths: padding differs per row, one starts from one token
STEPS = 10


def run(shard: Shard, span: tuple[int, int] | None, seed: int = 0, together: bool = False) -> tuple[float, float]:
    """(max |batched − solo|, max |solo|) over every output of every session; the prompts go through
    `prefill_batch` when `together`, else alone."""
    g = torch.Generator().manual_seed(seed)
    width = shard.hidden_size
    prompts = [torch.randn(1, n, width, generator=g) for n in PROMPTS]
    steps = [[torch.randn(1, 1, width, generator=g) for _ in range(STEPS)] for _ in PROMPTS]
    with torch.inference_mode():
        solo: list[list[torch.Tensor]] = []
        for prompt, inputs in zip(prompts, steps, strict=True):
            cache, n = shard.new_cache(), prompt.shape[1]
            solo.append([shard(prompt, torch.arange(n), cache, span)])
            solo[-1] += [shard(x, torch.tensor([n + t]), cache, span) for t, x in enumerate(inputs)]
        caches = [shard.new_cache() for _ in PROMPTS]
        if together:
            firsts = prefill_batch(shard, prompts, caches, span)
        else:
            firsts = [shard(prompt, torch.arange(prompt.shape[1]), cache, span)
                      for prompt, cache in zip(prompts, caches, strict=True)]
        batched: list[list[torch.Tensor]] = [[first] for first in firsts]
        for t in range(STEPS):
            rows = [i for i in range(len(PROMPTS)) if not (i == 1 and 3 <= t < 6)]  # session 1 sits out a while
            out = decode_batch(shard, torch.cat([steps[i][len(batched[i]) - 1] for i in rows]),
                               [PROMPTS[i] + len(batched[i]) - 1 for i in rows], [caches[i] for i in rows], span)
            for row, i in enumerate(rows):
                batched[i].append(out[row:row + 1])
        while len(batched[1]) <= STEPS:  # it catches up alone
            i, t = 1, len(batched[1]) - 1
            batched[i].append(decode_batch(shard, steps[i][t], [PROMPTS[i] + t], [caches[i]], span))
    diff = max(float((b - s).abs().max()) for bs, ss in zip(batched, solo, strict=True)
               for b, s in zip(bs, ss, strict=True))
    scale = max(float(s.abs().max()) for ss in solo for s in ss)
    return diff, scale


@pytest.mark.parametrize("together", [False, True], ids=["prefill-alone", "prefill-together"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_batched_decode_equals_solo(tiny_models: dict[str, ModelSource], kind: str, together: bool,
                                    one_torch_thread: None) -> None:
    source = tiny_models[kind]
    shard = load_shard(source, 0, {"llama": 8, "qwen2": 6, "mistral": 4}[kind])
    diff, scale = run(shard, None, together=together)
    assert diff <= TOLERANCE * scale, (diff, scale)


@pytest.mark.parametrize("together", [False, True], ids=["prefill-alone", "prefill-together"])
def test_batched_decode_on_a_sub_span(tiny_models: dict[str, ModelSource], together: bool,
                                      one_torch_thread: None) -> None:
    shard = load_shard(tiny_models["qwen2"], 0, 4)
    diff, scale = run(shard, (1, 3), seed=3, together=together)
    assert diff <= TOLERANCE * scale, (diff, scale)


def test_bad_batches_are_refused(tiny_models: dict[str, ModelSource]) -> None:
    shard = load_shard(tiny_models["llama"], 0, 2)
    with pytest.raises(ValueError):
        decode_batch(shard, torch.zeros(2, 2, shard.hidden_size), [0, 0], [shard.new_cache(), shard.new_cache()])
    with pytest.raises(ValueError):
        decode_batch(shard, torch.zeros(2, 1, shard.hidden_size), [0], [shard.new_cache()])
    with pytest.raises(ValueError):  # two prompts in one row
        prefill_batch(shard, [torch.zeros(2, 3, shard.hidden_size)], [shard.new_cache()])
    with pytest.raises(ValueError):  # a cache per prompt
        prefill_batch(shard, [torch.zeros(1, 3, shard.hidden_size)] * 2, [shard.new_cache()])
    used = shard.new_cache()
    with torch.inference_mode():
        shard(torch.zeros(1, 2, shard.hidden_size), torch.arange(2), used)
    with pytest.raises(ValueError):  # fresh sessions only: a used cache would need left padding
        prefill_batch(shard, [torch.zeros(1, 3, shard.hidden_size)], [used])


@pytest.mark.slow
def test_batched_decode_equals_solo_smollm2(smollm2: ModelSource, one_torch_thread: None) -> None:
    shard = load_shard(smollm2, 10, 20)
    diff, scale = run(shard, None, together=True)
    print(f"smollm2 [10,20): max |batched - solo| = {diff:.3g}, max |solo| = {scale:.3g}, "
          f"ratio {diff / scale:.3g}")
    assert diff <= TOLERANCE * scale, (diff, scale)
