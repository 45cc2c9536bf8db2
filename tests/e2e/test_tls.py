"""A paid generation over TLS: two real node processes serve https/wss with certificates from a CA made for the
test (trustme), advertise https endpoints, and relay to each other over wss, verifying the next hop against
that CA; the client verifies them against it too. Tokens equal transformers' greedy `generate` and each node is
paid exactly. A client without the CA cannot reach the nodes at all: nothing crosses in clear."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import trustme
from transformers import AutoModelForCausalLM

from client.inference import GenerationResult, InferenceClient
from p2pllm.chain import Chain
from p2pllm.keys import dev_account
from p2pllm.models import ModelSource
from tests.chain_fixtures import DevChain
from tests.node.helpers import NodeProcess, start_node

PROMPT = [1, 17, 42, 99]
NEW_TOKENS = 6
CLIENT_ACCOUNT = 8
PRICE_WEI = 10**12


@pytest.fixture
def tls_network(dev_chain: DevChain, tiny_llama_source: ModelSource,
                tmp_path: Path) -> Iterator[tuple[Path, list[NodeProcess]]]:
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "node.pem", tmp_path / "node.key"
    ca.cert_pem.write_to_path(str(ca_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in certificate.cert_chain_pems[1:]:
        with cert_file.open("ab") as out:
            out.write(pem.bytes())
    deployment = tmp_path / "deployment.json"
    dev_chain.deployment.save(deployment)
    dev_chain.as_account(CLIENT_ACCOUNT).deposit(10**16)
    nodes: list[NodeProcess] = []
    try:
        for layers, account in (("0-4", 1), ("4-8", 2)):
            nodes.append(start_node(
                ["--layers", layers, "--price", "0.000001", "--model", str(tiny_llama_source.path), "--port", "0",
                 "--deployment", str(deployment), "--dev-account", str(account), "--data-dir", str(tmp_path / layers),
                 "--claim-interval", "3600", "--tls-cert", str(cert_file), "--tls-key", str(key_file),
                 "--ca-file", str(ca_file)], cwd=tmp_path))
        assert all(node.endpoint.startswith("https://127.0.0.1:") for node in nodes)
        yield ca_file, nodes
    finally:
        for node in nodes:
            node.stop()


def test_generation_over_tls_relays_and_settles(tls_network: tuple[Path, list[NodeProcess]], dev_chain: DevChain,
                                                tiny_llama_source: ModelSource) -> None:
    ca_file, nodes = tls_network
    chain = Chain.connect(dev_chain.anvil.rpc_url, dev_account(CLIENT_ACCOUNT), dev_chain.deployment)
    stranger = InferenceClient(chain, str(tiny_llama_source.path), verify_rate=0.0)  # the system's trust store only
    try:
        assert not stranger.market().candidates
        assert all("unreachable" in e.reason for e in stranger.market().excluded)
    finally:
        stranger.close()

    client = InferenceClient(chain, str(tiny_llama_source.path), ca_file=ca_file, verify_rate=0.0)
    result = GenerationResult(len(PROMPT))
    try:
        list(client.generate(PROMPT, NEW_TOKENS, alpha=1.0, result=result, stop_at_eos=False))
    finally:
        client.close()
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_source.path, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = hf.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=0,
                               eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()
    assert result.token_ids == expected and not result.failovers
    assert [hop.endpoint.split(":")[0] for hop in result.hops] == ["https", "https"]
    assert all(hop.tokens == len(PROMPT) + NEW_TOKENS - 1 for hop in result.hops)
    for node in nodes:
        assert node.stop() == 0  # a graceful stop claims what the node holds
    for hop in result.hops:
        assert chain.paid_for(chain.address, hop.node, hop.session_id) == hop.cost_wei == hop.tokens * PRICE_WEI
