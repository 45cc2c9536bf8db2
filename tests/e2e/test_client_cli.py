"""`p2pclient` end to end, in-process over a real network: anvil, the contracts and two real `p2pnode serve`
processes over the tiny Llama (8 layers) with a small word-level tokenizer and chat template added, so the text
and chat paths run too. Node A serves [0,8) cheap but slow (advertised 20 ms/layer), node B serves [4,8) dear but
fast (0.5 ms/layer): the frontier has two routes, A alone (cheapest) and A[0,4) → B[4,8) (fastest).

Checked: `offers` (both live, advertised compute), `routes --plot` (the two frontier points, α's choice, a real
PNG), `generate --json` against transformers' greedy `generate`, with per-hop costs = tokens × price, the
streaming text path with its summary, `--max-price` below the route's price (exit 1, one line), and `chat`
driven through piped stdin keeping the conversation. The network is started once for the module."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from client.cli import main
from devkit.devnet import Anvil
from p2pllm.chain import Chain
from p2pllm.keys import dev_account
from p2pllm.models import ModelSource
from tests.chain_fixtures import OFFER_TTL_S, THAW_S, VALIDITY_S
from tests.node.helpers import NodeProcess, start_node

CLIENT_ACCOUNT = 9
PROMPT = [1, 17, 42, 99, 7, 301]
NEW_TOKENS = 10
# name: (layers, price ETH, dev account, advertised ms/layer)
NODES = {"A": ("0-8", "0.000001", 1, "20"), "B": ("4-8", "0.000004", 2, "0.5")}
PRICE_WEI = {"A": 10**12, "B": 4 * 10**12}


@dataclass
class Network:
    model: Path
    deployment_file: str
    nodes: dict[str, NodeProcess]

    def args(self, *extra: str, key: bool = True) -> list[str]:
        account = ["--dev-account", str(CLIENT_ACCOUNT)] if key else []
        return [*extra, "--model", str(self.model), "--deployment", self.deployment_file, *account]

    def gen_args(self, *extra: str) -> list[str]:
        """For generate and chat: spot checks off, so that the hops and costs these tests assert are the route's
        alone (tests/e2e/test_verification.py covers checks)."""
        return self.args(*extra, "--verify-rate", "0")

    def name_of(self, address: str) -> str:
        return next(n for n, p in self.nodes.items() if p.address.lower() == address.lower())


def add_word_tokenizer(folder: Path) -> None:
    """Token i <-> word `w{i}` (0-3 special), and a chat template of plain words, saved beside the weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, 512)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}w10 {{ m['content'] }} w11 {% endfor %}"
                          "{% if add_generation_prompt %}w12{% endif %}")
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def network(tiny_llama_source: ModelSource, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("client-cli")
    model = root / "tiny-llama-words"
    shutil.copytree(tiny_llama_source.path, model)
    add_word_tokenizer(model)
    nodes: dict[str, NodeProcess] = {}
    with Anvil() as anvil:
        deployer = Chain.connect(anvil.rpc_url, dev_account(0), expected_chain_id=31337)
        deployment = deployer.deploy_contracts("anvil", anvil.rpc_url, THAW_S, VALIDITY_S, OFFER_TTL_S)
        deployment.save(root / "deployment.json")
        Chain.connect(anvil.rpc_url, dev_account(CLIENT_ACCOUNT), deployment).deposit(10**17)
        try:
            for name, (layers, price, account, compute) in NODES.items():
                nodes[name] = start_node(
                    ["--layers", layers, "--price", price, "--model", str(model), "--port", "0",
                     "--deployment", str(root / "deployment.json"), "--dev-account", str(account),
                     "--data-dir", str(root / name), "--advertise-compute-ms", compute,
                     "--claim-interval", "3600"], cwd=root)
            yield Network(model, str(root / "deployment.json"), nodes)
        finally:
            for node in nodes.values():
                node.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def local_greedy(model: Path, prompt: list[int], new_tokens: int) -> list[int]:
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, min_new_tokens=0,
                          eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_offers_and_routes_with_plot(network: Network, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "offers", *network.args(key=False))
    assert code == 0 and "2 live offer(s), 0 excluded" in out
    for node in network.nodes.values():
        assert node.endpoint in out
    code, out, _ = run(capsys, "offers", "--json", *network.args(key=False))
    offers = {network.name_of(o["node"]): o for o in json.loads(out)["offers"]}
    assert {n: (o["status"], o["layers"], o["compute_ms_per_layer"]) for n, o in offers.items()} == {
        "A": ("ok", [0, 8], 20.0), "B": ("ok", [4, 8], 0.5)}
    assert all(o["rtt_ms"] > 0 for o in offers.values())

    code, out, _ = run(capsys, "routes", "--json", "--alpha", "0", *network.args(key=False))
    data = json.loads(out)
    routes = [[(network.name_of(h["node"]), *h["layers"]) for h in r["hops"]] for r in data["frontier"]]
    assert code == 0 and routes == [[("A", 0, 8)], [("A", 0, 4), ("B", 4, 8)]]
    assert [r["price_wei_per_token"] for r in data["frontier"]] == [PRICE_WEI["A"], PRICE_WEI["A"] + PRICE_WEI["B"]]
    assert data["chosen"] == 1 and all(r["on_hull"] for r in data["frontier"])

    plot = tmp_path / "frontier.png"
    code, out, _ = run(capsys, "routes", "--alpha", "1", "--plot", str(plot), *network.args(key=False))
    rows = [line for line in out.splitlines() if "[0,8)" in line or "[4,8)" in line]
    assert code == 0 and len(rows) == 2 and rows[0].startswith("*") and not rows[1].startswith("*")
    assert f"plot written to {plot}" in out
    image = matplotlib.image.imread(plot)
    assert plot.stat().st_size > 10_000 and image.shape[0] > 300 and image.shape[1] > 500
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 20  # drawn, not a blank canvas


def test_generate_json_matches_local_greedy_and_costs_add_up(network: Network,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    expected = local_greedy(network.model, PROMPT, NEW_TOKENS)
    code, out, _ = run(capsys, "generate", "--prompt-ids", ",".join(map(str, PROMPT)), "--alpha", "0",
                       "--max-new-tokens", str(NEW_TOKENS), "--ignore-eos", "--json", *network.gen_args())
    data = json.loads(out)
    assert code == 0 and data["token_ids"] == expected
    assert data["text"] == AutoTokenizer.from_pretrained(network.model).decode(expected, skip_special_tokens=True)
    assert [(network.name_of(h["node"]), h["layers"]) for h in data["hops"]] == [("A", [0, 4]), ("B", [4, 8])]
    for hop in data["hops"]:
        assert hop["tokens"] == len(PROMPT) + NEW_TOKENS - 1 and not hop["failed"]
        assert hop["cost_wei"] == hop["tokens"] * PRICE_WEI[network.name_of(hop["node"])] <= hop["signed_wei"]
    assert data["total_cost_wei"] == sum(h["cost_wei"] for h in data["hops"]) and data["failovers"] == []
    assert data["route"]["price_wei_per_token"] == PRICE_WEI["A"] + PRICE_WEI["B"]
    timings = data["timings"]
    assert 0 < timings["ttft_s"] <= timings["total_s"] and timings["tokens_per_s"] > 0
    assert 0 < timings["signing_share"] < 1


def test_generate_streams_text_then_summary(network: Network, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "generate", "w17 w42 w99", "--alpha", "1", "--max-new-tokens", "5",
                         "--ignore-eos", *network.gen_args())
    tokenizer = AutoTokenizer.from_pretrained(network.model)
    expected = local_greedy(network.model, tokenizer.encode("w17 w42 w99", add_special_tokens=False), 5)
    assert code == 0 and out == tokenizer.decode(expected, skip_special_tokens=True) + "\n"
    assert "route     " in err and "[0,8)" in err and "total     0.000007 ETH for 5 new token(s) (prompt 3)" in err
    assert "timing    ttft" in err and "tok/s" in err and "signing" in err


def test_generate_reserves_from_the_wallet_only_when_allowed(network: Network,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A client with an empty pool: --no-deposit refuses in one line; by default the shortfall is deposited from
    the wallet in the same transaction that reserves for the route, and the summary says so. A later run counts
    what the node is still owed (as it reports it) and reserves only what is missing."""
    fresh = ["--prompt-ids", "5,6,7", "--alpha", "1", "--max-new-tokens", "3", "--ignore-eos", "--model",
             str(network.model), "--deployment", network.deployment_file, "--dev-account", "8", "--verify-rate", "0",
             "--reserve-ahead", "1"]
    code, out, err = run(capsys, "generate", *fresh, "--no-deposit")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("p2pclient generate: error: the route needs 0.000006 ETH more reserved for its nodes, the "
                          "escrow pool holds 0 ETH")
    code, out, err = run(capsys, "generate", *fresh)
    assert code == 0, err
    assert ("reserved  0.000006 ETH for 1 node(s) in one transaction, 0.000006 ETH of it deposited from the wallet"
            in err)
    # The node has not claimed the first run's 5 tokens yet: the next run tops up by exactly that much.
    code, out, err = run(capsys, "generate", *fresh, "--json")
    assert code == 0 and [r["amounts_wei"] for r in json.loads(out)["reservations"]] == [[5 * 10**12]]
    # By default a top-up reserves four sessions' worth: the next generations need no transaction.
    code, out, err = run(capsys, "generate", *fresh[:-2], "--json")
    owed, reserved, session = 10 * 10**12, 11 * 10**12, 6 * 10**12
    reservations = [r["amounts_wei"] for r in json.loads(out)["reservations"]]
    assert code == 0 and reservations == [[owed + 4 * session - reserved]]
    code, out, err = run(capsys, "generate", *fresh[:-2], "--json")
    assert code == 0 and json.loads(out)["reservations"] == []


def test_max_price_picks_an_affordable_route_or_refuses(network: Network,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ids = ",".join(map(str, PROMPT))
    # α=0 alone would take the fast, dear route (0.000005 ETH/token); the cap leaves only the cheap one.
    code, out, err = run(capsys, "generate", "--prompt-ids", ids, "--alpha", "0", "--max-price", "0.000002",
                         "--max-new-tokens", "2", "--json", *network.gen_args())
    assert code == 0, err
    assert json.loads(out)["route"]["price_wei_per_token"] == 10**12
    code, out, err = run(capsys, "generate", "--prompt-ids", ids, "--alpha", "1", "--max-price", "0.0000005",
                         *network.gen_args())
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("p2pclient generate: error: no route within --max-price 0.0000005 ETH/token: the best "
                          "available costs 0.000001 ETH/token")


def test_chat_over_piped_stdin_keeps_the_conversation(network: Network, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("w20 w21\n\nw30\n/quit\nw40 never sent\n"))
    code, out, err = run(capsys, "chat", "--max-new-tokens", "4", "--alpha", "1", *network.gen_args())
    assert code == 0, err
    answers = out.splitlines()
    costs = [line for line in err.splitlines() if line.startswith("[")]
    assert len(answers) == 2 and len(costs) == 2 and "Traceback" not in err
    tokenizer = AutoTokenizer.from_pretrained(network.model)
    first = [{"role": "user", "content": "w20 w21"}]
    second = [*first, {"role": "assistant", "content": answers[0]}, {"role": "user", "content": "w30"}]
    for messages, cost in zip((first, second), costs, strict=True):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert cost.startswith(f"[{len(tokenizer.encode(prompt, add_special_tokens=False))} prompt + ")
    assert "conversation" in costs[1]
