"""Trust end to end on a real anvil with real node processes over the tiny Llama (8 layers):

- a node that perturbs its outputs (tests.node.lying_node) is caught by a spot check on an independent node,
  confirmed by a third, recorded in the reputation store, and dropped from the route at once; the generation
  continues by failover with the tokens transformers' greedy `generate` gives, every session (checks included)
  is paid exactly for what it computed, and a later client with the same store never routes through it;
- a node that equivocates (tests.node.equivocating_node: an honest copy to the client, other hidden states to
  the next node, each with its own signed commitment) is caught from the two commitments, dropped, and reported
  on-chain by the client, which slashes its bond."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from client.inference import GenerationResult, InferenceClient
from client.reputation import ReputationStore
from p2pllm.chain import Chain
from p2pllm.keys import dev_account
from p2pllm.models import ModelSource
from tests.chain_fixtures import DevChain
from tests.node.helpers import NodeProcess, start_node

PROMPT = [1, 17, 42, 99, 7, 301]
NEW_TOKENS = 40
CLIENT_ACCOUNT = 9
PRICES = {"L": "0.000001", "H": "0.000002", "R": "0.000003", "D": "0.000001", "E": "0.000001"}
ACCOUNTS = {"L": 1, "H": 2, "R": 3, "D": 4, "E": 5}
LAYERS = {"L": "0-4", "H": "0-4", "R": "0-4", "D": "4-8", "E": "0-4"}


def _greedy(model: ModelSource) -> list[int]:
    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=0,
                          eos_token_id=None, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


def _start(name: str, model: ModelSource, deployment: Path, root: Path, module: str = "node.cli") -> NodeProcess:
    args = ["--layers", LAYERS[name], "--price", PRICES[name], "--model", str(model.path), "--port", "0",
            "--deployment", str(deployment), "--dev-account", str(ACCOUNTS[name]), "--data-dir", str(root / name),
            "--claim-min", "1", "--claim-interval", "3600"]
    return start_node(args, cwd=root, module=module)


@pytest.fixture
def nodes() -> Iterator[dict[str, NodeProcess]]:
    running: dict[str, NodeProcess] = {}
    yield running
    for node in running.values():
        node.stop(signal.SIGKILL)


def _settled_exactly(chain: Chain, result: GenerationResult, running: dict[str, NodeProcess]) -> None:
    for node in running.values():
        node.stop()  # graceful: claims what it holds
    for hop in result.hops:
        assert chain.paid_for(chain.address, hop.node, hop.session_id) == hop.cost_wei == \
            hop.tokens * hop.price_wei_per_token


def test_a_lying_node_is_caught_dropped_and_remembered(dev_chain: DevChain, tiny_llama_source: ModelSource,
                                                      tmp_path: Path, nodes: dict[str, NodeProcess],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = tmp_path / "deployment.json"
    dev_chain.deployment.save(deployment)
    monkeypatch.setenv("P2PLLM_LIE_FRACTION", "1.0")
    monkeypatch.setenv("P2PLLM_LIE_SCALE", "1e-3")
    nodes["L"] = _start("L", tiny_llama_source, deployment, tmp_path, module="tests.node.lying_node")
    for name in ("H", "R", "D"):
        nodes[name] = _start(name, tiny_llama_source, deployment, tmp_path)
    chain = Chain.connect(dev_chain.anvil.rpc_url, dev_account(CLIENT_ACCOUNT), dev_chain.deployment)
    chain.deposit(10**17)
    store = ReputationStore(tmp_path / "reputation.sqlite")
    client = InferenceClient(chain, str(tiny_llama_source.path), verify_rate=1.0, verify_seed=0, reputation=store)
    result = GenerationResult(len(PROMPT))
    try:
        list(client.generate(PROMPT, NEW_TOKENS, alpha=1.0, result=result, stop_at_eos=False))
    finally:
        client.close()
    liar = nodes["L"].address.lower()

    assert result.token_ids == _greedy(tiny_llama_source)
    assert result.verification is not None and result.verification.disagreed >= 1
    assert any(v.startswith(liar) and "wrong_output" in v for v in (x.lower() for x in result.verification.verdicts))
    assert store.excluded() == {liar}
    verdict = store.verdicts(liar)[0]
    assert verdict.verdict == "wrong_output" and verdict.evidence["checker"].lower() == nodes["H"].address.lower()
    assert result.route is not None and liar not in {h.node.lower() for h in result.route.hops}
    assert any(e.node.lower() == liar and "spot check" in e.reason for e in result.failovers)
    assert any(h.check for h in result.hops)
    _settled_exactly(chain, result, nodes)

    # A later client with the same store never routes through the liar (restart the honest nodes' claims first).
    for name in ("H", "R", "D"):
        nodes[name] = _start(name, tiny_llama_source, deployment, tmp_path)
    nodes["L"] = _start("L", tiny_llama_source, deployment, tmp_path, module="tests.node.lying_node")
    later = InferenceClient(chain, str(tiny_llama_source.path), verify_rate=0.0, reputation=store)
    try:
        assert liar not in {h.node.lower() for h in later.route(alpha=1.0).hops}
        second = GenerationResult(len(PROMPT))
        list(later.generate(PROMPT, 3, alpha=1.0, result=second, stop_at_eos=False))
    finally:
        later.close()
    assert second.token_ids == result.token_ids[:3]


def test_an_equivocating_node_is_slashed_through_the_clients_report(
        dev_chain: DevChain, tiny_llama_source: ModelSource, tmp_path: Path, nodes: dict[str, NodeProcess]) -> None:
    deployment = tmp_path / "deployment.json"
    dev_chain.deployment.save(deployment)
    nodes["E"] = _start("E", tiny_llama_source, deployment, tmp_path, module="tests.node.equivocating_node")
    for name in ("H", "D"):
        nodes[name] = _start(name, tiny_llama_source, deployment, tmp_path)
    chain = Chain.connect(dev_chain.anvil.rpc_url, dev_account(CLIENT_ACCOUNT), dev_chain.deployment)
    chain.deposit(10**17)
    equivocator = nodes["E"].address
    bond = chain.bond_of(equivocator)
    assert bond >= chain.min_bond() > 0
    balance_before = chain.w3.eth.get_balance(chain.address)
    store = ReputationStore(tmp_path / "reputation.sqlite")
    client = InferenceClient(chain, str(tiny_llama_source.path), verify_rate=0.0, reputation=store)
    result = GenerationResult(len(PROMPT))
    try:
        list(client.generate(PROMPT, NEW_TOKENS, alpha=1.0, result=result, stop_at_eos=False))
    finally:
        client.close()

    assert result.token_ids == _greedy(tiny_llama_source)
    assert [p.node.lower() for p in result.equivocations] == [equivocator.lower()]
    assert len(result.slash_reports) == 1
    assert chain.bond_of(equivocator) == 0
    assert chain.offers_of(equivocator, client.model_id) == []
    assert store.verdicts(equivocator)[0].verdict == "equivocation"
    assert chain.w3.eth.get_balance(chain.address) > balance_before - 10**17  # the reward came back to the client
    _settled_exactly(chain, result, nodes)  # the equivocator too: the client signed for what it computed

