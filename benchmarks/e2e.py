"""End-to-end throughput: greedy generation of 64 tokens from a fixed prompt with SmolLM2-135M fp32 through
three node processes on loopback (layers 0–10, 10–20, 20–30, paid per hop on a local anvil), versus local
`transformers` generation of the same model in the same run.

    python benchmarks/e2e.py [--tokens 64] [--repeats 3] [--threads N]   # prints one JSON line

Payment is real: each node advertises a credit of 16 tokens' worth, so the client signs a cumulative receipt
every 16 tokens per hop (batched signing; `signing_share` reports its cost) and every request still carries a
receipt the node verifies and stores.

Fairness: every torch computation gets the same thread count (default: all cores): the local model, each
node process and the client's head. Only one node computes at a time in a pipeline, so nodes do not compete
for cores. The local baseline runs in its own process with the environment as given (libgomp's default spin
policy, the fastest for a single process); nodes and the client let idle OpenMP threads sleep, as `p2pnode`
and `p2pclient` do. Runs alternate local/distributed, each after a warm-up; medians are reported. EOS is
ignored on both sides so that both produce exactly `--tokens` tokens, and the sequences are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "--local-worker" not in sys.argv:
    # The client side runs as `p2pclient` does: idle OpenMP threads sleep while the nodes compute. The local
    # baseline runs in its own process with the environment as given (libgomp's default spinning).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from transformers import AutoModelForCausalLM

from client.inference import GenerationResult, InferenceClient
from p2pllm.localnet import LocalNetwork, NodeSpec
from p2pllm.models import resolve_model

PROMPT = "Explain in a few sentences why the sky is blue."
CLIENT_ACCOUNT = 5


def local_generate(model: AutoModelForCausalLM, ids: list[int], tokens: int) -> tuple[list[int], float]:
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist(), time.perf_counter() - started


def local_in_subprocess(ids: list[int], tokens: int, threads: int) -> tuple[list[int], float]:
    """One local generation in a fresh process (the baseline a user of plain transformers gets)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if "P2PLLM_BASELINE_OMP_WAIT_POLICY" in os.environ:
        env["OMP_WAIT_POLICY"] = os.environ["P2PLLM_BASELINE_OMP_WAIT_POLICY"]
    out = subprocess.run([sys.executable, __file__, "--local-worker", json.dumps(ids), "--tokens", str(tokens),
                          "--threads", str(threads)], env=env, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["token_ids"], data["seconds"]


def local_worker(ids: list[int], tokens: int) -> int:
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m").path, dtype=torch.float32).eval()
    local_generate(model, ids, 4)  # warm-up, as the distributed side gets
    token_ids, seconds = local_generate(model, ids, tokens)
    print(json.dumps({"token_ids": token_ids, "seconds": seconds}))
    return 0


def distributed_generate(client: InferenceClient, ids: list[int], tokens: int) -> GenerationResult:
    result = GenerationResult(len(ids))
    for _ in client.generate(ids, tokens, alpha=0.5, result=result, stop_at_eos=False):
        pass
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--local-worker", metavar="PROMPT_IDS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.local_worker:
        return local_worker(json.loads(args.local_worker), args.tokens)
    source = resolve_model("smollm2-135m")
    third = source.num_layers // 3
    credit = ("--credit", "0.000016")  # 16 tokens' worth: the client signs one receipt per 16 tokens per hop
    specs = [NodeSpec("A", 0, third, "0.000001", 1, credit), NodeSpec("B", third, 2 * third, "0.000001", 2, credit),
             NodeSpec("C", 2 * third, source.num_layers, "0.000001", 3, credit)]
    local_s, dist_s, ttft_s, signing = [], [], [], []
    matched = True
    with tempfile.TemporaryDirectory() as tmp, LocalNetwork(Path(tmp), str(source.path), specs,
                                                             log=lambda m: print(m, file=sys.stderr),
                                                             node_threads=args.threads) as net:
        chain = net.chain(CLIENT_ACCOUNT)
        chain.deposit(10**17)
        client = InferenceClient(chain, str(source.path), threads=args.threads)
        ids = client.prompt_ids(PROMPT, chat=True)
        distributed_generate(client, ids, 4)  # warm-up: connections, first-call allocations
        for _ in range(args.repeats):
            want, seconds = local_in_subprocess(ids, args.tokens, args.threads)
            local_s.append(seconds)
            result = distributed_generate(client, ids, args.tokens)
            dist_s.append(result.total_s)
            ttft_s.append(result.ttft_s)
            signing.append(result.signing_s / result.total_s)
            matched = matched and result.token_ids == want
        client.close()
    tps_local = args.tokens / statistics.median(local_s)
    tps_dist = args.tokens / statistics.median(dist_s)
    print(json.dumps({
        "tokens_per_s_distributed": round(tps_dist, 2),
        "tokens_per_s_local": round(tps_local, 2),
        "ratio": round(tps_dist / tps_local, 3),
        "ttft_s": round(statistics.median(ttft_s), 3),
        "tokens_match": matched,
        "signing_share": round(statistics.median(signing), 4),
        "tokens": args.tokens, "prompt_tokens": len(ids), "repeats": args.repeats, "threads": args.threads,
        "nodes": 3, "dtype": "float32", "model": source.name, "target_ratio": 0.85,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
