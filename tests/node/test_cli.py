"""`p2pnode`'s argument parsing (bad `--cpus` lists are usage errors, exit 2, naming the problem) and `prune`
against a real anvil."""

from __future__ import annotations

import pytest

from node.cli import main as p2pnode


@pytest.mark.parametrize(("cpus", "message"), [
    ("x", "bad CPU list item 'x'"),
    ("1-0", "descending range '1-0'"),
    ("99999", "CPU 99999 in '99999' is above 4095"),
    ("4095", "this machine has"),
])
def test_serve_rejects_bad_cpu_lists(cpus: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        p2pnode(["serve", "--layers", "0-4", "--price", "0.001", "--cpus", cpus])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: p2pnode serve" in err and f"argument --cpus: {message}" in err


def test_prune_removes_only_long_expired_offers(dev_chain, tiny_llama_source, tmp_path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`p2pnode prune` run by a third party on a real anvil: three offers of one node die, a fourth is kept
    alive; a day after expiry the dead ones go, in batches, and the live one is on the first page."""
    import json

    from p2pllm.model_id import model_id

    deployment = tmp_path / "deployment.json"
    dev_chain.deployment.save(deployment)
    model = model_id(tiny_llama_source.path)
    owner = dev_chain.as_account(1)
    for i in range(3):
        owner.register_offer(model, i, i + 1, 1, f"http://127.0.0.1:{9000 + i}")
    dev_chain.increase_time(601)
    live = dev_chain.as_account(2).register_offer(model, 0, 8, 1, "http://127.0.0.1:9100")[0]
    common = ["--model", str(tiny_llama_source.path), "--deployment", str(deployment), "--dev-account", "3"]
    assert p2pnode(["prune", *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pruned"] == 0  # expired, but less than a day ago
    dev_chain.increase_time(86400 - 300)
    dev_chain.as_account(2).heartbeat(live)
    dev_chain.increase_time(400)
    assert p2pnode(["prune", *common, "--batch", "2"]) == 0
    out, err = capsys.readouterr()
    assert "pruned 3 offer(s) in 2 transaction(s); the model's list holds 1 entry (was 4)" in out
    assert err.count("tx 0x") == 2
    assert [o.offer_id for o in owner.live_offers(model)] == [live]
    assert owner.offer_count_by_model(model) == 1 and owner.offers_of(owner.address, model) == []
    assert p2pnode(["prune", *common, "--batch", "201"]) == 1
    assert "--batch must be in 1..200" in capsys.readouterr().err


def test_register_bond_and_withdrawal(dev_chain, tiny_llama_source, tmp_path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`p2pnode register` pays the missing bond by default (or --bond), `status` and `bond` show it, and
    `bond --withdraw` refuses while offers remain, requests, refuses while thawing, then pays the bond back."""
    import json

    deployment = tmp_path / "deployment.json"
    dev_chain.deployment.save(deployment)
    chain = dev_chain.as_account(4)
    common = ["--deployment", str(deployment), "--dev-account", "4"]
    model = ["--model", str(tiny_llama_source.path)]
    assert p2pnode(["register", "--layers", "0-4", "--price", "0.000001", *model, *common, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["bond_added_wei"], first["bond_wei"]) == (10**16, 10**16)
    assert p2pnode(["register", "--layers", "4-8", "--price", "0.000001", *model, *common, "--bond", "0.005"]) == 0
    out = capsys.readouterr().out
    assert "bond 0.015 ETH (added 0.005 ETH)" in out
    assert p2pnode(["register", "--layers", "4-8", "--price", "0.000001", *model, *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bond_added_wei"] == 0
    assert p2pnode(["status", *model, *common]) == 0
    assert "bond 0.015 ETH (minimum 0.01 ETH)" in capsys.readouterr().out

    assert p2pnode(["bond", "--withdraw", *common]) == 1
    assert "still has 3 offer(s) in the registry: remove them first" in capsys.readouterr().err
    for offer_id in (first["offer_id"], first["offer_id"] + 1, first["offer_id"] + 2):
        chain.remove_offer(offer_id)
    assert p2pnode(["bond", "--withdraw", *common]) == 0
    out = capsys.readouterr().out
    assert "withdrawal requested" in out and "withdrawal thawing until" in out
    assert p2pnode(["bond", "--withdraw", *common]) == 1
    assert "still thawing until" in capsys.readouterr().err
    dev_chain.increase_time(dev_chain.deployment.bond_thaw_s)
    assert p2pnode(["bond", *common, "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["withdrawal_ready"] and state["bond_wei"] == 15 * 10**15 and state["offers"] == 0
    assert p2pnode(["bond", "--withdraw", *common]) == 0
    assert "withdrew the bond: 0.015 ETH paid to" in capsys.readouterr().out
    assert chain.bond_of(chain.address) == 0
    assert p2pnode(["bond", "--withdraw", *common]) == 1
    assert "holds no bond to withdraw" in capsys.readouterr().err
