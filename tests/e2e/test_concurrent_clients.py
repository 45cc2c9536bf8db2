"""Many clients at once through one route of three real node processes on anvil: 16 clients, each with its own
wallet, its own prompt (of its own length) and its own session on every node, generate concurrently. The nodes
batch their decode steps (their metrics show rounds of several sessions), yet every client's greedy tokens equal
transformers' `generate` for its prompt, and on chain every (client, node) pair is paid exactly price × tokens
that node computed for that client. For the tiny Llama, Qwen2 (sliding and full layers) and Mistral (sliding
window), and for SmolLM2 (slow)."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from eth_account import Account
from transformers import AutoModelForCausalLM

from client.inference import GenerationResult, InferenceClient
from p2pllm.chain import Chain
from p2pllm.models import ModelSource
from tests.chain_fixtures import DevChain
from tests.node.helpers import NodeProcess, start_node

CLIENTS = 16
NEW_TOKENS = 8
PRICE_WEI = 10**12
SPANS = {"llama": ("0-3", "3-6", "6-8"), "qwen2": ("0-2", "2-4", "4-6"), "mistral": ("0-2", "2-3", "3-4"),
         "smollm2": ("0-10", "10-20", "20-30")}


@dataclass
class Net:
    dev_chain: DevChain
    model: ModelSource
    nodes: list[NodeProcess]


@pytest.fixture
def net(request: pytest.FixtureRequest, dev_chain: DevChain, tiny_models: dict[str, ModelSource],
        tmp_path: Path) -> Iterator[Net]:
    kind = request.param
    model = request.getfixturevalue("smollm2") if kind == "smollm2" else tiny_models[kind]
    deployment = tmp_path / "deployment.json"
    dev_chain.deployment.save(deployment)
    nodes: list[NodeProcess] = []
    try:
        for i, layers in enumerate(SPANS[kind]):
            nodes.append(start_node(
                ["--layers", layers, "--price", "0.000001", "--model", str(model.path), "--port", "0",
                 "--deployment", str(deployment), "--dev-account", str(i + 1), "--data-dir", str(tmp_path / layers),
                 "--claim-interval", "3600", "--batch-wait-ms", "5", "--threads", "1"], cwd=tmp_path))
        yield Net(dev_chain, model, nodes)
    finally:
        for node in nodes:
            node.stop()


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [[1, *torch.randint(4, 500, (2 + i % 7,), generator=g).tolist()] for i in range(CLIENTS)]


def expected(model: ModelSource, prompt: list[int]) -> list[int]:
    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=0,
                          eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def metric(node: NodeProcess, name: str) -> float:
    text = httpx.get(node.endpoint + "/metrics", timeout=10).text
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("net", ["llama", "qwen2", "mistral", pytest.param("smollm2", marks=pytest.mark.slow)],
                         indirect=True)
def test_sixteen_clients_at_once_get_exact_tokens_and_exact_settlement(net: Net) -> None:
    rpc = net.dev_chain.anvil.rpc_url
    funder = net.dev_chain.as_account(0)
    keys = [Account.create() for _ in range(CLIENTS)]
    for key in keys:
        funder.w3.provider.make_request("anvil_setBalance", [key.address, hex(10**18)])
    chains = [Chain.connect(rpc, key, net.dev_chain.deployment) for key in keys]

    def generate(i: int) -> GenerationResult:
        client = InferenceClient(chains[i], str(net.model.path), reserve_ahead=1, verify_rate=0.0)
        result = GenerationResult(len(all_prompts[i]))
        try:
            list(client.generate(all_prompts[i], NEW_TOKENS, alpha=1.0, result=result, stop_at_eos=False))
        finally:
            client.close()
        return result

    all_prompts = prompts()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(generate, range(CLIENTS)))

    for prompt, result in zip(all_prompts, results, strict=True):
        assert result.token_ids == expected(net.model, prompt) and not result.failovers
    rounds = sum(metric(node, "p2pllm_decode_batches") for node in net.nodes)
    steps = sum(metric(node, "p2pllm_decode_batched_steps") for node in net.nodes)
    assert steps > 1.5 * rounds, (steps, rounds)  # the nodes did batch sessions together

    for node in net.nodes:
        assert node.stop() == 0  # a graceful stop claims what the node holds
    for chain, prompt, result in zip(chains, all_prompts, results, strict=True):
        assert len(result.hops) == 3
        for hop in result.hops:
            tokens = len(prompt) + NEW_TOKENS - 1
            assert hop.tokens == tokens
            assert chain.paid_for(chain.address, hop.node, hop.session_id) == tokens * PRICE_WEI
