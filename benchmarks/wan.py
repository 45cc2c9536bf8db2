"""Relay versus star transport over emulated wide-area links: greedy generation of 64 tokens with SmolLM2-135M
fp32 through three node processes (layers 0–10, 10–20, 20–30, paid per hop on a local anvil), with a fixed
one-way delay d on every link, client↔node and node↔node, for d in {0, 5, 25} ms.

    python benchmarks/wan.py [--tokens 64] [--delays 0,5,25] [--reps 3] [--threads 1] [--cpus auto]
    # prints one JSON line; progress on stderr

Links. Every link is a latency-injecting TCP proxy (`benchmarks/wanlink.py`) on loopback that holds each chunk
for d in each direction. Each node advertises its client→node proxy on-chain (`p2pnode serve --endpoint`), so
the client reaches it only through that link; a relaying node dials the next node through the node→node proxy
of that ordered pair (`InferenceClient(link_endpoint=...)`). Star mode uses no node→node link. One network
serves every delay: only the proxies' delay changes between runs. Connection set-up is not delayed (only
data), and it happens in the prefill anyway, which is not measured.

Measured: decode tokens/s (the prefill, i.e. time to first token, excluded, as `GenerationResult.tokens_per_s`
does), relay and star alternating (order swapped every repetition), `--reps` each per delay, median reported.

Ideal. A decode step on a route of h hops cannot beat its compute plus the h + 1 one-way delays one token's
hidden state must cross (client → node 1 → … → node h → client): ideal tok/s = 1 / (compute_s + (h + 1)·d).
compute_s (`compute_ms_per_token`) is measured in this run, in this process, interleaved with the distributed
runs (once per repetition and delay, median of all): the decode loop the client runs (embedding, greedy LM head)
around the same three shards the nodes serve (`load_shard` + `ShardExecutor`: the nodes' code path and
kernels), with the same torch threads on the same CPUs, no network and no payment, as the mean decode step of a
generation of the same length (the statistic the distributed tokens/s is). Chosen over the nodes' self-reported
compute because that covers only the shards (not the client's head), arrives only for the last step and is
measured by the system under test; over plain `transformers` because the shards are what the nodes run. Its
token ids are compared with the distributed ones (`tokens_match_local`).

Compute slows down when the CPU idles between stages (caches go cold, the core sleeps; on a VM the virtual
CPU is descheduled), which every network with delays makes it do and a back-to-back run never does. So the
same in-process pipeline is also run sleeping d at each of its h + 1 crossings, and its mean step less the
(h + 1)·d of sleep is `compute_ms_per_token_idle_dN`; `ideal_idle_tok_s_dN` = 1 / (that + (h + 1)·d), the
ideal the hardware allows, and `relay_vs_ideal_idle_dN` relay's share of it. `star_vs_star_ideal_idle_dN`
compares star with its own bound, 1 / (idle compute + 2·h·d). The targets use the back-to-back ideal.

CPUs. As in `e2e.py`: the client and every node use `--threads` torch threads and are pinned to `--cpus`
(auto = the last allowed CPU, none = no pinning, or a list). The proxies' thread is moved to the other allowed
CPUs when there are any (a network does not run on the hosts' cores); otherwise it shares them.

Targets: relay_vs_star_d25 ≥ 1.2, relay_vs_ideal_d25 ≥ 0.9, relay_vs_star_d0 ≥ 0.97; relay_vs_star_d5 is
reported only. `targets_met` is true when every numeric target whose delay was run is met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# The client side runs as `p2pclient` does: idle OpenMP threads sleep while the nodes compute.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from wanlink import CLIENT, LinkSet, reserve_port

from client.inference import GenerationResult, InferenceClient
from devkit.localnet import LocalNetwork, NodeSpec
from node.executor import ShardExecutor
from p2pllm.cpus import allowed_cpus, format_cpu_list, parse_cpu_option, pin_process
from p2pllm.head import Head
from p2pllm.models import ModelSource, resolve_model
from p2pllm.shard import load_shard

PROMPT = "Explain in a few sentences why the sky is blue."
CLIENT_ACCOUNT = 5
NODES = ("A", "B", "C")
TRANSPORTS = ("relay", "star")
PRICE_ETH = "0.000001"
CREDIT_ETH = "0.000016"  # 16 tokens' worth: the client signs one receipt per 16 tokens per hop
TARGETS: dict[str, float | str] = {"relay_vs_star_d25": 1.2, "relay_vs_ideal_d25": 0.9, "relay_vs_star_d5": "report",
                                   "relay_vs_star_d0": 0.97}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LocalPipeline:
    """The route's compute without the network: the client's head around the nodes' three shards, in process.
    With `gap_s`, the pipeline sleeps that long at each of the route's crossings (before every shard and before
    the head), as it would wait for the links, so the CPU goes idle between stages as it does in the network."""

    def __init__(self, source: ModelSource, head: Head, spans: Sequence[tuple[int, int]]) -> None:
        self.head = head
        self.executors = [ShardExecutor(load_shard(source, start, end), budget_tokens=4096) for start, end in spans]

    @property
    def crossings(self) -> int:
        return len(self.executors) + 1

    def generate(self, ids: list[int], tokens: int, gap_s: float = 0.0) -> tuple[list[int], float]:
        """Greedy token ids and the mean decode step in seconds (prefill excluded), sleeps included."""
        sessions = [executor.open_session(len(ids) + tokens).session_id for executor in self.executors]
        try:
            with torch.inference_mode():
                out = [self._step(sessions, torch.tensor([ids]), 0, 0.0)]
                started = time.perf_counter()
                while len(out) < tokens:
                    out.append(self._step(sessions, torch.tensor([[out[-1]]]), len(ids) + len(out) - 1, gap_s))
                decode_s = time.perf_counter() - started
        finally:
            for executor, session in zip(self.executors, sessions, strict=True):
                executor.close_session(session)
        return out, decode_s / max(tokens - 1, 1)

    def _step(self, sessions: list[str], token_ids: torch.Tensor, position: int, gap_s: float) -> int:
        hidden = self.head.embed(token_ids)
        positions = torch.arange(position, position + int(token_ids.shape[1]))
        for executor, session in zip(self.executors, sessions, strict=True):
            if gap_s:
                time.sleep(gap_s)
            hidden = executor.forward(session, hidden, positions)
        if gap_s:
            time.sleep(gap_s)
        return self.head.greedy(hidden[:, -1:])  # as the client picks a greedy token


def distributed_generate(client: InferenceClient, ids: list[int], tokens: int) -> GenerationResult:
    result = GenerationResult(len(ids))
    for _ in client.generate(ids, tokens, alpha=0.5, result=result, stop_at_eos=False):
        pass
    return result


def parse_delays(text: str) -> list[float]:
    delays = [float(item) for item in text.split(",") if item.strip()]
    if not delays or any(d < 0 for d in delays):
        raise argparse.ArgumentTypeError(f"delays must be a comma-separated list of ms >= 0, got {text!r}")
    return delays


def delay_key(delay_ms: float) -> str:
    return f"d{delay_ms:g}".replace(".", "_")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delays", type=parse_delays, default=parse_delays("0,5,25"),
                        help="one-way delays in ms, comma-separated (default 0,5,25)")
    parser.add_argument("--reps", type=int, default=3, help="runs per transport and delay (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each node, the client and the "
                                                               "in-process compute measurement")
    parser.add_argument("--cpus", default="auto", help="auto (the last allowed CPU), none, or a CPU list")
    args = parser.parse_args(argv)
    if args.tokens < 2 or args.reps < 1:
        parser.error("--tokens must be >= 2 and --reps >= 1")
    cpus = parse_cpu_option(args.cpus)
    everywhere = allowed_cpus()
    source = resolve_model("smollm2-135m")
    third = source.num_layers // 3
    spans = [(i * third, (i + 1) * third if i < len(NODES) - 1 else source.num_layers) for i in range(len(NODES))]
    began = time.perf_counter()

    tok_s: dict[tuple[str, float], list[float]] = {}
    compute_s: list[float] = []  # in-process mean decode step, back to back
    idle_s: dict[float, list[float]] = {}  # the same, idling d at each crossing (the idle time itself taken out)
    load_start = os.getloadavg()[0]
    reference: list[int] | None = None
    tokens_match, local_match = True, True
    hop_counts: set[int] = set()
    failovers = 0
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        links = stack.enter_context(LinkSet(delay_s=0.0))
        links.mesh(NODES)
        specs = []
        for index, (name, (start, end)) in enumerate(zip(NODES, spans, strict=True)):
            port = reserve_port()  # the node binds it (SO_REUSEADDR); every link into the node forwards to it
            links.point(name, "127.0.0.1", port)
            specs.append(NodeSpec(name, start, end, PRICE_ETH, index + 1,
                                  ("--credit", CREDIT_ETH, "--port", str(port),
                                   "--endpoint", links.get(CLIENT, name).endpoint)))
        net = stack.enter_context(LocalNetwork(tmp, str(source.path), specs, log=log, node_threads=args.threads,
                                               node_cpus=cpus))
        by_address = {net.nodes[name].address.lower(): name for name in NODES}
        by_endpoint = {links.get(CLIENT, name).endpoint: name for name in NODES}
        for name in NODES:
            if net.nodes[name].endpoint != links.get(CLIENT, name).endpoint:
                raise SystemExit(f"node {name} advertises {net.nodes[name].endpoint}, not its link")

        def link_endpoint(from_node: str, to_endpoint: str) -> str:
            return links.get(by_address[from_node.lower()], by_endpoint[to_endpoint]).endpoint

        chain = net.chain(CLIENT_ACCOUNT)
        chain.deposit(10**17)
        clients = {}
        for transport in TRANSPORTS:
            clients[transport] = InferenceClient(chain, str(source.path), threads=args.threads, transport=transport,
                                                 link_endpoint=link_endpoint, verify_rate=0.0)
            stack.callback(clients[transport].close)
        ids = clients["relay"].prompt_ids(PROMPT, chat=True)
        log("loading the in-process pipeline (compute baseline) ...")
        local = LocalPipeline(source, clients["relay"].head, spans)
        if cpus is not None:
            pin_process(cpus)  # the client and the in-process baseline, on the nodes' CPUs
            spare = everywhere - cpus
            if spare:
                os.sched_setaffinity(links.native_thread_id, spare)  # the "network" off the hosts' CPUs
        local.generate(ids, 4)
        for transport in TRANSPORTS:  # warm-up: first-call allocations on every side
            distributed_generate(clients[transport], ids, 4)

        for delay_ms in args.delays:
            links.set_delay(delay_ms / 1000)
            for rep in range(args.reps):
                local_ids, step_s = local.generate(ids, args.tokens)
                compute_s.append(step_s)
                if delay_ms:
                    _, idle_step_s = local.generate(ids, args.tokens, delay_ms / 1000)
                    idle_s.setdefault(delay_ms, []).append(idle_step_s - local.crossings * delay_ms / 1000)
                else:
                    idle_s.setdefault(delay_ms, []).append(step_s)
                log(f"d={delay_ms:g} ms rep {rep + 1}/{args.reps} in-process compute: {1000 * step_s:.1f} ms/token "
                    f"back to back, {1000 * idle_s[delay_ms][-1]:.1f} ms/token idling d at each crossing")
                for transport in TRANSPORTS if rep % 2 == 0 else TRANSPORTS[::-1]:
                    result = distributed_generate(clients[transport], ids, args.tokens)
                    tok_s.setdefault((transport, delay_ms), []).append(result.tokens_per_s)
                    reference = result.token_ids if reference is None else reference
                    tokens_match = tokens_match and result.token_ids == reference
                    local_match = local_match and local_ids == result.token_ids
                    assert result.route is not None
                    hop_counts.add(len(result.route.hops))
                    failovers += len(result.failovers)
                    log(f"d={delay_ms:g} ms rep {rep + 1}/{args.reps} {transport}: {result.tokens_per_s:.2f} tok/s "
                        f"(ttft {result.ttft_s:.2f} s, {len(result.route.hops)} hops, "
                        f"{len(result.failovers)} failovers)")
        node_links_used = sum(link.connections_accepted for (source_name, _), link in links.links.items()
                              if source_name != CLIENT)

    if len(hop_counts) != 1:
        raise SystemExit(f"routes of different lengths were used: {sorted(hop_counts)}")
    hops = hop_counts.pop()
    compute = statistics.median(compute_s)
    out: dict[str, object] = {}
    ratios: dict[str, float] = {}
    for delay_ms in args.delays:
        key = delay_key(delay_ms)
        relay, star = (statistics.median(tok_s[(t, delay_ms)]) for t in TRANSPORTS)
        ideal = 1 / (compute + (hops + 1) * delay_ms / 1000)
        idle_compute = statistics.median(idle_s[delay_ms])
        ideal_idle = 1 / (idle_compute + (hops + 1) * delay_ms / 1000)
        out[f"relay_tok_s_{key}"] = round(relay, 3)
        out[f"star_tok_s_{key}"] = round(star, 3)
        ratios[f"relay_vs_star_{key}"] = out[f"relay_vs_star_{key}"] = round(relay / star, 3)
        ratios[f"relay_vs_ideal_{key}"] = out[f"relay_vs_ideal_{key}"] = round(relay / ideal, 3)
        out[f"ideal_tok_s_{key}"] = round(ideal, 3)
        out[f"compute_ms_per_token_idle_{key}"] = round(1000 * idle_compute, 3)
        out[f"ideal_idle_tok_s_{key}"] = round(ideal_idle, 3)
        out[f"relay_vs_ideal_idle_{key}"] = round(relay / ideal_idle, 3)
        out[f"star_vs_star_ideal_idle_{key}"] = round(star * (idle_compute + 2 * hops * delay_ms / 1000), 3)
    numeric = {k: v for k, v in TARGETS.items() if isinstance(v, float) and k in ratios}
    missed = sorted(k for k, v in numeric.items() if ratios[k] < v)
    out.update({
        "compute_ms_per_token": round(1000 * compute, 3),
        "tokens_match": tokens_match,
        "tokens_match_local": local_match,
        "targets": TARGETS,
        "targets_met": not missed,
        "targets_missed": missed,
        "targets_checked": sorted(numeric),
        "hops": hops, "failovers": failovers, "node_to_node_connections": node_links_used,
        "tokens": args.tokens, "prompt_tokens": len(ids), "reps": args.reps, "delays_ms": args.delays,
        "threads": args.threads, "cpus": format_cpu_list(cpus) if cpus else "none",
        "model": source.name, "dtype": "float32", "wall_s": round(time.perf_counter() - began, 1),
        "loadavg_1m_start": round(load_start, 2), "loadavg_1m_end": round(os.getloadavg()[0], 2),
    })
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
