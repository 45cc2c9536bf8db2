"""The demo's orchestration (`scripts/demo.py` → `run_demo`) over a tiny model that speaks SmolLM2's vocabulary:
text comes out, the frontier offers a real choice (AB → C faster and dearer than A → B → C, so α = 0 and α = 1
pick different routes), every node is paid on-chain exactly its share, and no process or port is left behind."""

from __future__ import annotations

import importlib.util
import socket
import sys
from types import ModuleType

from client.frontier import alpha_optimal
from devkit.compile import REPO_ROOT
from devkit.localnet import LocalNetwork
from p2pllm.models import ModelSource


def _demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("p2pllm_demo", REPO_ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["p2pllm_demo"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _port_open(endpoint: str) -> bool:
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def test_demo_orchestration_pays_everyone_and_cleans_up(tiny_chat_model: ModelSource, tmp_path, monkeypatch) -> None:
    demo = _demo_module()
    networks: list[LocalNetwork] = []
    original_enter = LocalNetwork.__enter__

    def remember(self: LocalNetwork) -> LocalNetwork:
        networks.append(self)
        return original_enter(self)

    monkeypatch.setattr(LocalNetwork, "__enter__", remember)
    outcome = demo.run_demo(str(tiny_chat_model.path), "Hello there!", 12, 0.5, tmp_path)

    assert outcome.text.strip()
    assert len(outcome.result.token_ids) >= 1
    assert outcome.node_exit_codes == {"A": 0, "B": 0, "C": 0, "AB": 0}
    assert len(outcome.frontier) >= 2
    assert alpha_optimal(outcome.frontier, 0.0) != alpha_optimal(outcome.frontier, 1.0)
    cheapest = min(outcome.frontier, key=lambda r: r.price_wei_per_token)
    fastest = min(outcome.frontier, key=lambda r: r.latency_ms)
    assert len(fastest.hops) < len(cheapest.hops)  # the hop saved is what the higher price buys
    route_hops = [h for h in outcome.result.hops if not h.check]  # spot checks (default rate) are paid too
    assert outcome.chosen is not None and len(route_hops) == len(outcome.chosen.hops)
    assert outcome.paid_wei == outcome.expected_wei
    assert outcome.client_escrow_wei == demo.DEPOSIT_WEI - sum(outcome.paid_wei.values())

    (net,) = networks
    assert net.anvil.process is None
    for node in net.nodes.values():
        assert node.process.poll() is not None
        assert not _port_open(node.endpoint)
    assert not _port_open(f"http://127.0.0.1:{net.anvil.port}")
