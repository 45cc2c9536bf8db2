"""The README's first command (`make demo`): a real P2P-LLM network on this machine, answering a chat prompt
for pay. Starts anvil, deploys the contracts, starts four `p2pnode` processes over SmolLM2-135M (A 0–10,
B 10–20, C 20–30, and AB 0–20 at a higher price than A and B together), funds a client, shows the market and
the Pareto frontier (AB → C: one hop fewer, faster and dearer; A → B → C: cheaper and slower), streams the
answer through the route α picks, lets the nodes claim, and prints the settlement read back from the chain.
Every process it starts is stopped on exit, Ctrl-C or failure.

    python scripts/demo.py [--prompt TEXT] [--max-new-tokens N] [--alpha A] [--model NAME]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.frontier import alpha_optimal, convex_hull_points, hull_alpha_ranges, pareto_frontier
from client.inference import GenerationResult, InferenceClient, SamplingParams
from client.routing import Route
from devkit.devnet import AnvilError
from devkit.localnet import LocalNetwork, NodeSpec, NodeStartError
from p2pllm.chain import ChainError
from p2pllm.cli_common import format_eth, print_table
from p2pllm.models import DEFAULT_MODEL, resolve_model

CLIENT_ACCOUNT = 5
DEPOSIT_WEI = 5 * 10**16  # 0.05 ETH
DEFAULT_PROMPT = "What is a peer-to-peer network? Answer in two sentences."


def default_specs(num_layers: int) -> list[NodeSpec]:
    """Three nodes tiling the model in thirds, plus AB serving the first two thirds for more than A and B charge
    together. A route through AB makes one hop fewer (one round trip less per token, measured), so the
    frontier holds a real choice: AB → C is faster and dearer, A → B → C cheaper and slower."""
    a, b = num_layers // 3, 2 * num_layers // 3
    return [NodeSpec("A", 0, a, "0.000002", 1), NodeSpec("B", a, b, "0.000003", 2),
            NodeSpec("C", b, num_layers, "0.000002", 3), NodeSpec("AB", 0, b, "0.0000052", 4)]


@dataclass
class DemoOutcome:
    text: str
    result: GenerationResult
    paid_wei: dict[str, int] = field(default_factory=dict)
    expected_wei: dict[str, int] = field(default_factory=dict)
    client_escrow_wei: int = 0
    node_exit_codes: dict[str, int] = field(default_factory=dict)
    frontier: list[Route] = field(default_factory=list)
    chosen: Route | None = None


def say(message: str) -> None:
    print(f"\033[1m[demo]\033[0m {message}", flush=True)


def run_demo(model: str, prompt: str, max_new_tokens: int, alpha: float, workdir: Path,
             specs: list[NodeSpec] | None = None, chat: bool = True, node_threads: int | None = None) -> DemoOutcome:
    started = time.perf_counter()
    say(f"model {model}: preparing (the first run converts it once, with progress) ...")
    source = resolve_model(model)
    specs = specs or default_specs(source.num_layers)
    say(f"{source.name}: {source.num_layers} layers, hidden {source.hidden_size}; starting the network ...")
    with LocalNetwork(workdir, str(source.path), specs, log=say, node_threads=node_threads,
                      one_at_a_time=True) as net:
        say(f"{len(net.nodes)} nodes serving after {time.perf_counter() - started:.1f} s")
        chain = net.chain(CLIENT_ACCOUNT)
        tx = chain.deposit(DEPOSIT_WEI)
        say(f"client {chain.address} deposited {format_eth(DEPOSIT_WEI)} into its escrow pool "
            f"(tx {tx.tx_hash[:18]}…)")
        client = InferenceClient(chain, str(source.path))
        try:
            market = client.market()
            names = {node.address.lower(): name for name, node in net.nodes.items()}
            print()
            print_table(["node", "offer", "layers", "price/token", "endpoint", "rtt ms", "compute ms/layer"],
                        [(names.get(c.offer.node.lower(), c.offer.node[:10]), c.offer.offer_id,
                          f"{c.offer.start}-{c.offer.end}", format_eth(c.offer.price_wei_per_token), c.offer.endpoint,
                          f"{c.rtt_ms:.2f}", f"{c.compute_ms_per_layer:.2f}") for c in market.candidates])
            frontier = pareto_frontier(market.route_offers(), market.num_layers)
            chosen = alpha_optimal(frontier, alpha)
            hull = convex_hull_points(frontier)
            alpha_range = dict(zip(hull, hull_alpha_ranges(hull), strict=True))
            print(f"\nPareto frontier of routes (α = {alpha} picks the marked one; an α in a route's range picks it):")
            print_table(["", "price/token", "latency ms/token", "α range", "route"],
                        [("→" if r == chosen else "", format_eth(r.price_wei_per_token), f"{r.latency_ms:.1f}",
                          f"{alpha_range[r][0]:.2f}–{alpha_range[r][1]:.2f}" if r in alpha_range else "-",
                          " → ".join(f"{names.get(h.node.lower(), h.node[:8])}[{h.start},{h.end})" for h in r.hops))
                         for r in frontier])
            print(f"\nprompt: {prompt}\nanswer: ", end="", flush=True)
            result = GenerationResult(0)
            for event in client.generate(prompt, max_new_tokens, alpha=alpha, chat=chat, result=result,
                                         sampling=SamplingParams()):
                print(event.text, end="", flush=True)
            print("\n")
        finally:
            client.close()
        print_table(["hop", "layers", "tokens", "price/token", "cost"],
                    [(names.get(h.node.lower(), h.node[:10]), f"{h.layers[0]}-{h.layers[1]}", h.tokens,
                      format_eth(h.price_wei_per_token), format_eth(h.cost_wei)) for h in result.hops])
        for r in result.reservations:
            print(f"reserved {format_eth(r.total_wei)} for "
                  + ", ".join(f"{names.get(n.lower(), n[:10])} {format_eth(a)}" for n, a in zip(r.nodes, r.amounts_wei,
                                                                                                strict=True))
                  + " in one transaction before the first token")
        print(f"total {format_eth(result.total_cost_wei)} for {len(result.token_ids)} tokens; "
              f"first token after {result.ttft_s:.2f} s, then {result.tokens_per_s:.1f} tok/s; "
              f"signing took {100 * result.signing_s / max(result.total_s, 1e-9):.1f}% of the time\n")

        say("stopping the nodes: each claims its receipts on-chain on the way out ...")
        outcome = DemoOutcome(result.text, result, node_exit_codes=net.stop_nodes(), frontier=frontier, chosen=chosen)
        for hop in result.hops:
            name = names.get(hop.node.lower(), hop.node)
            outcome.paid_wei[name] = outcome.paid_wei.get(name, 0) + chain.paid_for(chain.address, hop.node,
                                                                                      hop.session_id)
            outcome.expected_wei[name] = outcome.expected_wei.get(name, 0) + hop.cost_wei
        left = {name: chain.allocation_of(chain.address, node.address).amount_wei for name, node in net.nodes.items()}
        outcome.client_escrow_wei = chain.pool_balance(chain.address) + sum(left.values())
        print()
        print_table(["node", "address", "paid by escrow (on-chain)", "owed for tokens served", "still reserved"],
                    [(name, net.nodes[name].address, format_eth(outcome.paid_wei.get(name, 0)),
                      format_eth(outcome.expected_wei.get(name, 0)), format_eth(left[name])) for name in net.nodes])
        print(f"client escrow left: {format_eth(outcome.client_escrow_wei)} (pool "
              f"{format_eth(chain.pool_balance(chain.address))} + reserved {format_eth(sum(left.values()))}; "
              f"deposited {format_eth(DEPOSIT_WEI)})\n")
    say(f"done in {time.perf_counter() - started:.1f} s; every process stopped")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--alpha", type=float, default=0.5, help="price weight α in [0, 1] (default 0.5)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temp dir)")
    args = parser.parse_args(argv)
    try:
        if args.workdir:
            outcome = run_demo(args.model, args.prompt, args.max_new_tokens, args.alpha, args.workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="p2pllm-demo-") as tmp:
                outcome = run_demo(args.model, args.prompt, args.max_new_tokens, args.alpha, Path(tmp))
    except KeyboardInterrupt:
        say("interrupted; every process was stopped")
        return 130
    except (NodeStartError, ChainError, AnvilError, ValueError, LookupError, OSError) as exc:
        say(f"failed, every process was stopped: {exc}")
        return 1
    if outcome.paid_wei != outcome.expected_wei:
        say(f"settlement mismatch: paid {outcome.paid_wei}, owed {outcome.expected_wei}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
