"""The client end to end on a real anvil with four real node processes over the tiny Llama (8 layers), in relay
mode (and once in star mode):
[0,3) A, [3,6) cheap-but-slow B and fast-but-dear C, [6,8) D. α=1 routes through B, α=0 through C; tokens
equal transformers' greedy `generate`; before each generation one transaction reserves for the route's nodes;
on-chain each node is paid exactly price × tokens it processed, from what was reserved for it. Then a node is
killed with SIGKILL mid-generation: the output is still identical, the replacement is funded before it is used,
and nobody is paid for tokens it did not process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from client.inference import GenerationResult, InferenceClient
from p2pllm.chain import Chain
from p2pllm.keys import dev_account
from p2pllm.models import ModelSource
from tests.chain_fixtures import DevChain
from tests.node.helpers import NodeProcess, start_node

PROMPT = [1, 17, 42, 99, 7, 301]
NEW_TOKENS = 12
CLIENT_ACCOUNT = 9
# name: (layers, price ETH, dev account, advertised ms/layer)
NODES = {"A": ("0-3", "0.000001", 1, "1.0"), "B": ("3-6", "0.000001", 2, "20.0"),
         "C": ("3-6", "0.000005", 3, "0.5"), "D": ("6-8", "0.000002", 4, "1.0")}
PRICE_WEI = {name: int(float(spec[1]) * 10**18) for name, spec in NODES.items()}


@dataclass
class Network:
    dev_chain: DevChain
    deployment_file: str
    nodes: dict[str, NodeProcess]
    model: ModelSource
    root: Path

    def client(self) -> InferenceClient:
        chain = Chain.connect(self.dev_chain.anvil.rpc_url, dev_account(CLIENT_ACCOUNT), self.dev_chain.deployment)
        return InferenceClient(chain, str(self.model.path), verify_rate=0.0)

    def name_of(self, address: str) -> str:
        return next(n for n, p in self.nodes.items() if p.address.lower() == address.lower())


def _args(name: str, model: ModelSource, deployment_file: str, tmp_path) -> list[str]:
    layers, price, account, compute = NODES[name]
    return ["--layers", layers, "--price", price, "--model", str(model.path), "--port", "0",
            "--deployment", deployment_file, "--dev-account", str(account), "--data-dir", str(tmp_path / name),
            "--advertise-compute-ms", compute, "--claim-min", "1", "--claim-interval", "3600"]


@pytest.fixture
def network(dev_chain: DevChain, tiny_llama_source: ModelSource, tmp_path) -> Iterator[Network]:
    deployment_file = str(tmp_path / "deployment.json")
    dev_chain.deployment.save(tmp_path / "deployment.json")
    dev_chain.as_account(CLIENT_ACCOUNT).deposit(10**17)  # into the pool; generations reserve from it
    nodes: dict[str, NodeProcess] = {}
    try:
        for name in NODES:
            nodes[name] = start_node(_args(name, tiny_llama_source, deployment_file, tmp_path), cwd=tmp_path)
        yield Network(dev_chain, deployment_file, nodes, tiny_llama_source, tmp_path)
    finally:
        for node in nodes.values():
            node.stop()


def _local_greedy(model: ModelSource) -> list[int]:
    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=0,
                          eos_token_id=None, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


def test_star_transport_gives_the_same_tokens_and_pays_the_same(network: Network) -> None:
    """Star mode (the client feeds every hop itself, for nodes that cannot reach each other) against the same
    nodes: the same tokens as transformers, and each hop paid exactly what it processed."""
    chain = Chain.connect(network.dev_chain.anvil.rpc_url, dev_account(CLIENT_ACCOUNT), network.dev_chain.deployment)
    client = InferenceClient(chain, str(network.model.path), transport="star", verify_rate=0.0)
    result = _generate(client, alpha=1.0)
    client.close()
    assert result.token_ids == _local_greedy(network.model)
    assert _route_names(network, result) == ["A", "B", "D"]
    for node in network.nodes.values():
        assert node.stop() == 0
    for hop in result.hops:
        assert chain.paid_for(chain.address, hop.node, hop.session_id) == hop.cost_wei == \
            (len(PROMPT) + NEW_TOKENS - 1) * PRICE_WEI[network.name_of(hop.node)]


def _generate(client: InferenceClient, alpha: float, kill: NodeProcess | None = None) -> GenerationResult:
    result = GenerationResult(len(PROMPT))
    for i, _ in enumerate(client.generate(PROMPT, NEW_TOKENS, alpha=alpha, result=result, stop_at_eos=False)):
        if kill is not None and i == 4:
            kill.stop(signal.SIGKILL)
    return result


def _route_names(network: Network, result: GenerationResult) -> list[str]:
    assert result.route is not None
    return [network.name_of(h.node) for h in result.route.hops]


def test_alpha_picks_cheap_or_fast_and_everyone_is_paid_exactly(network: Network, tmp_path) -> None:
    expected = _local_greedy(network.model)
    client = network.client()
    cheap = _generate(client, alpha=1.0)
    fast = _generate(client, alpha=0.0)
    client.close()
    assert _route_names(network, cheap) == ["A", "B", "D"]
    assert _route_names(network, fast) == ["A", "C", "D"]
    assert cheap.token_ids == expected and fast.token_ids == expected
    assert cheap.route.price_wei_per_token == PRICE_WEI["A"] + PRICE_WEI["B"] + PRICE_WEI["D"]
    # One transaction reserved for all three hops of the first route, each a session's worth at most.
    assert len(cheap.reservations) == 1 and sorted(map(network.name_of, cheap.reservations[0].nodes)) == \
        ["A", "B", "D"]
    assert cheap.reservations[0].deposit_wei == 0  # the pool had enough
    assert len(fast.reservations) == 1 and "C" in map(network.name_of, fast.reservations[0].nodes)

    for node in network.nodes.values():
        assert node.stop() == 0  # graceful stop claims what the node holds
    chain = network.dev_chain.as_account(CLIENT_ACCOUNT)
    spent = 0
    for result in (cheap, fast):
        for hop in result.hops:
            # every hop processed the prompt plus each generated token but the last
            assert hop.tokens == len(PROMPT) + NEW_TOKENS - 1
            name = network.name_of(hop.node)
            paid = chain.paid_for(chain.address, hop.node, hop.session_id)
            assert paid == hop.tokens * PRICE_WEI[name] == hop.cost_wei
            spent += paid
    left = chain.pool_balance(chain.address) + sum(chain.allocation_of(chain.address, node.address).amount_wei
                                                   for node in network.nodes.values())
    assert left == 10**17 - spent


def test_failover_after_kill_9_keeps_output_and_pays_only_work_done(network: Network, tmp_path) -> None:
    expected = _local_greedy(network.model)
    client = network.client()
    victim = network.nodes["B"]
    result = _generate(client, alpha=1.0, kill=victim)
    client.close()
    assert result.token_ids == expected
    assert len(result.failovers) == 1 and network.name_of(result.failovers[0].node) == "B"
    assert _route_names(network, result) == ["A", "C", "D"]
    failed = next(h for h in result.hops if h.failed)
    replacement = next(h for h in result.hops if network.name_of(h.node) == "C")
    # The replacement was paid for the replayed history and everything after it.
    assert replacement.tokens == len(PROMPT) + NEW_TOKENS - 1
    assert 0 < failed.tokens < replacement.tokens
    assert [network.name_of(n) for n in result.reservations[-1].nodes] == ["C"]  # funded before its replay

    # Restart the killed node: it claims what it had accepted, which is exactly the tokens it processed.
    restarted = start_node(_args("B", network.model, network.deployment_file, network.root), cwd=network.root)
    network.nodes["B"] = restarted
    for node in network.nodes.values():
        assert node.stop() == 0
    chain = network.dev_chain.as_account(CLIENT_ACCOUNT)
    for hop in result.hops:
        paid = chain.paid_for(chain.address, hop.node, hop.session_id)
        assert paid == hop.tokens * PRICE_WEI[network.name_of(hop.node)]
