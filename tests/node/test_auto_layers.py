"""`p2pnode register --layers auto`: on a real anvil the new node takes the layers nobody serves; with every
layer served it takes the window whose competitors are dearest; clear errors for a bad --num-layers."""

from __future__ import annotations

import io
import json

import pytest

from node.auto_layers import choose_layers_from_registry
from node.cli import main as p2pnode
from node.pricing_agent import CompetitorCosts
from p2pllm.chain import Offer
from p2pllm.model_id import model_id
from p2pllm.models import ModelSource
from tests.chain_fixtures import DevChain
from tests.node.helpers import node_info_json as info_json

REF = 10**12
DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens: competitors' compute cost falls back to our own


@pytest.fixture
def deployment_file(dev_chain: DevChain, tmp_path) -> str:
    path = tmp_path / "deployment.json"
    dev_chain.deployment.save(path)
    return str(path)


def _register_auto(model: ModelSource, deployment_file: str, k: str, account: int = 3) -> list[str]:
    return ["register", "--layers", "auto", "--num-layers", k, "--price", "0.000002", "--model", str(model.path),
            "--endpoint", "http://127.0.0.1:8123", "--deployment", deployment_file, "--dev-account", str(account),
            "--json"]


def test_register_auto_picks_the_unserved_gap(dev_chain: DevChain, deployment_file: str,
                                              tiny_llama_source: ModelSource, capsys) -> None:
    model_hash = model_id(tiny_llama_source.path)
    dev_chain.as_account(1).register_offer(model_hash, 0, 4, 2 * REF, DEAD_ENDPOINT)
    dev_chain.as_account(2).register_offer(model_hash, 6, 8, 2 * REF, DEAD_ENDPOINT)

    assert p2pnode(_register_auto(tiny_llama_source, deployment_file, "2")) == 0
    captured = capsys.readouterr()
    registered = json.loads(captured.out)
    assert registered["layers"] == [4, 6]
    assert "auto layers: chose [4, 6)" in captured.err
    assert "*4-6" in captured.err and "2 live offer(s) (2 with assumed compute cost)" in captured.err
    offer = dev_chain.as_account(0).get_offer(registered["offer_id"])
    assert (offer.start, offer.end, offer.price_wei_per_token) == (4, 6, 2 * REF)



@pytest.mark.parametrize("k", ["0", "9"])
def test_register_auto_rejects_k_outside_the_model(dev_chain: DevChain, deployment_file: str,
                                                   tiny_llama_source: ModelSource, k: str, capsys) -> None:
    assert p2pnode(_register_auto(tiny_llama_source, deployment_file, k)) == 1
    assert f"--num-layers {k}: must be between 1 and the model's 8 layers" in capsys.readouterr().err
    assert dev_chain.as_account(0).live_offers(model_id(tiny_llama_source.path)) == []


def test_register_auto_needs_num_layers(dev_chain: DevChain, deployment_file: str,
                                       tiny_llama_source: ModelSource, capsys) -> None:
    argv = _register_auto(tiny_llama_source, deployment_file, "1")
    del argv[3:5]
    assert p2pnode(argv) == 1
    assert "--layers auto needs --num-layers K" in capsys.readouterr().err


class Registry:
    def __init__(self, offers: list[Offer]) -> None:
        self.offers = offers

    def live_offers(self, model_id: bytes) -> list[Offer]:
        return self.offers


def _offer(offer_id: int, start: int, end: int, price_wei: int) -> Offer:
    return Offer(offer_id, "0x" + "00" * 20, b"\x00" * 32, start, end, price_wei, f"http://node{offer_id}", 2**40)


def test_fully_served_model_goes_where_competitors_are_dear_and_slow(tiny_llama_source: ModelSource) -> None:
    advertised = {"http://node1/info": 0.1, "http://node2/info": 0.1, "http://node3/info": 0.5}
    costs = CompetitorCosts(fetch=lambda url, timeout: info_json(advertised[url]))
    registry = Registry([_offer(1, 0, 4, REF), _offer(2, 4, 8, 3 * REF), _offer(3, 4, 8, 3 * REF),
                         _offer(4, 0, 12, REF)])  # offer 4 runs past the model's 8 layers: ignored
    out = io.StringIO()
    chosen = choose_layers_from_registry(registry, str(tiny_llama_source.path), b"\x00" * 32, 4, 2 * REF, 0.1,
                                         costs=costs, out=out)
    assert chosen == (4, 8)
    table = out.getvalue()
    assert "3 live offer(s) (0 with assumed compute cost)" in table
    rows = [line.split() for line in table.splitlines() if line.strip()[:1] in "*0123456789"]
    assert [row[0].lstrip("*") for row in rows] == [f"{s}-{s + 4}" for s in range(5)]
    revenues = {row[0].lstrip("*"): float(row[4]) for row in rows}
    assert max(revenues, key=revenues.__getitem__) == "4-8"


def test_direct_call_rejects_bad_k(tiny_llama_source: ModelSource) -> None:
    with pytest.raises(ValueError, match="between 1 and the model's 8 layers"):
        choose_layers_from_registry(Registry([]), str(tiny_llama_source.path), b"\x00" * 32, 9, REF, 0.1)
