"""Per-hop overhead of the stream path: one decode step at hidden size 576 (SmolLM2's width) through a real
`p2pnode serve` process on loopback, sent as a `Step` frame over the session's WebSocket with a receipt and
answered with a `StepResult` frame, versus the same shard called in-process.

    python benchmarks/hop_overhead.py [--steps 300] [--cpus auto]     # prints one JSON line

overhead = median(stream step: frame encode + send + receipt verification + ledger write + result frame +
decode) − median(in-process executor step, interleaved), both on a one-layer Llama of SmolLM2's shape with one
torch thread. The client's side runs on uvloop, as `InferenceClient` runs its streams. Also reported: the
median of (stream step − the compute time the node itself reports in the result frame). Client-side receipt
signing is timed separately (`sign_ms_median`) and not part of the overhead.

`--cpus` pins the node processes and this process (client and in-process baseline alike) to the same CPUs, as
`p2pnode serve --cpus` does for several nodes on one host: auto (default) = the last allowed CPU, none = no
pinning, or a list such as 0-1.

The headline node gives no credit, so every step carries a newly signed receipt that the node recovers and
stores (the worst case). A second node, interleaved, advertises a credit of 16 tokens' worth, as the
end-to-end benchmark's nodes do: the client then signs once per 16 steps and the node re-checks a repeated
receipt without recovering or storing it again (`overhead_ms_median_credit16`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import uvloop

from client.hops import HopSession, Payer
from devkit.localnet import LocalNetwork, NodeSpec
from node.executor import ShardExecutor
from p2pllm.cli_common import format_eth
from p2pllm.cpus import format_cpu_list, parse_cpu_option, pin_process
from p2pllm.shard import load_shard
from p2pllm.wire import StepResult

HIDDEN = 576


def make_model(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1024, hidden_size=HIDDEN, intermediate_size=1536, num_hidden_layers=1,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


PRICE_WEI = 10**9
CREDIT_TOKENS = 16


@dataclass
class Samples:
    stream_ms: list[float] = field(default_factory=list)  # one paid step over the stream, signing excluded
    sign_ms: list[float] = field(default_factory=list)
    node_compute_ms: list[float] = field(default_factory=list)  # what the node reports in the result frame

    async def step(self, hop: HopSession, x: torch.Tensor) -> None:
        signing_before = hop.signing_s
        started = time.perf_counter()
        await hop.send(hop.step(hop.tokens, x))
        result = await hop.recv(30.0)
        elapsed = time.perf_counter() - started
        if not isinstance(result, StepResult):
            raise RuntimeError(f"node answered {result}")
        hop.served(result, int(x.shape[1]))
        signing = hop.signing_s - signing_before
        self.stream_ms.append(1000 * (elapsed - signing))
        self.sign_ms.append(1000 * signing)
        self.node_compute_ms.append(result.compute_ms)


def measure(model: Path, steps: int, workdir: Path, cpus: frozenset[int] | None
            ) -> tuple[Samples, Samples, list[float]]:
    """Interleaved: one paid HTTP decode step through each node process, then one in-process step of the same
    shard here, so machine noise hits all alike. Returns (node without credit, node with credit, in-process
    ms)."""
    local = ShardExecutor(load_shard(model, 0, 1), budget_tokens=4096)
    local_sid = local.open_session(steps + 8).session_id
    local.forward(local_sid, torch.randn(1, 4, HIDDEN), torch.arange(4))
    price, credit = (format_eth(wei).removesuffix(" ETH") for wei in (PRICE_WEI, CREDIT_TOKENS * PRICE_WEI))
    specs = [NodeSpec("A", 0, 1, price, 1, ("--threads", "1")),
             NodeSpec("B", 0, 1, price, 3, ("--threads", "1", "--credit", credit))]
    with LocalNetwork(workdir, str(model), specs, log=lambda m: print(m, file=sys.stderr), node_cpus=cpus) as net:
        client = net.chain(2)
        client.reserve([net.nodes["A"].address, net.nodes["B"].address], [10**17, 10**17], deposit_wei=2 * 10**17)
        payer = Payer(client.address, bytes(client.account.key), client.escrow_domain())

        async def run() -> tuple[Samples, Samples, list[float]]:
            hops = []
            for name, credit_wei in (("A", 0), ("B", CREDIT_TOKENS * PRICE_WEI)):
                node = net.nodes[name]
                hop = HopSession(payer, node.address, node.endpoint, node.offer_id, 0, 1, PRICE_WEI, credit_wei,
                                 steps + 8, torch.float32, HIDDEN)
                await hop.open()
                await Samples().step(hop, torch.randn(1, 4, HIDDEN))
                hops.append(hop)
            strict, credited, local_ms = Samples(), Samples(), []
            for i in range(steps):
                x = torch.randn(1, 1, HIDDEN)
                await strict.step(hops[0], x)
                await credited.step(hops[1], x)
                started = time.perf_counter()
                local.forward(local_sid, x, torch.tensor([4 + i]))
                local_ms.append(1000 * (time.perf_counter() - started))
            for hop in hops:
                await hop.close()
            return strict, credited, local_ms

        return uvloop.run(run())  # the event loop the client (`InferenceClient`) runs its streams on


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cpus", default="auto", help="auto (the last allowed CPU), none, or a CPU list")
    args = parser.parse_args(argv)
    cpus = parse_cpu_option(args.cpus)
    if cpus is not None:
        pin_process(cpus)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = make_model(workdir / "model")
        strict, credited, local_ms = measure(model, args.steps, workdir, cpus)
    local_median = statistics.median(local_ms)
    stream_median = statistics.median(strict.stream_ms)
    overhead = stream_median - local_median

    def vs_node(samples: Samples) -> float:
        pairs = zip(samples.stream_ms, samples.node_compute_ms, strict=True)
        return round(statistics.median(total - compute for total, compute in pairs), 3)

    print(json.dumps({
        "overhead_ms_median": round(overhead, 3),
        "stream_step_ms_median": round(stream_median, 3),
        "inprocess_step_ms_median": round(local_median, 3),
        # On a shared VM both medians move with the host; their ratio moves much less.
        "overhead_over_inprocess_step": round(overhead / local_median, 3),
        "overhead_ms_median_vs_node_compute": vs_node(strict),
        "stream_step_ms_p90": round(statistics.quantiles(strict.stream_ms, n=10)[-1], 3),
        "sign_ms_median": round(statistics.median(strict.sign_ms), 3),
        "overhead_ms_median_credit16": round(statistics.median(credited.stream_ms) - local_median, 3),
        "overhead_ms_median_credit16_vs_node_compute": vs_node(credited),
        "hidden_size": HIDDEN, "steps": args.steps, "threads": 1,
        "cpus": format_cpu_list(cpus) if cpus else "none", "target_ms": 1.5,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
