"""`p2pclient` in-process (`main([...])` with capsys): argument errors, the wallet round trip, the escrow life
cycle on a real anvil (deposit into the pool, instant withdraw, reservations for nodes shown by `balance`,
release request → cancel → request → execute after time travel, balances checked on-chain) and one-line errors
for bad networks, missing keys and routes. No node is started here:
commands that need a network of nodes are in tests/e2e/test_client_cli.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from eth_account import Account

from client.cli import format_duration, main, parse_token_ids
from p2pllm.keys import dev_account
from p2pllm.models import ModelSource
from tests.chain_fixtures import THAW_S, DevChain

PASSWORD = "correct horse battery staple"
CLIENT = 9
ETH = 10**18
ABOUT_THAW = r"(2d|1d 23h 59m \d+s)"  # THAW_S, less the seconds since the request's block
COMMANDS = ["wallet", "wallet new", "wallet import", "wallet address", "deposit", "balance", "withdraw", "release",
            "offers", "routes", "generate", "chat"]


@pytest.fixture
def deployment_file(dev_chain: DevChain, tmp_path: Path) -> str:
    path = tmp_path / "deployment.json"
    dev_chain.deployment.save(path)
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str, command: str) -> str:
    """The one error line: exactly one non-empty line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"p2pclient {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("command", COMMANDS)
def test_help_everywhere(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    assert f"usage: p2pclient {command}" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    ([], "required"),
    (["deposit", "half"], "not an ETH amount"),
    (["deposit", "-1"], "ETH amount"),
    (["withdraw"], "one of the arguments AMOUNT --all is required"),
    (["withdraw", "0.1", "--all"], "not allowed with"),
    (["release", "--execute", "--cancel"], "not allowed with"),
    (["release", "--amount", "x"], "not an ETH amount"),
    (["routes", "--alpha", "1.5"], "alpha must be in [0, 1]"),
    (["generate"], "one of the arguments prompt --prompt-ids is required"),
    (["generate", "hi", "--prompt-ids", "1,2"], "not allowed with"),
    (["generate", "--prompt-ids", "1,x"], "token ids must look like 1,17,42"),
    (["generate", "hi", "--max-new-tokens", "0"], "must be >= 1"),
    (["generate", "hi", "--top-p", "0"], "top-p must be in (0, 1]"),
    (["generate", "hi", "--temperature", "-1"], "must be >= 0"),
    (["generate", "hi", "--dtype", "int8"], "invalid choice"),
    (["generate", "hi", "--cpus", "0-"], "bad CPU list item '0-'"),
    (["chat", "--cpus", "4095"], "this machine has"),
    (["wallet", "new"], "--keystore"),
    (["offers", "--dev-account", "1"], "unrecognized arguments"),  # listing offers needs no key
])
def test_argument_errors_exit_2_with_usage(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: p2pclient" in err and message in err


def test_small_parsers() -> None:
    assert parse_token_ids("1,17, 42") == [1, 17, 42]
    assert format_duration(2 * 86400 + 3661) == "2d 1h 1m 1s"
    assert format_duration(0) == "0s"


# ------------------------------------------------------------------------------------------------ wallet


def test_wallet_new_import_address_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2PLLM_KEYSTORE_PASSWORD", PASSWORD)
    new = tmp_path / "keys" / "new.json"
    code, out, err = run(capsys, "wallet", "new", "--keystore", str(new))
    assert code == 0 and "keystore written" in err
    created = out.strip()
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", created)
    assert new.stat().st_mode & 0o777 == 0o600
    assert run(capsys, "wallet", "address", "--keystore", str(new))[1] == created + "\n"
    # the keystore decrypts with the password to the printed address
    assert Account.from_key(Account.decrypt(json.loads(new.read_text()), PASSWORD)).address == created

    key = "0x" + "11" * 32
    monkeypatch.setenv("MY_KEY", key)
    imported = tmp_path / "imported.json"
    code, out, err = run(capsys, "wallet", "import", "--keystore", str(imported), "--private-key-env", "MY_KEY")
    expected = Account.from_key(key).address
    assert code == 0 and out.strip() == expected
    assert key[2:] not in out + err and PASSWORD not in out + err
    assert run(capsys, "wallet", "address", "--keystore", str(imported))[1].strip() == expected

    # never overwrite a key; no secret is asked for first
    code, _, err = run(capsys, "wallet", "new", "--keystore", str(new))
    assert code == 1 and "already exists" in error_line(err, "wallet new")
    code, _, err = run(capsys, "wallet", "import", "--keystore", str(tmp_path / "x.json"),
                       "--private-key-env", "UNSET_VAR_FOR_TEST")
    assert code == 1 and "UNSET_VAR_FOR_TEST is not set" in error_line(err, "wallet import")
    monkeypatch.setenv("BAD_KEY", "0x1234")
    code, _, err = run(capsys, "wallet", "import", "--keystore", str(tmp_path / "y.json"),
                       "--private-key-env", "BAD_KEY")
    assert code == 1 and "not a valid private key" in error_line(err, "wallet import")
    code, _, err = run(capsys, "wallet", "address", "--keystore", str(tmp_path / "missing.json"))
    assert code == 1 and "cannot read keystore" in error_line(err, "wallet address")


def test_wallet_new_without_password_or_terminal_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2PLLM_KEYSTORE_PASSWORD", raising=False)
    monkeypatch.setattr("os.isatty", lambda fd: False)
    code, _, err = run(capsys, "wallet", "new", "--keystore", str(tmp_path / "k.json"))
    assert code == 1 and "P2PLLM_KEYSTORE_PASSWORD" in error_line(err, "wallet new")
    assert not (tmp_path / "k.json").exists()
    monkeypatch.setenv("P2PLLM_KEYSTORE_PASSWORD", "")
    code, _, err = run(capsys, "wallet", "new", "--keystore", str(tmp_path / "k.json"))
    assert code == 1 and "empty" in error_line(err, "wallet new")


def test_wallet_prompts_are_hidden_and_new_passwords_confirmed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2PLLM_KEYSTORE_PASSWORD", raising=False)
    monkeypatch.setattr("os.isatty", lambda fd: True)
    answers: list[str] = []
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        if not answers:
            raise EOFError
        return answers.pop(0)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    answers[:] = ["one", "two"]
    code, _, err = run(capsys, "wallet", "new", "--keystore", str(tmp_path / "a.json"))
    assert code == 1 and "do not match" in error_line(err, "wallet new") and not (tmp_path / "a.json").exists()
    key = "0x" + "33" * 32
    answers[:] = [key, PASSWORD, PASSWORD]
    code, out, err = run(capsys, "wallet", "import", "--keystore", str(tmp_path / "b.json"))
    assert code == 0 and out.strip() == Account.from_key(key).address and key[2:] not in out + err
    assert prompts[-3:] == ["private key (hidden): ", "new keystore password: ", "repeat the password: "]
    code, _, err = run(capsys, "wallet", "new", "--keystore", str(tmp_path / "c.json"))
    assert code == 1 and "input ended" in error_line(err, "wallet new")


# ------------------------------------------------------------------------------------------------ escrow


def test_pool_reservations_and_release(
        dev_chain: DevChain, deployment_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a keystore-held key: the same path a user takes
    monkeypatch.setenv("P2PLLM_KEYSTORE_PASSWORD", PASSWORD)
    monkeypatch.setenv("CLIENT_KEY", dev_account(CLIENT).key.hex())
    keystore = tmp_path / "client.json"
    assert run(capsys, "wallet", "import", "--keystore", str(keystore), "--private-key-env", "CLIENT_KEY")[0] == 0
    key = ["--deployment", deployment_file, "--keystore", str(keystore)]
    chain = dev_chain.as_account(CLIENT)
    me = chain.address
    wallet_before = chain.eth_balance(me)

    code, out, _ = run(capsys, "deposit", "0.5", *key)
    assert code == 0 and "deposited 0.5 ETH into the pool" in out and re.search(r"pool\s+0\.5 ETH", out)
    assert re.search(r"tx\s+0x[0-9a-f]{64}", out)
    assert chain.pool_balance(me) == ETH // 2
    assert wallet_before - ETH // 2 - 10**16 < chain.eth_balance(me) < wallet_before - ETH // 2  # minus gas

    # The pool is free money: withdrawn at once, no thaw.
    code, out, _ = run(capsys, "withdraw", "0.1", *key)
    assert code == 0 and "withdrew 0.1 ETH to the wallet" in out and chain.pool_balance(me) == 4 * ETH // 10
    code, _, err = run(capsys, "withdraw", "2", *key)
    assert code == 1 and "cannot withdraw 2 ETH: the pool holds 0.4 ETH" in error_line(err, "withdraw")

    # What generations reserve for nodes shows per node (here reserved directly, as `generate` does).
    node_a, node_b = dev_account(1).address, dev_account(2).address
    chain.reserve([node_a, node_b], [ETH // 10, ETH // 5])
    code, out, _ = run(capsys, "balance", "--json", *key)
    data = json.loads(out)
    assert code == 0 and data["address"] == me and data["pool_wei"] == ETH // 10
    assert data["reserved_wei"] == 3 * ETH // 10 and data["wallet_wei"] == chain.eth_balance(me)
    assert [(a["node"], a["reserved_wei"], a["thaw_ready_at"]) for a in data["allocations"]] == \
        [(node_a, ETH // 10, None), (node_b, ETH // 5, None)]

    code, out, _ = run(capsys, "release", node_b, "--amount", "0.05", *key)
    assert code == 0 and "releasing 0.05 ETH from 1 node(s)" in out and "release --execute` from" in out
    allocation = chain.allocation_of(me, node_b)
    assert allocation.thawing_wei == ETH // 20 and allocation.ready_at >= chain.block_timestamp() + THAW_S - 5
    assert re.search(rf"0\.05 ETH from .* UTC \(in {ABOUT_THAW}\)", out)

    code, out, _ = run(capsys, "release", "--cancel", "--json", *key)
    data = json.loads(out)
    assert code == 0 and data["action"] == "cancel" and all(a["thaw_ready_at"] is None for a in data["allocations"])
    assert chain.allocation_of(me, node_b).ready_at == 0
    code, _, err = run(capsys, "release", "--cancel", *key)
    assert code == 1 and "no release request to cancel" in error_line(err, "release")
    code, _, err = run(capsys, "release", "--execute", *key)
    assert code == 1 and "no release requested" in error_line(err, "release")
    code, _, err = run(capsys, "release", node_a, "--amount", "1", *key)
    assert code == 1 and f"cannot release 1 ETH from {node_a}: it holds 0.1 ETH" in error_line(err, "release")

    code, out, _ = run(capsys, "release", "--json", *key)  # every node, all of it
    assert code == 0 and [a["thawing_wei"] for a in json.loads(out)["allocations"]] == [ETH // 10, ETH // 5]
    code, _, err = run(capsys, "release", "--execute", *key)
    line = error_line(err, "release")
    assert code == 1 and re.search(rf"still thawing: the first release is ready in {ABOUT_THAW} \(at .* UTC\)$",
                                   line)

    dev_chain.increase_time(THAW_S + 1)
    code, out, _ = run(capsys, "release", "--execute", *key)
    assert code == 0 and "moved 0.3 ETH from 2 node(s) into the pool" in out and re.search(r"pool\s+0\.4 ETH", out)
    assert chain.pool_balance(me) == 4 * ETH // 10 and chain.allocation_of(me, node_a).amount_wei == 0
    code, _, err = run(capsys, "release", *key)
    assert code == 1 and "nothing is reserved for any node" in error_line(err, "release")
    wallet_before = chain.eth_balance(me)
    code, out, _ = run(capsys, "withdraw", "--all", *key)
    assert code == 0 and "withdrew 0.4 ETH to the wallet" in out and chain.pool_balance(me) == 0
    assert wallet_before < chain.eth_balance(me) < wallet_before + 4 * ETH // 10
    code, _, err = run(capsys, "withdraw", "--all", *key)
    assert code == 1 and "the pool is empty" in error_line(err, "withdraw")


# ------------------------------------------------------------------------------------------- one-line errors


def test_chain_and_key_errors_are_one_line(dev_chain: DevChain, deployment_file: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(capsys, "balance", "--deployment", deployment_file, "--rpc-url", "http://127.0.0.1:9",
                       "--dev-account", "1")
    assert code == 1 and "cannot reach RPC http://127.0.0.1:9" in error_line(err, "balance")
    code, _, err = run(capsys, "offers", "--deployment", deployment_file, "--rpc-url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach RPC" in error_line(err, "offers")
    code, _, err = run(capsys, "deposit", "1", "--deployment", str(tmp_path / "nope.json"), "--dev-account", "1")
    assert code == 1 and "no deployment file" in error_line(err, "deposit")
    monkeypatch.delenv("P2PLLM_PRIVATE_KEY", raising=False)  # the default key source, if set
    code, _, err = run(capsys, "balance", "--deployment", deployment_file)
    assert code == 1 and "no key given" in error_line(err, "balance")
    code, _, err = run(capsys, "deposit", "0", "--deployment", deployment_file, "--dev-account", "1")
    assert code == 1 and "positive" in error_line(err, "deposit")
    poor = "0x" + "22" * 32  # an account anvil never funded
    monkeypatch.setenv("POOR_KEY", poor)
    code, out, err = run(capsys, "deposit", "1", "--deployment", deployment_file, "--private-key-env", "POOR_KEY")
    assert code == 1 and "has 0 wei" in error_line(err, "deposit") and poor[2:] not in out + err


def test_routes_and_generate_errors_without_nodes(dev_chain: DevChain, deployment_file: str,
                                                  tiny_llama_source: ModelSource,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(tiny_llama_source.path), "--deployment", deployment_file]
    code, out, _ = run(capsys, "offers", *model)
    assert code == 0 and "0 live offer(s), 0 excluded" in out
    code, _, err = run(capsys, "routes", *model)
    assert code == 1 and "no route: no offer covers layers [0, 8)" in error_line(err, "routes")
    code, _, err = run(capsys, "generate", "hello", *model, "--dev-account", str(CLIENT))
    assert code == 1 and "has no tokenizer" in error_line(err, "generate")
    code, _, err = run(capsys, "chat", *model, "--dev-account", str(CLIENT))
    assert code == 1 and "has no tokenizer" in error_line(err, "chat")
    code, _, err = run(capsys, "generate", "--prompt-ids", "1,2,3", *model, "--dev-account", str(CLIENT))
    assert code == 1 and "no route: no offer covers layers [0, 8)" in error_line(err, "generate")


# -------------------------------------------------------------------------------------------------- plot


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("specs", [[(1, 20.0)], [(1, 20.0), (2, 10.0), (3, 9.0), (5, 1.0)]])
def test_plot_frontier_writes_a_png_for_any_frontier(specs: list[tuple[int, float]], alpha: float,
                                                     tmp_path: Path) -> None:
    from client.frontier import alpha_optimal, convex_hull_points, pareto_frontier
    from client.plot import plot_frontier
    from client.routing import RouteOffer

    offers = [RouteOffer(i, f"0x{i:040x}", 0, 8, price * 10**12, 1.0, ms) for i, (price, ms) in enumerate(specs, 1)]
    frontier = pareto_frontier(offers, 8)
    assert len(frontier) == len(specs)
    path = tmp_path / "frontier.png"
    plot_frontier(path, frontier, convex_hull_points(frontier), alpha_optimal(frontier, alpha), alpha, "test")
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (600, 900)
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 20
