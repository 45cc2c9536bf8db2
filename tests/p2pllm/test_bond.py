"""Bonds and slashing through the chain adapter against a real anvil: the registry's commitment digest equals the
Python one, registration pays exactly the missing bond (and a forced zero bond reverts clearly), a Python-signed
conflicting pair slashes the node (reward to the reporter, the rest burned, offers gone), a replay is refused,
the bond withdrawal cycle, and bond parameters in deployment files."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pllm.chain import Chain, ChainError, Deployment, TxReverted, default_bond_thaw_s
from p2pllm.commitments import Commitment, sign_commitment, tensor_hash
from p2pllm.keys import dev_account
from tests.chain_fixtures import THAW_S, VALIDITY_S, DevChain

MODEL = b"\x42" * 32
ZERO = "0x" + "00" * 20
words = st.binary(min_size=32, max_size=32)


def _step(chain: Chain, output: bytes, issued_at: int | None = None) -> Commitment:
    issued = chain.block_timestamp() if issued_at is None else issued_at
    return Commitment(b"\x07" * 32, 40, 1, tensor_hash(b"hidden in"), tensor_hash(output), MODEL, 0, 10, issued)


def _gas_cost(chain: Chain, tx_hash: str) -> int:
    receipt = chain.w3.eth.get_transaction_receipt(tx_hash)
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])


def _zero_address_gain(chain: Chain, tx_hash: str) -> int:
    """What address(0) gained in the transaction's block, less the priority fees it earned there as anvil's
    coinbase (automine: one transaction per block)."""
    receipt = chain.w3.eth.get_transaction_receipt(tx_hash)
    block = chain.w3.eth.get_block(receipt["blockNumber"])
    gain = (chain.w3.eth.get_balance(ZERO, block["number"]) - chain.w3.eth.get_balance(ZERO, block["number"] - 1))
    if block["miner"].lower() == ZERO:
        gain -= int(receipt["gasUsed"]) * (int(receipt["effectiveGasPrice"]) - int(block["baseFeePerGas"]))
    return int(gain)


def test_commitment_digest_matches_the_registry(dev_chain: DevChain) -> None:
    chain = dev_chain.as_account(1)
    domain = chain.registry_domain()
    assert (domain.chain_id, domain.registry) == (31337, dev_chain.deployment.registry)

    @settings(max_examples=12, deadline=None)
    @given(words, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), words, words, words,
           st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1), st.integers(0, 2**64 - 1))
    @example(b"\x00" * 32, 0, 0, b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, 0, 0, 0)
    @example(b"\xff" * 32, 2**64 - 1, 2**32 - 1, b"\xff" * 32, b"\xff" * 32, b"\xff" * 32, 2**16 - 1, 2**16 - 1,
             2**64 - 1)
    def check(session: bytes, position: int, tokens: int, inp: bytes, out: bytes, model: bytes, start: int,
              end: int, issued: int) -> None:
        commitment = Commitment(session, position, tokens, inp, out, model, start, end, issued)
        assert chain.commitment_digest(commitment) == commitment.digest(domain)

    check()


def test_register_sends_exactly_the_missing_bond(dev_chain: DevChain) -> None:
    node = dev_chain.as_account(6)
    minimum = node.min_bond()
    assert minimum == dev_chain.deployment.min_bond_wei == 10**16
    with pytest.raises(TxReverted) as low:
        node.register_offer(MODEL, 0, 10, 1, "http://127.0.0.1:9000", bond_wei=0)
    assert low.value.error == "Registry__BondTooLow"
    assert low.value.error_args == {"node": node.address.lower(), "bond": 0, "minBond": minimum}
    assert "register offer reverted: Registry__BondTooLow(" in str(low.value) and "\n" not in str(low.value)
    assert node.missing_bond(node.address) == minimum
    _, first = node.register_offer(MODEL, 0, 10, 1, "http://127.0.0.1:9000")
    _, second = node.register_offer(MODEL, 10, 20, 1, "http://127.0.0.1:9000")
    values = [int(node.w3.eth.get_transaction(tx.tx_hash)["value"]) for tx in (first, second)]
    assert values == [minimum, 0]
    assert node.bond_of(node.address) == minimum and node.missing_bond(node.address) == 0
    node.register_offer(MODEL, 20, 30, 1, "http://127.0.0.1:9000", bond_wei=5)
    assert node.bond_of(node.address) == minimum + 5
    assert node.offer_count(node.address) == 3
    assert node.eth_balance(dev_chain.deployment.registry) == minimum + 5


def test_python_signed_conflict_slashes_the_node(dev_chain: DevChain) -> None:
    node, reporter = dev_chain.as_account(7), dev_chain.as_account(8)
    bystander = dev_chain.as_account(9)
    bond = 3 * 10**16
    node.register_offer(MODEL, 0, 10, 1, "http://127.0.0.1:9001", bond_wei=bond)
    node.register_offer(MODEL, 10, 20, 1, "http://127.0.0.1:9001")
    bystander.register_offer(MODEL, 0, 10, 1, "http://127.0.0.1:9002")
    domain = reporter.registry_domain()
    key = dev_account(7).key
    a, b = _step(reporter, b"output one"), _step(reporter, b"output two")
    sig_a, sig_b = sign_commitment(a, domain, key), sign_commitment(b, domain, key)
    registry = dev_chain.deployment.registry
    registry_before = reporter.eth_balance(registry)
    reporter_before = reporter.eth_balance(reporter.address)

    slash, tx = reporter.slash(a, sig_a, b, sig_b)

    bps = dev_chain.deployment.slash_reward_bps
    assert (slash.node, slash.reporter) == (node.address, reporter.address)
    assert (slash.reward_wei, slash.burned_wei) == (bond * bps // 10_000, bond - bond * bps // 10_000)
    gas = _gas_cost(reporter, tx.tx_hash)
    assert reporter.eth_balance(reporter.address) == reporter_before + slash.reward_wei - gas
    assert _zero_address_gain(reporter, tx.tx_hash) == slash.burned_wei
    assert registry_before - reporter.eth_balance(registry) == bond
    assert reporter.bond_of(node.address) == 0 and reporter.offer_count(node.address) == 0
    assert reporter.offers_of(node.address, MODEL) == []
    assert [o.node for o in reporter.live_offers(MODEL)] == [bystander.address]
    assert sum(1 for name, _ in tx.events if name == "OfferRemoved") == 2
    assert reporter.proof_used(b, a)

    node.register_offer(MODEL, 0, 10, 1, "http://127.0.0.1:9001")  # bonds again
    for first, second in (((a, sig_a), (b, sig_b)), ((b, sig_b), (a, sig_a))):
        with pytest.raises(TxReverted) as replay:
            bystander.slash(*first, *second)
        assert replay.value.error == "Registry__ProofUsed"
        assert str(replay.value).startswith("slash reverted: Registry__ProofUsed(proofKey=")
    assert reporter.bond_of(node.address) == node.min_bond()


def test_slash_refuses_what_is_not_a_proof(dev_chain: DevChain) -> None:
    node, reporter = dev_chain.as_account(7), dev_chain.as_account(8)
    node.register_offer(MODEL, 0, 10, 1, "http://127.0.0.1:9001")
    domain = reporter.registry_domain()
    key, other = dev_account(7).key, dev_account(9).key
    a = _step(reporter, b"one")
    same = _step(reporter, b"one", a.issued_at - 1)
    b = _step(reporter, b"two")
    cases = [
        ((a, sign_commitment(a, domain, key), same, sign_commitment(same, domain, key)), "Registry__NotConflicting"),
        ((a, sign_commitment(a, domain, key), b, sign_commitment(b, domain, other)), "Registry__DifferentSigners"),
        ((a, sign_commitment(a, domain, other), b, sign_commitment(b, domain, other)), "Registry__NothingToSlash"),
        ((a, sign_commitment(a, domain, key), b, os.urandom(64)), "Registry__BadSignature"),
    ]
    for args, error in cases:
        with pytest.raises(TxReverted) as refused:
            reporter.slash(*args)
        assert refused.value.error == error, refused.value
    dev_chain.increase_time(VALIDITY_S + 1)
    with pytest.raises(TxReverted) as stale:
        reporter.slash(a, sign_commitment(a, domain, key), b, sign_commitment(b, domain, key))
    assert stale.value.error == "Registry__CommitmentExpired"
    assert reporter.bond_of(node.address) == node.min_bond()


def test_bond_withdrawal_cycle(dev_chain: DevChain) -> None:
    node = dev_chain.as_account(5)
    offer_id, _ = node.register_offer(MODEL, 0, 10, 1, "http://127.0.0.1:9003")
    with pytest.raises(TxReverted) as busy:
        node.request_bond_withdrawal()
    assert busy.value.error == "Registry__HasOffers"
    node.remove_offer(offer_id)
    assert node.bond_withdrawal(node.address) == 0
    ready_at, _ = node.request_bond_withdrawal()
    assert ready_at == node.bond_withdrawal(node.address) == node.block_timestamp() + dev_chain.deployment.bond_thaw_s
    with pytest.raises(TxReverted) as early:
        node.withdraw_bond()
    assert early.value.error == "Registry__BondStillThawing"
    dev_chain.increase_time(dev_chain.deployment.bond_thaw_s)
    before = node.eth_balance(node.address)
    amount, tx = node.withdraw_bond()
    assert amount == node.min_bond()
    assert node.eth_balance(node.address) == before + amount - _gas_cost(node, tx.tx_hash)
    assert node.bond_of(node.address) == 0 and node.bond_withdrawal(node.address) == 0


def test_deployment_records_bond_parameters_and_old_files_load(dev_chain: DevChain, tmp_path) -> None:
    deployment = dev_chain.deployment
    chain = dev_chain.as_account(1)
    assert deployment.bond_thaw_s == default_bond_thaw_s(THAW_S, VALIDITY_S) == THAW_S + 3600
    assert chain.bond_periods() == (deployment.bond_thaw_s, deployment.commitment_validity_s,
                                    deployment.slash_reward_bps) == (THAW_S + 3600, 86400, 5000)
    old = {k: v for k, v in deployment.__dict__.items()
           if k not in ("min_bond_wei", "bond_thaw_s", "commitment_validity_s", "slash_reward_bps")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = Deployment.load(tmp_path / "old.json")
    assert (loaded.registry, loaded.min_bond_wei, loaded.bond_thaw_s) == (deployment.registry, 0, 0)


def test_deploy_refuses_a_bond_thaw_shorter_than_a_receipt(dev_chain: DevChain) -> None:
    deployer = dev_chain.as_account(0)
    nonce = deployer.w3.eth.get_transaction_count(deployer.address)
    with pytest.raises(ChainError, match="bond thaw must be at least"):
        deployer.deploy_contracts("anvil", dev_chain.anvil.rpc_url, THAW_S, VALIDITY_S, 600,
                                  commitment_validity_s=3600, bond_thaw_s=VALIDITY_S)
    with pytest.raises(ChainError, match=r"1\.\.9999 basis points"):
        deployer.deploy_contracts("anvil", dev_chain.anvil.rpc_url, THAW_S, VALIDITY_S, 600, slash_reward_bps=10_000)
    assert deployer.w3.eth.get_transaction_count(deployer.address) == nonce  # nothing was sent
