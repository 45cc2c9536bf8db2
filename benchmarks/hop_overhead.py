"""Per-hop overhead of serving over HTTP: one decode step at hidden size 576 (SmolLM2's width) through a real
`p2pnode serve` process on loopback, paid with a receipt, versus the same shard called in-process.

    python benchmarks/hop_overhead.py [--steps 300]     # prints one JSON line

overhead = median(HTTP step: encode + POST + receipt verification + ledger write + decode) − median(in-process
executor step), both on a one-layer Llama of SmolLM2's shape with one torch thread. Client-side receipt signing
is timed separately (`sign_ms_median`) and not part of the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from node.executor import ShardExecutor
from p2pllm import codec
from p2pllm.chain import Chain
from p2pllm.devnet import Anvil
from p2pllm.keys import dev_account
from p2pllm.net import http_client
from p2pllm.shard import load_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.node.helpers import PayingSession, start_node

HIDDEN = 576


def make_model(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1024, hidden_size=HIDDEN, intermediate_size=1536, num_hidden_layers=1,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def local_step_ms(model: Path, steps: int) -> list[float]:
    executor = ShardExecutor(load_shard(model, 0, 1), budget_tokens=4096)
    sid = executor.open_session(steps + 8).session_id
    executor.forward(sid, torch.randn(1, 4, HIDDEN), torch.arange(4))
    times = []
    for i in range(steps):
        x = torch.randn(1, 1, HIDDEN)
        started = time.perf_counter()
        executor.forward(sid, x, torch.tensor([4 + i]))
        times.append(1000 * (time.perf_counter() - started))
    return times


def http_step_ms(model: Path, steps: int, workdir: Path) -> tuple[list[float], list[float]]:
    with Anvil() as anvil:
        deployment = Chain.connect(anvil.rpc_url, dev_account(0)).deploy_contracts(
            "anvil", anvil.rpc_url, 2 * 86400, 86400, 600)
        deployment_file = workdir / "deployment.json"
        deployment.save(deployment_file)
        client = Chain.connect(anvil.rpc_url, dev_account(2), deployment)
        client.deposit(10**18)
        node = start_node(["--layers", "0-1", "--price", "0.000000001", "--model", str(model), "--port", "0",
                           "--deployment", str(deployment_file), "--dev-account", "1", "--threads", "1",
                           "--data-dir", str(workdir / "node"), "--claim-interval", "3600"], cwd=workdir)
        try:
            with http_client() as http:
                info = http.get(f"{node.endpoint}/info").json()
                session = PayingSession(http, node.endpoint, os.urandom(32), bytes(client.account.key),
                                        client.address, info["node"], client.escrow_domain(),
                                        int(info["price_wei_per_token"]), client.block_timestamp() + 3600)
                assert session.open(steps + 8).status_code == 201
                assert session.forward(torch.randn(1, 4, HIDDEN)).status_code == 200
                times, sign_times = [], []
                for _ in range(steps):
                    x = torch.randn(1, 1, HIDDEN)
                    signed = time.perf_counter()
                    header = session.receipt_header(session.tokens + 1)
                    started = time.perf_counter()
                    response = session.forward(x, receipt=header)
                    codec.decode(response.content)
                    times.append(1000 * (time.perf_counter() - started))
                    sign_times.append(1000 * (started - signed))
                    assert response.status_code == 200, response.text
        finally:
            node.stop()
    return times, sign_times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = make_model(workdir / "model")
        http_ms, sign_ms = http_step_ms(model, args.steps, workdir)
        local_ms = local_step_ms(model, args.steps)
    http_median, local_median = statistics.median(http_ms), statistics.median(local_ms)
    print(json.dumps({
        "overhead_ms_median": round(http_median - local_median, 3),
        "http_step_ms_median": round(http_median, 3),
        "inprocess_step_ms_median": round(local_median, 3),
        "http_step_ms_p90": round(statistics.quantiles(http_ms, n=10)[-1], 3),
        "sign_ms_median": round(statistics.median(sign_ms), 3),
        "hidden_size": HIDDEN, "steps": args.steps, "threads": 1, "target_ms": 2.0,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
