"""End-to-end throughput: greedy generation of 64 tokens from a fixed prompt with SmolLM2-135M fp32 through
three node processes on loopback (layers 0–10, 10–20, 20–30, paid per hop on a local anvil), versus local
`transformers` generation of the same model in the same run.

    python benchmarks/e2e.py [--tokens 64] [--repeats 5] [--threads N] [--dist-threads 1] [--dist-cpus auto]
                             [--transport relay|star]
    # prints one JSON line

The client runs as `p2pclient generate` does: relay mode by default (each step goes to the first node, which
pushes its output on to the next, and so on; the last node answers the client), or `--transport star`.

Payment is real: each node advertises a credit of 16 tokens' worth, so the client signs a cumulative receipt
every 16 tokens per hop (batched signing; `signing_share` reports its cost) and every request still carries a
receipt the node verifies and stores.

Fairness: the local baseline is measured in every configuration the distributed side could be accused of
denying it, each in its own process (model loaded once and warmed up, as the nodes are), and the ratio is
taken against the fastest (`local_configs` lists them all): all `--threads` cores, one thread, and one
thread pinned to the core the network runs on. The distributed side is configured as an operator of one
small host would run it: the client and every node use `--dist-threads` torch threads and are pinned to the
same core (`--dist-cpus`, `p2pnode serve --cpus`). A route is a pipeline, so only one of them computes at a
time; on one core each hop's hand-off is a switch on that CPU rather than a wake-up of another, possibly
halted, one. Nodes and the client let idle OpenMP threads sleep, as `p2pnode` and `p2pclient` do; the
baseline runs with the environment as given. Runs alternate baseline/distributed, each after a warm-up;
medians are reported. EOS is ignored on both sides so that both produce exactly `--tokens` tokens, and the
sequences are compared.
"""

from __future__ import annotations

import argparse
import contextlib
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
from devkit.localnet import LocalNetwork, NodeSpec
from p2pllm.cpus import allowed_cpus, format_cpu_list, parse_cpu_list, parse_cpu_option, pin_process
from p2pllm.models import resolve_model

PROMPT = "Explain in a few sentences why the sky is blue."
CLIENT_ACCOUNT = 5


def local_generate(model: AutoModelForCausalLM, ids: list[int], tokens: int) -> tuple[list[int], float]:
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist(), time.perf_counter() - started


class LocalWorker:
    """A process of its own holding the plain `transformers` model (the baseline a user of plain transformers
    gets), on `cpus` with `threads` torch threads, warmed up once; `generate()` times one generation in it."""

    def __init__(self, ids: list[int], tokens: int, threads: int, cpus: frozenset[int]) -> None:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if "P2PLLM_BASELINE_OMP_WAIT_POLICY" in os.environ:
            env["OMP_WAIT_POLICY"] = os.environ["P2PLLM_BASELINE_OMP_WAIT_POLICY"]
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--local-worker", json.dumps(ids), "--tokens", str(tokens),
             "--threads", str(threads), "--worker-cpus", format_cpu_list(cpus)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # loaded and warmed up

    def generate(self) -> tuple[list[int], float]:
        assert self.process.stdin is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        data = self._read()
        return data["token_ids"], data["seconds"]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _read(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"local baseline worker exited with {self.process.wait()}")
        return json.loads(line)


def local_worker(ids: list[int], tokens: int) -> int:
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m").path, dtype=torch.float32).eval()
    local_generate(model, ids, 4)  # warm-up, as the distributed side gets
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        token_ids, seconds = local_generate(model, ids, tokens)
        print(json.dumps({"token_ids": token_ids, "seconds": seconds}), flush=True)
    return 0


def baseline_configs(threads: int, dist_cpus: frozenset[int] | None) -> dict[str, tuple[int, frozenset[int]]]:
    """name -> (torch threads, CPUs) for every local configuration measured; the fastest is the baseline."""
    everywhere = allowed_cpus()
    configs = {f"threads{threads}": (threads, everywhere), "threads1": (1, everywhere)}
    if dist_cpus is not None and dist_cpus != everywhere:
        configs[f"threads1_cpus{format_cpu_list(dist_cpus)}"] = (1, dist_cpus)
    return configs


def distributed_generate(client: InferenceClient, ids: list[int], tokens: int) -> GenerationResult:
    result = GenerationResult(len(ids))
    for _ in client.generate(ids, tokens, alpha=0.5, result=result, stop_at_eos=False):
        pass
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the multi-threaded local baseline (default: all cores)")
    parser.add_argument("--dist-threads", type=int, default=1, help="torch threads of each node and the client")
    parser.add_argument("--dist-cpus", default="auto",
                        help="CPU list the client and every node are pinned to: auto (the last allowed CPU), "
                             "none (no pinning), or a list such as 1 or 0-1")
    parser.add_argument("--transport", choices=["relay", "star"], default="relay",
                        help="how the client drives the route (default relay, as p2pclient)")
    parser.add_argument("--local-worker", metavar="PROMPT_IDS_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--worker-cpus", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.local_worker:
        pin_process(parse_cpu_list(args.worker_cpus))
        torch.set_num_threads(args.threads)
        return local_worker(json.loads(args.local_worker), args.tokens)
    dist_cpus = parse_cpu_option(args.dist_cpus)
    configs = baseline_configs(args.threads, dist_cpus)
    source = resolve_model("smollm2-135m")
    third = source.num_layers // 3
    credit = ("--credit", "0.000016")  # 16 tokens' worth: the client signs one receipt per 16 tokens per hop
    specs = [NodeSpec("A", 0, third, "0.000001", 1, credit), NodeSpec("B", third, 2 * third, "0.000001", 2, credit),
             NodeSpec("C", 2 * third, source.num_layers, "0.000001", 3, credit)]
    local_s: dict[str, list[float]] = {name: [] for name in configs}
    dist_s, ttft_s, signing = [], [], []
    matched, reference = True, None
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        net = stack.enter_context(LocalNetwork(Path(tmp), str(source.path), specs,
                                               log=lambda m: print(m, file=sys.stderr), node_threads=args.dist_threads,
                                               node_cpus=dist_cpus))
        chain = net.chain(CLIENT_ACCOUNT)
        chain.deposit(10**17)
        # Spot checks off: this benchmark measures the transport (benchmarks/verification.py measures checks).
        client = InferenceClient(chain, str(source.path), threads=args.dist_threads, transport=args.transport,
                                 verify_rate=0.0)
        stack.callback(client.close)
        ids = client.prompt_ids(PROMPT, chat=True)
        workers = {}
        for name, (threads, cpus) in configs.items():
            print(f"loading the local baseline {name} ...", file=sys.stderr)
            workers[name] = LocalWorker(ids, args.tokens, threads, cpus)
            stack.callback(workers[name].close)
        if dist_cpus is not None:
            pin_process(dist_cpus)  # the client (after starting the workers, which set their own CPUs)
        distributed_generate(client, ids, 4)  # warm-up: connections, first-call allocations
        for repeat in range(args.repeats):
            for name, worker in workers.items():
                want, seconds = worker.generate()
                local_s[name].append(seconds)
                reference = want if reference is None else reference
                matched = matched and want == reference
            result = distributed_generate(client, ids, args.tokens)
            dist_s.append(result.total_s)
            ttft_s.append(result.ttft_s)
            signing.append(result.signing_s / result.total_s)
            matched = matched and result.token_ids == reference
            print(f"repeat {repeat + 1}/{args.repeats}: distributed {result.total_s:.2f} s, local "
                  + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in local_s.items()),
                  file=sys.stderr)
    local_tps = {name: args.tokens / statistics.median(v) for name, v in local_s.items()}
    best = max(local_tps, key=local_tps.__getitem__)
    tps_dist = args.tokens / statistics.median(dist_s)
    print(json.dumps({
        "transport": args.transport,
        "tokens_per_s_distributed": round(tps_dist, 2),
        "tokens_per_s_local": round(local_tps[best], 2),
        "ratio": round(tps_dist / local_tps[best], 3),
        "ttft_s": round(statistics.median(ttft_s), 3),
        "tokens_match": matched,
        "signing_share": round(statistics.median(signing), 4),
        "local_baseline": best,
        "local_configs": {name: round(v, 2) for name, v in local_tps.items()},
        "tokens": args.tokens, "prompt_tokens": len(ids), "repeats": args.repeats,
        "dist_threads": args.dist_threads, "dist_cpus": format_cpu_list(dist_cpus) if dist_cpus else "none",
        "nodes": 3, "dtype": "float32", "model": source.name, "target_ratio": 0.9,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
