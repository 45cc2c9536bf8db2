"""One decode step of many sessions, or the prompts of many fresh sessions, as one batched forward through a
shard, each session keeping its own KV cache and its own positions.

Padding with an attention mask: for each layer, every session's cache is updated with its own new key and value
through the cache's public `update` (so a sliding-window layer keeps its window as it does alone), and the states
it returns are left-padded to the longest in the batch; a boolean mask per attention kind hides the padding. Left
padding keeps every real key at the same distance from the query as in the session's own cache, so positions
(RoPE, per row) and sliding windows are what they are solo. The projections and MLPs, which read the weights,
run once for the whole batch; that is where batching pays, since decode is bound by reading the weights.

Prompts (`prefill_batch`) of sessions whose caches are empty are right-padded to the longest instead: every row
starts at position 0, each cache is given only its own row's real keys and values, and the mask is causal (which
hides the padding from every real query, since it comes after them) and, for sliding layers, hides the keys out
of the window. The padded queries' outputs are dropped.

Boundary: knows shards, tensors and transformers' cache API; knows nothing about sessions, queues or payment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from p2pllm.shard import SLIDING, Shard


class BatchedCaches:
    """Duck-typed stand-in for a cache during one batched decode: row i is `caches[i]`. `kv_lengths[kind][i]` is
    how many key/value columns row i's cache returns for a layer of that kind; `update` left-pads to the longest."""

    def __init__(self, caches: Sequence[DynamicCache], layer_kinds: Sequence[str],
                 kv_lengths: dict[str, list[int]]) -> None:
        self.caches = caches
        self.layer_kinds = layer_kinds
        self.kv_lengths = kv_lengths

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = self.kv_lengths[self.layer_kinds[layer_idx]]
        longest = max(lengths)
        batch, heads, _, dim = key_states.shape
        keys = key_states.new_zeros(batch, heads, longest, dim)
        values = value_states.new_zeros(batch, heads, longest, value_states.shape[-1])
        for row, cache in enumerate(self.caches):
            k, v = cache.update(key_states[row:row + 1], value_states[row:row + 1], layer_idx)
            if k.shape[-2] != lengths[row]:
                raise RuntimeError(f"cache row {row} returned {k.shape[-2]} columns, expected {lengths[row]}")
            keys[row, :, longest - lengths[row]:] = k[0]
            values[row, :, longest - lengths[row]:] = v[0]
        return keys, values


def decode_batch(shard: Shard, hidden: torch.Tensor, positions: Sequence[int], caches: Sequence[DynamicCache],
                 span: tuple[int, int] | None = None) -> torch.Tensor:
    """Hidden states ``(B, 1, hidden)`` of B sessions at their own `positions` (each its cache's length) through
    the shard (or its `span`), appending to each session's cache; returns ``(B, 1, hidden)``."""
    batch = int(hidden.shape[0])
    if hidden.dim() != 3 or hidden.shape[1] != 1 or not batch == len(positions) == len(caches):
        raise ValueError(f"decode_batch takes (B, 1, hidden) with B positions and caches, got {tuple(hidden.shape)}, "
                         f"{len(positions)} positions, {len(caches)} caches")
    lo, hi = shard.local_span(span)
    kinds = shard.layer_types
    kv_lengths: dict[str, list[int]] = {}
    masks: dict[str, torch.Tensor] = {}
    for kind in set(kinds[lo:hi]):
        layer = lo + kinds[lo:hi].index(kind)
        lengths = [int(cache.get_mask_sizes(1, layer)[0]) for cache in caches]
        longest = max(lengths)
        columns = torch.arange(longest, device=shard.device)
        starts = torch.tensor([longest - n for n in lengths], device=shard.device)
        masks[kind] = (columns[None, :] >= starts[:, None]).view(batch, 1, 1, longest)
        kv_lengths[kind] = lengths
    position_ids = torch.tensor(list(positions), device=shard.device).view(batch, 1)
    return _through_layers(shard, hidden, (lo, hi), masks, position_ids, BatchedCaches(caches, kinds, kv_lengths))


def _through_layers(shard: Shard, hidden: torch.Tensor, local: tuple[int, int], masks: dict[str, torch.Tensor],
                    position_ids: torch.Tensor, cache: BatchedCaches | _RightPadded) -> torch.Tensor:
    """`hidden` through the shard's local layers [lo, hi), each with the mask of its attention kind."""
    lo, hi = local
    position_embeddings = shard.rotary_emb(hidden, position_ids)
    for layer, kind in zip(list(shard.layers)[lo:hi], shard.layer_types[lo:hi], strict=True):
        hidden = layer(hidden, attention_mask=masks[kind], position_embeddings=position_embeddings,
                       position_ids=position_ids, cache=cache, use_cache=True)
    return hidden


class _RightPadded:
    """Duck-typed stand-in for the caches of fresh sessions during one batched prefill: row i's cache takes only
    its first `lengths[i]` new keys and values; `update` returns them right-padded to the batch's length."""

    def __init__(self, caches: Sequence[DynamicCache], lengths: Sequence[int]) -> None:
        self.caches = caches
        self.lengths = lengths

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = torch.zeros_like(key_states), torch.zeros_like(value_states)
        for row, (cache, n) in enumerate(zip(self.caches, self.lengths, strict=True)):
            k, v = cache.update(key_states[row:row + 1, :, :n], value_states[row:row + 1, :, :n], layer_idx)
            if k.shape[-2] != n:
                raise RuntimeError(f"cache row {row} returned {k.shape[-2]} columns for a fresh prefill of {n}")
            keys[row, :, :n] = k[0]
            values[row, :, :n] = v[0]
        return keys, values


def prefill_batch(shard: Shard, prompts: Sequence[torch.Tensor], caches: Sequence[DynamicCache],
                  span: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """Prompts ``(1, n_i, hidden)`` of sessions whose `caches` are empty, at positions [0, n_i), through the shard
    (or its `span`) as one forward, filling each cache with its own n_i tokens; returns each ``(1, n_i, hidden)``."""
    lengths = [int(p.shape[1]) if p.dim() == 3 and p.shape[0] == 1 else -1 for p in prompts]
    if not prompts or len(prompts) != len(caches) or min(lengths) < 1:
        raise ValueError(f"prefill_batch takes (1, n, hidden) prompts with one cache each, got "
                         f"{[tuple(p.shape) for p in prompts]} and {len(caches)} caches")
    lo, hi = shard.local_span(span)
    kinds = shard.layer_types
    for cache in caches:
        if any(cache.get_seq_length(lo + kinds[lo:hi].index(kind)) for kind in set(kinds[lo:hi])):
            raise ValueError("prefill_batch takes fresh sessions only (empty caches)")
    longest = max(lengths)
    hidden = torch.zeros(len(prompts), longest, shard.hidden_size, dtype=prompts[0].dtype, device=shard.device)
    for row, prompt in enumerate(prompts):
        hidden[row, :lengths[row]] = prompt[0]
    steps = torch.arange(longest, device=shard.device)
    queries, keys = steps[:, None], steps[None, :]
    # Causal alone hides the padding from every real query (padding comes after a row's last real token).
    causal = keys <= queries
    masks: dict[str, torch.Tensor] = {}
    for kind in set(kinds[lo:hi]):
        mask = causal & (keys > queries - int(shard.config.sliding_window)) if kind == SLIDING else causal
        masks[kind] = mask.expand(len(prompts), 1, longest, longest)
    position_ids = steps[None].expand(len(prompts), longest)
    hidden = _through_layers(shard, hidden, (lo, hi), masks, position_ids, _RightPadded(caches, lengths))
    return [hidden[row:row + 1, :n] for row, n in enumerate(lengths)]
