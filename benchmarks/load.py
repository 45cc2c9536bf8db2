"""A network under load: K concurrent clients, each with its own wallet and session, through 3 real node processes.

    python benchmarks/load.py [--ks 1,8,32] [--tokens 32] [--repeats 3] [--processes 8] [--node-cpus none]
                              [--client-cpus none] [--node-flags "--wave-fraction 1"]
    # prints one JSON line; progress on stderr

anvil, the contracts and three `p2pnode serve` processes over SmolLM2-135M fp32 (layers 0–10, 10–20, 20–30),
started by `LocalNetwork`. For each K, K fresh wallets are funded on anvil; the K clients (`InferenceClient`s,
relay mode, greedy) are spread over up to `--processes` worker processes, a thread each, so that they do not share
one interpreter (as they would not share one machine); each loads its head and warms up with a one-token
generation (it discovers the market and reserves escrow for two sessions in one deposit: what a client does once,
not per generation), waits at a barrier shared by all of them, then generates `--tokens` tokens from a prompt of
its own. `--node-cpus` and `--client-cpus` pin the nodes
and the client processes (default: no pinning).

Every K runs `--repeats` times, the order of the Ks alternating (ascending, descending, ...) so that a drift of
the host does not favour one K. Measured per K: the median over the runs of aggregate tokens per second from the
barrier to the last client done (`agg_tok_s_kK`, each run in `agg_tok_s_kK_runs`), per-client decode tokens/s over
all runs (`client_tok_s_p50_kK`, `client_tok_s_p99_kK`: the p99 of the slowest side, i.e. the 1st percentile of
rates), each client's time to first token (`ttft_s_p50_kK`, `ttft_s_max_kK`), each node's mean decode batch
(`mean_batch_kK`, from its /metrics) and how many prompts it ran in batched prefills (`prompts_batched_kK`: "P in
B" forwards), `errors` (generations that raised),
`speedup_k8` = median agg_tok_s_k8 / median agg_tok_s_k1 (and `speedup_k8_runs`, the ratio within each run).
After the last run the nodes are stopped gracefully (they claim what they hold) and `settlement_exact` checks on
chain that every (client, node, session) was paid exactly what the client's receipts for it said (price × tokens
that node computed). `node_rss_mb` gives each node's resident memory at start and at the end, against its bound:
start + its KV budget (`--budget-tokens` × the bytes a token's keys and values take in its layers).

The clients share this machine's CPUs with the nodes (each client runs the embedding and the LM head for its own
tokens), so on a small host the aggregate is bounded by the clients' own compute as well as by the nodes'.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import httpx
from eth_account import Account

from client.inference import GenerationResult, InferenceClient
from devkit.localnet import LocalNetwork, NodeSpec
from p2pllm.chain import Chain, Deployment
from p2pllm.cpus import format_cpu_list, parse_cpu_option, pin_process
from p2pllm.models import resolve_model

BUDGET_TOKENS = 8192


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass(frozen=True)
class ClientOutcome:
    """What one client's generation left to measure and to settle (sent back from its worker process)."""

    address: str
    tokens: int
    tokens_per_s: float
    hops: tuple[tuple[str, bytes, int], ...]  # (node, session id, cost in wei) per hop
    finished: float  # time.monotonic() when it ended: CLOCK_MONOTONIC, one clock for all processes
    ttft_s: float = 0.0  # route session open + prefill through every hop + the first token from the head
    error: str | None = None


def _clients(rpc_url: str, deployment: Deployment, model: str, jobs: list[tuple[int, str]], tokens: int,
             barrier: Barrier, results: Queue, cpus: frozenset[int] | None) -> None:
    """A worker process (on `cpus` when given): one thread per client in `jobs` ((index, private key)); each
    loads its head, warms up (one token: market discovery and escrow deposit), waits at the barrier shared with
    every other client and the parent, generates, and puts its `ClientOutcome`."""
    if cpus is not None:
        pin_process(cpus)

    def client(i: int, key: str) -> None:
        account = Account.from_key(key)
        inference: InferenceClient | None = None
        try:
            chain = Chain.connect(rpc_url, account, deployment)
            inference = InferenceClient(chain, model, threads=1, reserve_ahead=2, verify_rate=0.0)
            prompt = [1, *range(100 + 7 * i, 100 + 7 * i + 4 + i % 5)]
            warm = GenerationResult(2)
            list(inference.generate([1, 2], 1, alpha=1.0, result=warm, stop_at_eos=False))
            result = GenerationResult(len(prompt))
            barrier.wait(600)
            list(inference.generate(prompt, tokens, alpha=1.0, result=result, stop_at_eos=False))
            hops = tuple((h.node, h.session_id, h.cost_wei) for h in (*warm.hops, *result.hops))
            results.put(ClientOutcome(account.address, len(result.token_ids), result.tokens_per_s, hops,
                                      time.monotonic(), result.ttft_s))
        except Exception as exc:  # counted as an error, reported
            results.put(ClientOutcome(account.address, 0, 0.0, (), time.monotonic(),
                                      error=f"{type(exc).__name__}: {exc}"))
        finally:
            if inference is not None:
                inference.close()

    threads = [threading.Thread(target=client, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


COUNTERS = ("p2pllm_decode_batches", "p2pllm_decode_batched_steps", "p2pllm_prompt_batches",
            "p2pllm_batched_prompts")


def batch_counters(endpoint: str) -> list[float]:
    """(decode rounds, decode steps, batched prefills, prompts in them) a node has run, from its /metrics."""
    values = {}
    for line in httpx.get(f"{endpoint}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in COUNTERS:
            values[name] = float(value)
    return [values[name] for name in COUNTERS]


def run_k(net: LocalNetwork, model: str, k: int, tokens: int, processes: int,
          cpus: frozenset[int] | None = None) -> tuple[float, list[ClientOutcome]]:
    """K clients at once, spread over `processes` worker processes (on `cpus` when given): (aggregate tok/s,
    outcomes)."""
    funder = net.chain(0)
    keys = [Account.create() for _ in range(k)]
    for key in keys:
        funder.w3.provider.make_request("anvil_setBalance", [key.address, hex(10**19)])
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(k + 1)
    results: Queue = context.Queue()
    assert net.deployment is not None
    workers = [context.Process(target=_clients, args=(net.anvil.rpc_url, net.deployment, model,
                                                      [(i, keys[i].key.hex()) for i in range(p, k, processes)],
                                                      tokens, barrier, results, cpus))
               for p in range(min(processes, k))]
    for worker in workers:
        worker.start()
    barrier.wait(600)
    started = time.monotonic()
    outcomes = [results.get(timeout=1800) for _ in range(k)]
    for worker in workers:
        worker.join(60)
    for outcome in outcomes:
        if outcome.error is not None:
            say(f"client {outcome.address} failed: {outcome.error}")
    wall = max(o.finished for o in outcomes) - started
    return sum(o.tokens for o in outcomes if o.error is None) / wall, outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,8,32", help="concurrent clients per run")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per client")
    parser.add_argument("--processes", type=int, default=8,
                        help="client processes (clients are spread over them, threads within each)")
    parser.add_argument("--node-cpus", default="none",
                        help="CPU list the nodes are pinned to (`p2pnode serve --cpus`), or none")
    parser.add_argument("--client-cpus", default="none", help="CPU list the client processes are pinned to, or none")
    parser.add_argument("--node-flags", default="",
                        help="extra `p2pnode serve` flags for every node, e.g. \"--wave-fraction 1\"")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of every K, in alternating order (K ascending, then descending, ...); "
                             "figures are medians over them")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    node_cpus, client_cpus = parse_cpu_option(args.node_cpus), parse_cpu_option(args.client_cpus)
    ks = [int(k) for k in args.ks.split(",")]
    source = resolve_model("smollm2-135m")
    model = str(source.path)
    flags = ("--budget-tokens", str(BUDGET_TOKENS), *shlex.split(args.node_flags))
    specs = [NodeSpec(name, start, end, "0.000001", account, flags)
             for name, start, end, account in (("A", 0, 10, 1), ("B", 10, 20, 2), ("C", 20, 30, 3))]
    out: dict[str, object] = {"tokens": args.tokens, "ks": ks, "processes": args.processes, "repeats": args.repeats,
                              "node_flags": args.node_flags,
                              "node_cpus": format_cpu_list(node_cpus) if node_cpus else "any",
                              "client_cpus": format_cpu_list(client_cpus) if client_cpus else "any"}
    errors = 0
    exact = True
    rss: dict[str, list[float]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, LocalNetwork(Path(tmp), model, specs, log=say,
                                                                          node_cpus=node_cpus) as net:
        for name, node in net.nodes.items():
            rss[name] = [round(rss_mb(node.process.pid), 1)]
        pending: list[ClientOutcome] = []
        aggs: dict[int, list[float]] = {k: [] for k in ks}
        rates: dict[int, list[float]] = {k: [] for k in ks}
        ttfts: dict[int, list[float]] = {k: [] for k in ks}
        rounds: dict[int, dict[str, list[float]]] = {k: {name: [0.0] * len(COUNTERS) for name in net.nodes}
                                                     for k in ks}
        for repeat in range(args.repeats):
            for k in ks if repeat % 2 == 0 else list(reversed(ks)):
                before = {name: batch_counters(node.endpoint) for name, node in net.nodes.items()}
                agg, outcomes = run_k(net, model, k, args.tokens, args.processes, client_cpus)
                after = {name: batch_counters(node.endpoint) for name, node in net.nodes.items()}
                for name in after:
                    for i in range(len(COUNTERS)):
                        rounds[k][name][i] += after[name][i] - before[name][i]
                done = [o for o in outcomes if o.error is None]
                rates[k] += [o.tokens_per_s for o in done]
                ttfts[k] += [o.ttft_s for o in done]
                failed = k - len(done)
                errors += failed
                pending += done
                aggs[k].append(agg)
                say(f"run {repeat + 1}/{args.repeats} K={k}: {agg:.1f} tok/s in all, {failed} error(s)")
        for k in ks:
            out[f"mean_batch_k{k}"] = {name: round(steps / max(batches, 1), 2)
                                       for name, (batches, steps, _, _) in rounds[k].items()}
            out[f"prompts_batched_k{k}"] = {name: f"{int(prompts)} in {int(batches)}"
                                            for name, (_, _, batches, prompts) in rounds[k].items()}
            out[f"agg_tok_s_k{k}"] = round(statistics.median(aggs[k]), 2)
            out[f"agg_tok_s_k{k}_runs"] = [round(a, 2) for a in aggs[k]]
            if rates[k]:
                out[f"client_tok_s_p50_k{k}"] = round(statistics.median(rates[k]), 2)
                out[f"client_tok_s_p99_k{k}"] = round(sorted(rates[k])[int(0.01 * (len(rates[k]) - 1))], 2)
                out[f"ttft_s_p50_k{k}"] = round(statistics.median(ttfts[k]), 3)
                out[f"ttft_s_max_k{k}"] = round(max(ttfts[k]), 3)
        for name, node in net.nodes.items():
            rss[name].append(round(rss_mb(node.process.pid), 1))
        stopped = net.stop_nodes()  # graceful: each node claims what it holds
        reader = net.chain(0)
        for outcome in pending:
            for node, session_id, cost_wei in outcome.hops:
                paid = reader.paid_for(outcome.address, node, session_id)
                if paid != cost_wei:
                    exact = False
                    say(f"settlement mismatch: client {outcome.address} node {node}: paid {paid}, owed {cost_wei}")
        out["node_exit_codes"] = stopped
    config = json.loads((source.path / "config.json").read_text())
    kv_bytes_per_token = 2 * 10 * config["num_key_value_heads"] * (
        config["hidden_size"] // config["num_attention_heads"]) * 4
    bound = BUDGET_TOKENS * kv_bytes_per_token / 2**20
    out.update({"errors": errors, "settlement_exact": exact, "node_rss_mb": rss,
                "node_rss_bound_over_start_mb": round(bound, 1),
                "node_rss_within_bound": all(end <= start + bound for start, end in rss.values())})
    if 1 in ks and 8 in ks:
        out["speedup_k8"] = round(float(out["agg_tok_s_k8"]) / float(out["agg_tok_s_k1"]), 2)  # type: ignore[arg-type]
        out["speedup_k8_runs"] = [round(b / a, 2) for a, b in zip(aggs[1], aggs[8], strict=True)]  # same repeat
    targets_missed = [name for name, ok in (("errors", errors == 0), ("settlement_exact", exact),
                                            ("speedup_k8", float(out.get("speedup_k8", 3)) >= 3),  # type: ignore[arg-type]
                                            ("node_rss_within_bound", out["node_rss_within_bound"])) if not ok]
    out.update({"targets": {"errors": 0, "settlement_exact": True, "speedup_k8": 3}, "targets_met": not targets_missed,
                "targets_missed": targets_missed, "wall_s": round(time.perf_counter() - started, 1)})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
