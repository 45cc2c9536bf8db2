"""One decode step of many sessions as one batched forward through a shard, each session keeping its own KV cache
and its own position.

Padding with an attention mask: for each layer, every session's cache is updated with its own new key and value
through the cache's public `update` (so a sliding-window layer keeps its window as it does alone), and the states
it returns are left-padded to the longest in the batch; a boolean mask per attention kind hides the padding. Left
padding keeps every real key at the same distance from the query as in the session's own cache, so positions
(RoPE, per row) and sliding windows are what they are solo. The projections and MLPs, which read the weights,
run once for the whole batch; that is where batching pays, since decode is bound by reading the weights.

Boundary: knows shards, tensors and transformers' cache API; knows nothing about sessions, queues or payment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from p2pllm.shard import Shard


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
    stacked = BatchedCaches(caches, kinds, kv_lengths)
    position_embeddings = shard.rotary_emb(hidden, position_ids)
    for layer, kind in zip(list(shard.layers)[lo:hi], kinds[lo:hi], strict=True):
        hidden = layer(hidden, attention_mask=masks[kind], position_embeddings=position_embeddings,
                       position_ids=position_ids, cache=stacked, use_cache=True)
    return hidden

