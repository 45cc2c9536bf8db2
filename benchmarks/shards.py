"""Memory, speed and load time of sharded execution against the monolithic model, on SmolLM2-135M fp32.

    python benchmarks/shards.py [--threads N] [--steps 64]      # prints one JSON line on stdout

All figures come from one run on one machine (progress goes to stderr):

- ``rss_ratio``: peak RSS of a subprocess holding layers 0-10 (load, prefill 16 tokens, decode 4) divided by
  the peak RSS of a subprocess holding the whole model (``AutoModelForCausalLM``, same work); target <= 0.5.
  Both pay the same fixed cost of importing torch and transformers (``baseline_rss_mb``, measured in each
  child after its imports); ``rss_ratio_over_baseline`` divides what each child added on top of it.
- ``step_ratio``: median time of one cached decode step through the pipeline in one process (client embedding,
  shards 0-10, 10-20, 20-30, client final norm and LM head) divided by the median time of one cached decode
  step of the monolithic ``AutoModelForCausalLM`` (same dtype, same threads, same tokens, steps interleaved);
  target <= 1.05. ``step_ratio_layers`` compares only the three shards' summed times against one 0-30 shard.
- ``load_s``: wall time of ``load_shard(model, 0, 10)`` from the converted cache; target <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from p2pllm.models import DEFAULT_MODEL, ModelSource, resolve_model

if TYPE_CHECKING:
    from transformers import DynamicCache

    from p2pllm.shard import Shard

SPLIT = ((0, 10), (10, 20), (20, 30))
TARGETS = {"rss_ratio": 0.5, "step_ratio": 1.05, "load_s": 5.0}
PROMPT = "Write a short poem about the sea and the wind, in the style of a sailor's song."


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.threads)))
        return 0
    print(json.dumps(measure(args.model, args.threads, args.steps, args.warmup)))
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=64, help="timed decode steps")
    parser.add_argument("--warmup", type=int, default=4, help="untimed decode steps first")
    parser.add_argument("--child", choices=["shard", "whole"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(model: str, threads: int, steps: int, warmup: int) -> dict[str, Any]:
    source = resolve_model(model)
    torch.set_num_threads(threads)
    log(f"model {source.name} at {source.path}; {threads} threads")
    rss_shard = run_child("shard", model, threads)
    rss_whole = run_child("whole", model, threads)
    load_s = time_load(source)
    timing = time_steps(source, steps, warmup)
    result: dict[str, Any] = {
        "benchmark": "shards",
        "model": source.name,
        "dtype": "float32",
        "device": "cpu",
        "threads": threads,
        "rss_ratio": round(rss_shard["peak_rss_mb"] / rss_whole["peak_rss_mb"], 3),
        "rss_ratio_over_baseline": round(
            (rss_shard["peak_rss_mb"] - rss_shard["baseline_rss_mb"])
            / (rss_whole["peak_rss_mb"] - rss_whole["baseline_rss_mb"]),
            3,
        ),
        "rss_shard_0_10_mb": rss_shard["peak_rss_mb"],
        "rss_whole_mb": rss_whole["peak_rss_mb"],
        "baseline_rss_mb": rss_whole["baseline_rss_mb"],
        **timing,
        "load_s": round(load_s, 3),
        "targets": TARGETS,
    }
    result["meets_targets"] = {name: result[name] <= limit for name, limit in TARGETS.items()}
    return result


# ----------------------------------------------------------------------------------------------- memory


def run_child(kind: str, model: str, threads: int) -> dict[str, float]:
    """Peak RSS of a fresh interpreter that holds `kind` and runs a little inference."""
    log(f"measuring peak RSS of a subprocess holding {'layers 0-10' if kind == 'shard' else 'the whole model'}")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--model", model, "--threads", str(threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    data: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def child(kind: str, model: str, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM

    from p2pllm.shard import load_shard

    source = resolve_model(model)
    baseline = peak_rss_mb()
    prompt = torch.arange(100, 116)[None]
    with torch.inference_mode():
        if kind == "shard":
            shard = load_shard(source, *SPLIT[0])
            cache = shard.new_cache()
            hidden = torch.randn(1, 16, source.hidden_size)
            shard(hidden, torch.arange(16), cache)
            for i in range(4):
                shard(hidden[:, :1], torch.tensor([16 + i]), cache)
        else:
            whole = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
            out = whole(prompt, use_cache=True)
            for _ in range(4):
                out = whole(out.logits[:, -1:].argmax(-1), cache=out.cache, use_cache=True)
    return {"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline}


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


# ----------------------------------------------------------------------------------------------- speed


def time_load(source: ModelSource) -> float:
    from p2pllm.shard import load_shard

    log("timing load_shard(0, 10) from the cache")
    started = time.perf_counter()
    load_shard(source, *SPLIT[0])
    return time.perf_counter() - started


def time_steps(source: ModelSource, steps: int, warmup: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from p2pllm.head import load_head
    from p2pllm.shard import load_shard

    log(f"timing {steps} cached decode steps: pipeline of {list(SPLIT)} vs monolithic model")
    head = load_head(source)
    shards = [load_shard(source, start, end) for start, end in SPLIT]
    single = load_shard(source, 0, source.num_layers)
    whole = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    prompt = torch.tensor([head.encode_chat([{"role": "user", "content": PROMPT}])])
    length = prompt.shape[1]
    caches = [s.new_cache() for s in shards]
    single_cache = single.new_cache()
    times: dict[str, list[float]] = {"whole": [], "pipeline": [], "layers": [], "single": []}
    with torch.inference_mode():
        out = whole(prompt, use_cache=True)
        whole_cache = out.cache
        positions = torch.arange(length)
        single(head.embed(prompt), positions, single_cache)
        logits = head.logits(run_pipeline(shards, caches, head.embed(prompt), positions)[0])
        token = out.logits[:, -1:].argmax(-1)
        check_agree(logits, token)
        for step in range(warmup + steps):
            position = torch.tensor([length + step])
            step_ms: dict[str, float] = {}
            for variant in rotated(("whole", "pipeline", "single"), step):
                started = time.perf_counter()
                if variant == "whole":
                    out = whole(token, cache=whole_cache, use_cache=True)
                elif variant == "pipeline":
                    hidden, step_ms["layers"] = run_pipeline(shards, caches, head.embed(token), position)
                    logits = head.logits(hidden)
                else:
                    single(head.embed(token), position, single_cache)
                step_ms[variant] = (time.perf_counter() - started) * 1000
            token = out.logits[:, -1:].argmax(-1)
            check_agree(logits, token)
            if step >= warmup:
                for name, ms in step_ms.items():
                    times[name].append(ms)
    med = {name: statistics.median(values) for name, values in times.items()}
    return {
        "step_ratio": round(med["pipeline"] / med["whole"], 3),
        "step_ratio_layers": round(med["layers"] / med["single"], 3),
        "step_ms_pipeline": round(med["pipeline"], 2),
        "step_ms_monolithic": round(med["whole"], 2),
        "step_ms_three_shards": round(med["layers"], 2),
        "step_ms_one_shard_0_30": round(med["single"], 2),
        "steps": steps,
        "prompt_tokens": length,
    }


def run_pipeline(
    shards: Sequence[Shard], caches: Sequence[DynamicCache], hidden: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Hidden states through the shards in order, and the summed time spent inside them (ms)."""
    inside = 0.0
    for shard, cache in zip(shards, caches, strict=True):
        started = time.perf_counter()
        hidden = shard(hidden, positions, cache)
        inside += time.perf_counter() - started
    return hidden, inside * 1000


def rotated(variants: tuple[str, ...], step: int) -> tuple[str, ...]:
    """Rotate the order each step so drift on a shared machine hits every variant alike."""
    k = step % len(variants)
    return variants[k:] + variants[:k]


def check_agree(pipeline_logits: torch.Tensor, token: torch.Tensor) -> None:
    if int(pipeline_logits[0, -1].argmax()) != int(token):
        raise RuntimeError("the shard pipeline and the monolithic model chose different tokens")


def log(message: str) -> None:
    print(f"shards: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
