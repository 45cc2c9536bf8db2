"""Acceptance (issue 7): two real `p2pnode serve --auto-price` processes on a real anvil, same layers of the tiny
Llama, different starting prices, move their on-chain prices to the network equilibrium that
`p2pllm.equilibrium.solve_equilibrium` computes for the same market (their advertised compute costs, the agent's
units), in a bounded number of on-chain updates, and each node charges over HTTP what the registry says."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from node.pricing_agent import AutoPriceSettings
from p2pllm.equilibrium import solve_equilibrium
from p2pllm.models import ModelSource
from p2pllm.pricing import Market, MarketOffer
from tests.chain_fixtures import DevChain
from tests.node.helpers import NodeProcess, start_node

ALPHA, THRESHOLD, INTERVAL_S = 0.5, 0.01, 1.0
START_PRICES_WEI = (10**12, 3 * 10**12)  # --price 0.000001 and 0.000003 ETH per token
TOLERANCE = 0.05  # relative distance to the equilibrium at the end
MAX_UPDATES = 14  # both nodes together
QUIET_S = 5.0  # no on-chain change for this long (5 pricing intervals): settled
DEADLINE_S = 40.0


@pytest.fixture
def deployment_file(dev_chain: DevChain, tmp_path) -> str:
    path = tmp_path / "deployment.json"
    dev_chain.deployment.save(path)
    return str(path)


def _serve_args(model: ModelSource, deployment_file: str, account: int, price_eth: str, data_dir) -> list[str]:
    return ["--layers", "0-8", "--price", price_eth, "--model", str(model.path), "--port", "0",
            "--deployment", deployment_file, "--dev-account", str(account), "--data-dir", str(data_dir),
            "--threads", "1", "--claim-interval", "3600", "--auto-price", "--auto-price-interval", str(INTERVAL_S),
            "--auto-price-threshold", str(THRESHOLD), "--auto-price-min-gap", "1", "--alpha", str(ALPHA)]


def _distance(prices: tuple[int, ...], equilibrium: list[int]) -> float:
    return max(abs(p - q) / q for p, q in zip(prices, equilibrium, strict=True))


def test_two_auto_priced_nodes_reach_the_equilibrium(dev_chain: DevChain, deployment_file: str,
                                                     tiny_llama_source: ModelSource, tmp_path) -> None:
    reader = dev_chain.as_account(0)
    first_block = reader.w3.eth.block_number
    nodes: dict[int, NodeProcess] = {}
    errors: list[BaseException] = []

    def launch(account: int, price_eth: str) -> None:
        try:
            nodes[account] = start_node(_serve_args(tiny_llama_source, deployment_file, account, price_eth,
                                                    tmp_path / f"node{account}"), cwd=tmp_path)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    launchers = [threading.Thread(target=launch, args=(1, "0.000001")),
                 threading.Thread(target=launch, args=(2, "0.000003"))]
    for thread in launchers:
        thread.start()
    for thread in launchers:
        thread.join()
    try:
        assert not errors, errors
        a, b = nodes[1], nodes[2]
        offer_ids = (a.offer_id, b.offer_id)
        with httpx.Client(timeout=10) as http:
            infos = [http.get(f"{n.endpoint}/info").json() for n in (a, b)]
            model = AutoPriceSettings(INTERVAL_S, THRESHOLD, 1.0, ALPHA).model()
            market = Market.from_offers([MarketOffer(0, 8, 1.0, model.cost(info["compute_ms_per_layer"], 8))
                                         for info in infos], model.rules())
            solved = solve_equilibrium(market)
            assert solved.converged
            equilibrium = [model.wei(p) for p in solved.prices]

            started = last_change = time.monotonic()
            prices = tuple(reader.get_offer(i).price_wei_per_token for i in offer_ids)
            while time.monotonic() - last_change < QUIET_S and time.monotonic() - started < DEADLINE_S:
                time.sleep(0.25)
                now = tuple(reader.get_offer(i).price_wei_per_token for i in offer_ids)
                if now != prices:
                    prices, last_change = now, time.monotonic()
            settle_s = last_change - started
            charged = tuple(int(http.get(f"{n.endpoint}/info").json()["price_wei_per_token"]) for n in (a, b))
    finally:
        for node in nodes.values():
            node.stop()

    events = [e for e in reader.registry.events.OfferPriceUpdated.get_logs(from_block=first_block)
              if int(e["args"]["offerId"]) in offer_ids]
    trajectory = [START_PRICES_WEI]
    for event in events:
        step = list(trajectory[-1])
        step[offer_ids.index(int(event["args"]["offerId"]))] = int(event["args"]["newPrice"])
        trajectory.append(tuple(step))
    distances = [_distance(p, equilibrium) for p in trajectory]
    report = (f"equilibrium {equilibrium} wei (ms/layer {[i['compute_ms_per_layer'] for i in infos]}); "
              f"trajectory {trajectory}; distances {[round(d, 4) for d in distances]}; settled after {settle_s:.1f} s")
    print(report)
    for node in nodes.values():
        print("".join(line for line in node.lines if "p2pnode.pricing" in line))

    assert trajectory[-1] == prices, report  # the events replay to what the registry holds
    assert charged == prices, report  # each node charges what it advertises
    assert 2 <= len(events) <= MAX_UPDATES, report
    assert {int(e["args"]["offerId"]) for e in events} == set(offer_ids), report  # both nodes priced
    assert distances[-1] <= TOLERANCE, report
    assert distances[-1] < distances[0] / 5, report
    for node, offer_id in ((a, a.offer_id), (b, b.offer_id)):
        logged = [line for line in node.lines if f"p2pnode.pricing: offer {offer_id}: update" in line]
        assert len(logged) == sum(int(e["args"]["offerId"]) == offer_id for e in events), report
        assert all("competitor(s)" in line and "expected revenue" in line for line in logged)
