"""Multi-host: anvil, three nodes and the client each run in their own Linux network namespace, joined by a bridge
with veth pairs and addresses this test assigns. The nodes bind and advertise those addresses; the client deploys,
generates with relay (hidden states pushed node to node across the bridge) and pays; each node is paid exactly on
chain. Every process is started inside a namespace this test made, and no namespace has a route anywhere else, so
nothing outside them can be contacted. Skips, saying why, where namespaces cannot be made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from devkit.devnet import Anvil
from p2pllm.models import ModelSource
from tests.e2e.namespaces import HostNetwork, NamespacesUnavailable
from tests.node.helpers import NodeProcess, start_node

REPO = Path(__file__).resolve().parents[2]
PROMPT = [1, 17, 42, 99, 7]
NEW_TOKENS = 6
CLIENT_ACCOUNT = 9
PRICE_WEI = 10**12
NODES = {"a": ("0-3", 1), "b": ("3-6", 2), "c": ("6-8", 3)}  # one route only: a → b → c


@dataclass
class Hosts:
    net: HostNetwork
    anvil: Anvil
    deployment: Path
    nodes: dict[str, NodeProcess]


def run_in(net: HostNetwork, host: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*net.exec_prefix(host), *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def hosts(tiny_llama_source: ModelSource, tmp_path: Path) -> Iterator[Hosts]:
    net = HostNetwork(["chain", "client", *NODES])
    try:
        net.__enter__()
    except NamespacesUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    nodes: dict[str, NodeProcess] = {}
    try:
        with Anvil(host=net.address("chain"), prefix=net.exec_prefix("chain")) as anvil:
            deployed = run_in(net, "client", [sys.executable, "scripts/deploy.py", "--network", "anvil", "--rpc-url",
                                              anvil.rpc_url, "--out-dir", str(tmp_path)], cwd=REPO)
            assert deployed.returncode == 0, deployed.stderr
            deployment = tmp_path / "anvil.json"
            for name, (layers, account) in NODES.items():
                address = net.address(name)
                nodes[name] = start_node(
                    ["--layers", layers, "--price", "0.000001", "--model", str(tiny_llama_source.path),
                     "--host", address, "--port", "8000", "--deployment", str(deployment), "--dev-account",
                     str(account), "--data-dir", str(tmp_path / name), "--claim-interval", "3600"],
                    cwd=tmp_path, prefix=net.exec_prefix(name))
                assert nodes[name].endpoint == f"http://{address}:8000"
            yield Hosts(net, anvil, deployment, nodes)
    finally:
        for node in nodes.values():
            node.stop()
        net.__exit__()


def test_paid_relay_generation_across_namespaces(hosts: Hosts, tiny_llama_source: ModelSource,
                                                 tmp_path: Path) -> None:
    model = str(tiny_llama_source.path)
    done = run_in(hosts.net, "client", [
        sys.executable, "-m", "client.cli", "generate", "--prompt-ids", ",".join(map(str, PROMPT)),
        "--max-new-tokens", str(NEW_TOKENS), "--ignore-eos", "--json", "--transport", "relay", "--model", model,
        "--deployment", str(hosts.deployment), "--dev-account", str(CLIENT_ACCOUNT), "--verify-rate", "0"],
        cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = hf.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=0,
                               eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()
    assert result["token_ids"] == expected and result["failovers"] == []
    by_endpoint = {node.endpoint: name for name, node in hosts.nodes.items()}
    assert [by_endpoint[h["endpoint"]] for h in result["hops"]] == ["a", "b", "c"]
    tokens = len(PROMPT) + NEW_TOKENS - 1
    assert all(h["tokens"] == tokens and h["cost_wei"] == tokens * PRICE_WEI for h in result["hops"])

    for node in hosts.nodes.values():
        assert node.stop() == 0  # a graceful stop claims what the node holds
    probe = ("import json, sys\n"
             "from p2pllm.chain import Chain, Deployment\n"
             "from p2pllm.keys import dev_account\n"
             f"chain = Chain.connect({hosts.anvil.rpc_url!r}, dev_account({CLIENT_ACCOUNT}), "
             f"Deployment.load(__import__('pathlib').Path({str(hosts.deployment)!r})))\n"
             "hops = json.loads(sys.argv[1])\n"
             "print(json.dumps([chain.paid_for(chain.address, h['node'], bytes.fromhex(h['session_id'][2:]))"
             " for h in hops]))\n")
    paid = run_in(hosts.net, "client", [sys.executable, "-c", probe, json.dumps(result["hops"])], cwd=tmp_path)
    assert paid.returncode == 0, paid.stderr
    assert json.loads(paid.stdout) == [h["cost_wei"] for h in result["hops"]]


def test_namespaces_reach_each_other_and_nothing_else(tmp_path: Path) -> None:
    """The isolation the test above relies on: a host reaches a peer on the bridge, but has no route off it."""
    try:
        net = HostNetwork(["x", "y"]).__enter__()
    except NamespacesUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    try:
        server = subprocess.Popen([*net.exec_prefix("y"), sys.executable, "-m", "http.server", "8000", "--bind",
                                   net.address("y")], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            fetch = ("import sys, time, urllib.request\n"
                     "for _ in range(100):\n"
                     "    try:\n"
                     "        print(urllib.request.urlopen(sys.argv[1], timeout=2).status); break\n"
                     "    except OSError: time.sleep(0.1)\n")
            reached = run_in(net, "x", [sys.executable, "-c", fetch, f"http://{net.address('y')}:8000/"], tmp_path)
            assert reached.stdout.strip() == "200", reached.stderr
            routes = run_in(net, "x", ["ip", "route", "get", "1.1.1.1"], tmp_path)
            assert routes.returncode != 0 and "unreachable" in routes.stderr.lower()
        finally:
            server.kill()
            server.wait()
    finally:
        net.__exit__()
