"""Relay mode against misbehaving real nodes (processes, anvil, the tiny Llama), each ending with identical
greedy tokens and exact settlement on chain:

- a node that forges the next hop's receipt (tests.node.tampering_node): the next node refuses to serve unpaid
  and tells the client, which reroutes around the tamperer; the tamperer is paid only for its own layers;
- a node frozen with SIGSTOP mid-generation: the client's step timeout and an unanswered ping detect it, its
  span is rerouted and replayed; once thawed it claims exactly what it computed (including a step that was
  already relayed to it, with its receipt, when it froze, which it works off when it thaws).

The kill -9 case is in test_client_e2e.py."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from client.inference import GenerationResult, InferenceClient
from p2pllm.chain import Chain
from p2pllm.keys import dev_account
from p2pllm.models import ModelSource
from tests.chain_fixtures import DevChain
from tests.node.helpers import NodeProcess, start_node

PROMPT = [1, 17, 42, 99, 7]
NEW_TOKENS = 10
CLIENT_ACCOUNT = 9
PRICE_WEI = {"A": 10**12, "A2": 2 * 10**12, "B": 10**12, "B2": 2 * 10**12}
# name: (layers, dev account)
NODES = {"A": ("0-4", 1), "A2": ("0-4", 2), "B": ("4-8", 3), "B2": ("4-8", 4)}


@dataclass
class Net:
    chain: Chain
    nodes: dict[str, NodeProcess]
    model: ModelSource

    def name_of(self, address: str) -> str:
        return next(n for n, p in self.nodes.items() if p.address.lower() == address.lower())


def _start(name: str, model: ModelSource, deployment: Path, root: Path, module: str = "node.cli") -> NodeProcess:
    layers, account = NODES[name]
    price = f"{PRICE_WEI[name] / 10**18:.18f}".rstrip("0")
    return start_node(["--layers", layers, "--price", price, "--model", str(model.path), "--port", "0",
                       "--deployment", str(deployment), "--dev-account", str(account), "--data-dir", str(root / name),
                       "--claim-interval", "3600", "--threads", "1"], cwd=root, module=module)


@pytest.fixture
def net(request: pytest.FixtureRequest, dev_chain: DevChain, tiny_llama_source: ModelSource,
        tmp_path: Path) -> Iterator[Net]:
    tamperer = getattr(request, "param", None)
    deployment = tmp_path / "deployment.json"
    dev_chain.deployment.save(deployment)
    chain = Chain.connect(dev_chain.anvil.rpc_url, dev_account(CLIENT_ACCOUNT), dev_chain.deployment)
    chain.deposit(10**16)
    nodes: dict[str, NodeProcess] = {}
    try:
        for name in NODES:
            module = "tests.node.tampering_node" if name == tamperer else "node.cli"
            nodes[name] = _start(name, tiny_llama_source, deployment, tmp_path, module)
        yield Net(chain, nodes, tiny_llama_source)
    finally:
        for node in nodes.values():
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)
            node.stop()


def _expected(model: ModelSource) -> list[int]:
    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=0,
                          eos_token_id=None, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


def _served_tokens(node: NodeProcess) -> int:
    metrics = httpx.get(f"{node.endpoint}/metrics", timeout=10).text
    return int(next(line.split()[1] for line in metrics.splitlines()
                    if line.startswith("p2pllm_tokens_served_total ")))


def _settled(net: Net, result: GenerationResult) -> dict[str, int]:
    """Thaw and stop every node (each claims what it holds) and return what each was paid, checking that it is
    exactly what the node computed by its own count, and never less than what the client received from it."""
    for node in net.nodes.values():
        node.process.send_signal(signal.SIGCONT)
    served: dict[str, int] = {}
    for name, node in net.nodes.items():
        previous = -1
        while (count := _served_tokens(node)) != previous:  # a thawed node may still work off a step it had
            previous = count
            time.sleep(0.5)
        served[name] = count
    for node in net.nodes.values():
        assert node.stop() == 0
    paid: dict[str, int] = {}
    for hop in result.hops:
        name = net.name_of(hop.node)
        on_chain = net.chain.paid_for(net.chain.address, hop.node, hop.session_id)
        assert on_chain >= hop.tokens * PRICE_WEI[name], (name, on_chain, hop.tokens)
        paid[name] = paid.get(name, 0) + on_chain
    assert {name: paid.get(name, 0) for name in NODES} == {name: served[name] * PRICE_WEI[name] for name in NODES}
    return paid


@pytest.mark.parametrize("net", ["A"], indirect=True)
def test_a_node_forging_the_next_receipt_is_routed_around(net: Net) -> None:
    client = InferenceClient(net.chain, str(net.model.path), step_timeout_s=10, verify_rate=0.0)
    result = GenerationResult(len(PROMPT))
    try:
        list(client.generate(PROMPT, NEW_TOKENS, alpha=1.0, result=result, stop_at_eos=False))
    finally:
        client.close()
    assert result.token_ids == _expected(net.model)
    assert [net.name_of(f.node) for f in result.failovers] == ["A"]
    assert "tampered" in result.failovers[0].reason
    assert [net.name_of(h.node) for h in result.route.hops] == ["A2", "B"]
    paid = _settled(net, result)
    assert paid["A"] == len(PROMPT) * PRICE_WEI["A"]  # its own layers for the prompt, nothing of B's
    assert paid["B"] == (len(PROMPT) + NEW_TOKENS - 1) * PRICE_WEI["B"]  # B never served unpaid


def test_a_frozen_node_is_detected_by_timeout_and_replaced(net: Net) -> None:
    client = InferenceClient(net.chain, str(net.model.path), step_timeout_s=2, verify_rate=0.0)
    result = GenerationResult(len(PROMPT))
    try:
        for i, _ in enumerate(client.generate(PROMPT, NEW_TOKENS, alpha=1.0, result=result, stop_at_eos=False)):
            if i == 3:
                net.nodes["B"].process.send_signal(signal.SIGSTOP)
    finally:
        client.close()
    assert result.token_ids == _expected(net.model)
    assert [net.name_of(f.node) for f in result.failovers] == ["B"]
    assert [net.name_of(h.node) for h in result.route.hops] == ["A", "B2"]
    paid = _settled(net, result)
    assert 0 < paid["B"] < paid["B2"]
