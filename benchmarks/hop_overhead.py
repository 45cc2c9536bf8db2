"""Per-hop overhead of serving over HTTP: one decode step at hidden size 576 (SmolLM2's width) through a real
`p2pnode serve` process on loopback, paid with a receipt, versus the same shard called in-process.

    python benchmarks/hop_overhead.py [--steps 300]     # prints one JSON line

overhead = median(HTTP step: encode + POST + receipt verification + ledger write + decode) − median(in-process
executor step, interleaved), both on a one-layer Llama of SmolLM2's shape with one torch thread. Also reported:
the median of (HTTP step − the compute time the node itself reports in Server-Timing for that step).
Client-side receipt signing is timed separately (`sign_ms_median`) and not part of the overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from client.hops import HopSession, Payer
from node.executor import ShardExecutor
from p2pllm.localnet import LocalNetwork, NodeSpec
from p2pllm.net import http_client
from p2pllm.shard import load_shard

HIDDEN = 576


def make_model(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1024, hidden_size=HIDDEN, intermediate_size=1536, num_hidden_layers=1,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def measure(model: Path, steps: int, workdir: Path) -> tuple[list[float], ...]:
    """Interleaved: one paid HTTP decode step through the node process, then one in-process step of the same
    shard here, so machine noise hits both alike. Returns (http ms without signing, in-process ms, signing ms,
    the node's own compute ms from its Server-Timing header)."""
    local = ShardExecutor(load_shard(model, 0, 1), budget_tokens=4096)
    local_sid = local.open_session(steps + 8).session_id
    local.forward(local_sid, torch.randn(1, 4, HIDDEN), torch.arange(4))
    spec = NodeSpec("A", 0, 1, "0.000000001", 1, ("--threads", "1"))
    with LocalNetwork(workdir, str(model), [spec], log=lambda m: print(m, file=sys.stderr)) as net, \
            http_client() as http:
        client = net.chain(2)
        client.deposit(10**18)
        node = net.nodes["A"]
        payer = Payer(client.address, bytes(client.account.key), client.escrow_domain())
        hop = HopSession(http, payer, node.address, node.endpoint, node.offer_id, 0, 1, 10**9, 0, steps + 8)
        hop.open()
        hop.forward(torch.randn(1, 4, HIDDEN))
        server_compute_ms: list[float] = []
        http_ms, local_ms, sign_ms = [], [], []
        for i in range(steps):
            x = torch.randn(1, 1, HIDDEN)
            signing_before = hop.signing_s
            started = time.perf_counter()
            hop.forward(x)
            elapsed = time.perf_counter() - started
            timing = dict(item.strip().split(";dur=") for item in hop.last_server_timing.split(","))
            server_compute_ms.append(float(timing["compute"]))
            signing = hop.signing_s - signing_before
            http_ms.append(1000 * (elapsed - signing))
            sign_ms.append(1000 * signing)
            started = time.perf_counter()
            local.forward(local_sid, x, torch.tensor([4 + i]))
            local_ms.append(1000 * (time.perf_counter() - started))
        hop.close()
    return http_ms, local_ms, sign_ms, server_compute_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = make_model(workdir / "model")
        http_ms, local_ms, sign_ms, node_compute_ms = measure(model, args.steps, workdir)
    http_median, local_median = statistics.median(http_ms), statistics.median(local_ms)
    print(json.dumps({
        "overhead_ms_median": round(http_median - local_median, 3),
        "http_step_ms_median": round(http_median, 3),
        "inprocess_step_ms_median": round(local_median, 3),
        "overhead_ms_median_vs_node_compute": round(
            statistics.median(h - c for h, c in zip(http_ms, node_compute_ms, strict=True)), 3),
        "http_step_ms_p90": round(statistics.quantiles(http_ms, n=10)[-1], 3),
        "sign_ms_median": round(statistics.median(sign_ms), 3),
        "hidden_size": HIDDEN, "steps": args.steps, "threads": 1, "target_ms": 2.0,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
