"""A network under load: K concurrent clients, each with its own wallet and session, through 3 real node processes.

    python benchmarks/load.py [--ks 1,8,32] [--tokens 32]     # prints one JSON line; progress on stderr

anvil, the contracts and three `p2pnode serve` processes over SmolLM2-135M fp32 (layers 0–10, 10–20, 20–30),
started by `LocalNetwork`. For each K, K fresh wallets are funded on anvil; each client (an `InferenceClient` in a
thread of this process, relay mode, greedy) loads its head, waits at a barrier, then generates `--tokens` tokens
from a prompt of its own. Measured per K: aggregate decode tokens per second from the barrier to the last client
done (`agg_tok_s_kK`), per-client tokens/s (`client_tok_s_p50_kK`, `client_tok_s_p99_kK`: the p99 of the slowest
side, i.e. the 1st percentile of rates), `errors` (generations that raised), `speedup_k8` = agg_tok_s_k8 /
agg_tok_s_k1. After every K the nodes are stopped gracefully (they claim what they hold) and
`settlement_exact` checks on chain that every (client, node, session) was paid exactly what the client's
receipts for it said (price × tokens that node computed). `node_rss_mb` gives each node's resident memory at
start and at the end, against its bound: start + its KV budget (`--budget-tokens` × the bytes a token's keys and
values take in its layers).

The clients share this machine's CPUs with the nodes (each client runs the embedding and the LM head for its own
tokens), so on a small host the aggregate is bounded by the clients' own compute as well as by the nodes'.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from eth_account import Account

from client.inference import GenerationResult, InferenceClient
from devkit.localnet import LocalNetwork, NodeSpec
from p2pllm.chain import Chain
from p2pllm.models import resolve_model

BUDGET_TOKENS = 8192


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_k(net: LocalNetwork, model: str, k: int, tokens: int) -> tuple[float, list[float], int, list[tuple]]:
    """K clients at once: (aggregate tok/s, per-client tok/s, errors, [(chain, result)])."""
    funder = net.chain(0)
    keys = [Account.create() for _ in range(k)]
    for key in keys:
        funder.w3.provider.make_request("anvil_setBalance", [key.address, hex(10**19)])
    barrier = threading.Barrier(k + 1)
    finished: list[float] = []

    def client(i: int) -> tuple[Chain, GenerationResult | None]:
        chain = Chain.connect(net.anvil.rpc_url, keys[i], net.deployment)
        inference = InferenceClient(chain, model, threads=1, reserve_ahead=1, verify_rate=0.0)
        prompt = [1, *range(100 + 7 * i, 100 + 7 * i + 4 + i % 5)]
        result = GenerationResult(len(prompt))
        try:
            barrier.wait(600)
            list(inference.generate(prompt, tokens, alpha=1.0, result=result, stop_at_eos=False))
            return chain, result
        except Exception as exc:  # counted as an error, reported
            say(f"client {i} failed: {type(exc).__name__}: {exc}")
            return chain, None
        finally:
            finished.append(time.perf_counter())
            inference.close()

    with concurrent.futures.ThreadPoolExecutor(k) as pool:
        futures = [pool.submit(client, i) for i in range(k)]
        barrier.wait(600)
        started = time.perf_counter()
        outcomes = [f.result() for f in futures]
    wall = max(finished) - started
    done = [(chain, r) for chain, r in outcomes if r is not None]
    rates = [r.tokens_per_s for _, r in done]
    agg = sum(len(r.token_ids) for _, r in done) / wall
    return agg, rates, k - len(done), done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,8,32", help="concurrent clients per run")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per client")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    source = resolve_model("smollm2-135m")
    model = str(source.path)
    specs = [NodeSpec(name, start, end, "0.000001", account, ("--budget-tokens", str(BUDGET_TOKENS)))
             for name, start, end, account in (("A", 0, 10, 1), ("B", 10, 20, 2), ("C", 20, 30, 3))]
    out: dict[str, object] = {"tokens": args.tokens, "ks": ks}
    errors = 0
    exact = True
    rss: dict[str, list[float]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, LocalNetwork(Path(tmp), model, specs, log=say) as net:
        for name, node in net.nodes.items():
            rss[name] = [round(rss_mb(node.process.pid), 1)]
        pending: list[tuple] = []
        for k in ks:
            agg, rates, failed, done = run_k(net, model, k, args.tokens)
            errors += failed
            pending += done
            out[f"agg_tok_s_k{k}"] = round(agg, 2)
            if rates:
                out[f"client_tok_s_p50_k{k}"] = round(statistics.median(rates), 2)
                out[f"client_tok_s_p99_k{k}"] = round(sorted(rates)[int(0.01 * (len(rates) - 1))], 2)
            say(f"K={k}: {agg:.1f} tok/s in all, {failed} error(s)")
        for name, node in net.nodes.items():
            rss[name].append(round(rss_mb(node.process.pid), 1))
        stopped = net.stop_nodes()  # graceful: each node claims what it holds
        for chain, result in pending:
            for hop in result.hops:
                paid = chain.paid_for(chain.address, hop.node, hop.session_id)
                if paid != hop.cost_wei:
                    exact = False
                    say(f"settlement mismatch: client {chain.address} node {hop.node}: paid {paid}, "
                        f"owed {hop.cost_wei}")
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
    targets_missed = [name for name, ok in (("errors", errors == 0), ("settlement_exact", exact),
                                            ("speedup_k8", float(out.get("speedup_k8", 3)) >= 3),  # type: ignore[arg-type]
                                            ("node_rss_within_bound", out["node_rss_within_bound"])) if not ok]
    out.update({"targets": {"errors": 0, "settlement_exact": True, "speedup_k8": 3}, "targets_met": not targets_missed,
                "targets_missed": targets_missed, "wall_s": round(time.perf_counter() - started, 1)})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
