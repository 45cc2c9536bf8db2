"""Greedy generation through a chain of shards in one process: a naive path and a cached path.

`naive_generate` recomputes the whole prefix through every shard at each step (no cache): slow, obviously
right, the reference. `generate` is the fast path, composed of `prefill` and `decode_one_token` over one
`DynamicCache` per shard, exactly what a route of remote hops does. Tests prove both emit the tokens that
``AutoModelForCausalLM.generate(do_sample=False)`` emits; the shard benchmark times the cached path.

Boundary: in-process only; knows nothing about sessions, HTTP, the wire format or payment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from p2pllm.head import Head
from p2pllm.shard import Shard


class BrokenChain(ValueError):
    """The shards do not cover ``[0, num_layers)`` contiguously, in order."""

    def __init__(self, ranges: tuple[tuple[int, int], ...], num_layers: int) -> None:
        self.ranges = ranges
        self.num_layers = num_layers
        super().__init__(f"shard ranges {list(ranges)} do not chain [0, {num_layers})")


def check_chain(shards: Sequence[Shard], num_layers: int) -> None:
    """Raise `BrokenChain` unless the shards' ranges are ``[0, a), [a, b), ..., [y, num_layers)``."""
    ranges = tuple((s.start, s.end) for s in shards)
    bounds = [0, *(end for _, end in ranges)]
    if not ranges or any(start != bounds[i] for i, (start, _) in enumerate(ranges)) or bounds[-1] != num_layers:
        raise BrokenChain(ranges, num_layers)


def run_shards(
    shards: Sequence[Shard],
    hidden: torch.Tensor,
    positions: torch.Tensor,
    caches: Sequence[DynamicCache] | None = None,
) -> torch.Tensor:
    """Hidden states through every shard in order (with each shard's cache when given)."""
    for i, shard in enumerate(shards):
        hidden = shard(hidden, positions, caches[i] if caches is not None else None)
    return hidden


@torch.inference_mode()
def prefill(
    head: Head, shards: Sequence[Shard], caches: Sequence[DynamicCache], token_ids: torch.Tensor
) -> torch.Tensor:
    """Run the prompt ``(1, tokens)`` through the chain, filling the caches; logits of every position."""
    positions = torch.arange(token_ids.shape[-1], device=head.device)
    return head.logits(run_shards(shards, head.embed(token_ids), positions, caches))


@torch.inference_mode()
def decode_one_token(
    head: Head, shards: Sequence[Shard], caches: Sequence[DynamicCache], token: int, position: int
) -> torch.Tensor:
    """One cached step for `token` at `position`; logits ``(1, 1, vocab)``."""
    token_ids = torch.tensor([[token]], device=head.device)
    positions = torch.tensor([position], device=head.device)
    return head.logits(run_shards(shards, head.embed(token_ids), positions, caches))


def generate(
    head: Head,
    shards: Sequence[Shard],
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
) -> list[int]:
    """Greedy new tokens via the caches (stops after an eos token, which is included)."""
    check_chain(shards, head.num_layers)
    caches = [shard.new_cache() for shard in shards]
    logits = prefill(head, shards, caches, torch.tensor([list(prompt_ids)], device=head.device))
    out: list[int] = []
    position = len(prompt_ids)
    while True:
        token = int(logits[0, -1].argmax())
        out.append(token)
        if len(out) >= max_new_tokens or token in eos_token_ids:
            return out
        logits = decode_one_token(head, shards, caches, token, position)
        position += 1


@torch.inference_mode()
def naive_generate(
    head: Head,
    shards: Sequence[Shard],
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
) -> list[int]:
    """Greedy new tokens recomputing the full prefix each step, without any cache."""
    check_chain(shards, head.num_layers)
    ids = list(prompt_ids)
    out: list[int] = []
    while len(out) < max_new_tokens:
        positions = torch.arange(len(ids), device=head.device)
        hidden = run_shards(shards, head.embed(torch.tensor([ids], device=head.device)), positions)
        token = int(head.logits(hidden[:, -1:])[0, -1].argmax())
        out.append(token)
        ids.append(token)
        if token in eos_token_ids:
            break
    return out
