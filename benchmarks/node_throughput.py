"""How a node's throughput grows with concurrent sessions under continuous batching.

    python benchmarks/node_throughput.py [--ks 1,4,16,32] [--tokens 64] [--prefill 32] [--threads N]
                                         [--wide-ks 1,16] [--wide-tokens 16] [--device cpu|cuda]
    # prints one JSON line; progress on stderr

One node's compute path, in process: a `ShardExecutor` over layers [10, 20) of SmolLM2-135M (fp32 on CPU) and
the node's `Scheduler`, driven from one event loop as the node's streams drive it, with the torch threads
`p2pnode serve` uses by default (the CPUs less one, which is left to the event loop). K sessions each prefill 32
tokens, then decode 64 tokens one step at a time (each step awaits its result before the next is submitted, as a
route does). Measured over the decode phase: steps per second over all sessions (`steps_per_s_kK`), each step's
latency from submit to result (`p50_step_ms_kK`, `p99_step_ms_kK`), and `speedup_kK` = steps_per_s_kK /
steps_per_s_k1. Baselines in the same run: the unbatched path (`ShardExecutor.forward` called directly, one
session: `p50_step_ms_unbatched`, and `p50_k1_vs_unbatched`, the ratio) and the scheduler with batching off
(`--max-batch 1`) at the largest K that is at most 16 (`steps_per_s_kK_nobatch`); and the ceiling of batching,
the same K rows decoded in one cache of equal lengths as plain transformers batches a static batch
(`steps_per_s_kK_equal_length`, and `kK_vs_equal_length`, the share of it the scheduler reaches with per-session
caches of their own lengths).

Realistic widths: the same at K in `--wide-ks` on randomly initialised Llama-architecture shards built from a
config (no download): a 1B shape (hidden 2048, 8 of 16 layers, fp32 on CPU; `speedup_k16_h2048`), and on
`--device cuda` an 8B shape (hidden 4096, 8 of 32 layers, bf16; `speedup_k32_h4096`). `wire_bytes_per_token_hN`
is the size of one decode `Step` frame with its receipt at each width and dtype: what crosses each hop per token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

import torch
from transformers import LlamaConfig

from node.executor import ShardExecutor
from node.scheduler import Scheduler
from p2pllm.receipts import EscrowDomain, Receipt, sign_receipt
from p2pllm.shard import Shard, load_shard, random_shard
from p2pllm.wire import ReceiptClaim, Step, encode


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def drive(scheduler: Scheduler, executor: ShardExecutor, k: int, prefill: int, tokens: int,
                hidden_size: int, dtype: torch.dtype, device: torch.device) -> tuple[float, list[float]]:
    """K sessions through the scheduler: (decode steps per second, per-step latencies in ms)."""
    ids = [f"k{k}-s{i}-{time.monotonic_ns()}" for i in range(k)]
    for sid in ids:
        executor.open_session(prefill + tokens, session_id=sid)
    latencies: list[float] = []
    try:
        await asyncio.gather(*(scheduler.run(sid, torch.randn(1, prefill, hidden_size, dtype=dtype, device=device),
                                             0) for sid in ids))
        started = time.perf_counter()

        async def decode(sid: str) -> None:
            for t in range(tokens):
                x = torch.randn(1, 1, hidden_size, dtype=dtype, device=device)
                begun = time.perf_counter()
                await scheduler.run(sid, x, prefill + t)
                latencies.append(1000 * (time.perf_counter() - begun))

        await asyncio.gather(*(decode(sid) for sid in ids))
        elapsed = time.perf_counter() - started
    finally:
        for sid in ids:
            executor.close_session(sid)
    return k * tokens / elapsed, latencies


def unbatched_p50(executor: ShardExecutor, prefill: int, tokens: int, hidden_size: int, dtype: torch.dtype,
                  device: torch.device) -> float:
    executor.open_session(prefill + tokens, session_id="direct")
    try:
        executor.forward("direct", torch.randn(1, prefill, hidden_size, dtype=dtype, device=device),
                         torch.arange(prefill))
        samples = []
        for t in range(tokens):
            x = torch.randn(1, 1, hidden_size, dtype=dtype, device=device)
            begun = time.perf_counter()
            executor.forward("direct", x, torch.tensor([prefill + t]))
            if device.type == "cuda":
                torch.cuda.synchronize()
            samples.append(1000 * (time.perf_counter() - begun))
    finally:
        executor.close_session("direct")
    return statistics.median(samples)


def equal_length_rate(shard: Shard, k: int, prefill: int, tokens: int) -> float:
    """The ceiling: K rows decoded in one cache of equal lengths (no per-session caches, no padding), as plain
    transformers batches a static batch. Decode steps per second."""
    cache = shard.new_cache()
    shard(torch.randn(k, prefill, shard.hidden_size, dtype=shard.dtype, device=shard.device), torch.arange(prefill),
          cache)
    started = time.perf_counter()
    for t in range(tokens):
        shard(torch.randn(k, 1, shard.hidden_size, dtype=shard.dtype, device=shard.device),
              torch.tensor([prefill + t], device=shard.device), cache)
    if shard.device.type == "cuda":
        torch.cuda.synchronize()
    return k * tokens / (time.perf_counter() - started)


def measure(shard: Shard, ks: list[int], prefill: int, tokens: int, label: str, nobatch_k: int | None,
            interleave_unbatched: bool) -> dict[str, float]:
    budget = (max(ks) + 2) * (prefill + tokens)
    executor = ShardExecutor(shard, budget_tokens=budget)
    out: dict[str, float] = {}
    unbatched: list[float] = []
    per_k: dict[int, list[tuple[float, list[float]]]] = {k: [] for k in ks}
    rounds = 2
    for round_ in range(rounds):
        for k in ks if round_ % 2 == 0 else reversed(ks):
            scheduler = Scheduler(executor, max_batch=max(ks))  # the node's default waits
            try:
                result = asyncio.run(drive(scheduler, executor, k, prefill, tokens, shard.hidden_size, shard.dtype,
                                           shard.device))
            finally:
                scheduler.close()
            per_k[k].append(result)
            say(f"{label} round {round_ + 1}/{rounds} K={k}: {result[0]:.1f} steps/s, "
                f"p50 {statistics.median(result[1]):.1f} ms")
            if interleave_unbatched and k == 1:
                unbatched.append(unbatched_p50(executor, prefill, tokens, shard.hidden_size, shard.dtype,
                                               shard.device))
    for k in ks:
        rates = [r for r, _ in per_k[k]]
        latencies = [x for _, lat in per_k[k] for x in lat]
        out[f"steps_per_s_k{k}{label}"] = round(statistics.median(rates), 2)
        out[f"p50_step_ms_k{k}{label}"] = round(statistics.median(latencies), 3)
        out[f"p99_step_ms_k{k}{label}"] = round(sorted(latencies)[int(0.99 * (len(latencies) - 1))], 3)
    for k in ks[1:]:
        out[f"speedup_k{k}{label}"] = round(out[f"steps_per_s_k{k}{label}"] / out[f"steps_per_s_k{ks[0]}{label}"], 2)
    if unbatched:
        out[f"p50_step_ms_unbatched{label}"] = round(statistics.median(unbatched), 3)
        out[f"p50_k1_vs_unbatched{label}"] = round(out[f"p50_step_ms_k1{label}"] / statistics.median(unbatched), 3)
    if nobatch_k is not None:
        ceiling = statistics.median(equal_length_rate(shard, nobatch_k, prefill, tokens) for _ in range(2))
        out[f"steps_per_s_k{nobatch_k}_equal_length{label}"] = round(ceiling, 2)
        out[f"k{nobatch_k}_vs_equal_length{label}"] = round(out[f"steps_per_s_k{nobatch_k}{label}"] / ceiling, 3)
        say(f"{label} K={nobatch_k} in one equal-length cache: {ceiling:.1f} steps/s")
        scheduler = Scheduler(executor, max_batch=1, max_wait_s=0)
        try:
            rate, _ = asyncio.run(drive(scheduler, executor, nobatch_k, prefill, tokens, shard.hidden_size,
                                        shard.dtype, shard.device))
        finally:
            scheduler.close()
        out[f"steps_per_s_k{nobatch_k}_nobatch{label}"] = round(rate, 2)
        say(f"{label} K={nobatch_k} without batching: {rate:.1f} steps/s")
    return out


def wire_bytes(hidden_size: int, dtype: torch.dtype) -> int:
    """One decode Step frame with a signed receipt, as a client or a relaying node sends it."""
    domain = EscrowDomain(1, "0x" + "22" * 20)
    key = b"\x01" * 32
    receipt = Receipt("0x" + "33" * 20, "0x" + "44" * 20, b"\x05" * 32, 100, 10**15, 2**31)
    claim = ReceiptClaim(100, 10**15, 2**31, sign_receipt(receipt, domain, key))
    return len(encode(Step(b"\x05" * 32, 99, claim, torch.zeros(1, 1, hidden_size, dtype=dtype))))


def llama_shape(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,4,16,32", help="concurrent sessions to measure (first = baseline)")
    parser.add_argument("--tokens", type=int, default=64, help="decode steps per session")
    parser.add_argument("--prefill", type=int, default=32, help="prompt tokens per session")
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1),
                        help="torch threads of the compute worker (default: CPUs less one, as p2pnode serve)")
    parser.add_argument("--wide-ks", default="1,16", help="K for the realistic-width shard ('' to skip)")
    parser.add_argument("--wide-tokens", type=int, default=16, help="decode steps per session at realistic width")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    device = torch.device(args.device)
    started = time.perf_counter()
    out: dict[str, object] = {"device": args.device, "threads": args.threads, "tokens": args.tokens,
                              "prefill": args.prefill}
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    shard = load_shard("smollm2-135m", 10, 20, device=device, dtype=dtype)
    with torch.inference_mode():
        out.update(measure(shard, ks, args.prefill, args.tokens, "", max(k for k in ks if k <= 16), True))
    out["wire_bytes_per_token_h576"] = wire_bytes(576, shard.dtype)
    del shard
    if args.wide_ks:
        wide_ks = [int(k) for k in args.wide_ks.split(",")]
        if args.device == "cpu":
            config, label, wide_dtype = llama_shape(2048, 16, 8192, 32, 8), "_h2048", torch.float32
        else:
            config, label, wide_dtype = llama_shape(4096, 32, 14336, 32, 8), "_h4096", torch.bfloat16
        say(f"building a random {label[2:]}-wide Llama shard of 8 layers ...")
        wide = random_shard(config, 0, 8, device=device, dtype=wide_dtype)
        with torch.inference_mode():
            out.update(measure(wide, wide_ks, args.prefill, args.wide_tokens, label, None, False))
        out[f"wire_bytes_per_token{label}"] = wire_bytes(config.hidden_size, wide_dtype)
        out["wide_tokens"] = args.wide_tokens
    targets = {"speedup_k16": 5.0, "speedup_k32": 8.0 if args.device == "cpu" else 20.0}
    missed = [key for key, want in targets.items() if key in out and float(out[key]) < want]  # type: ignore[arg-type]
    if "p50_k1_vs_unbatched" in out and float(out["p50_k1_vs_unbatched"]) > 1.05:  # type: ignore[arg-type]
        missed.append("p50_k1_vs_unbatched")
    out.update({"targets": {**targets, "p50_k1_vs_unbatched": "<= 1.05"}, "targets_met": not missed,
                "targets_missed": missed, "wall_s": round(time.perf_counter() - started, 1)})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
