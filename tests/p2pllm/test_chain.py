"""The chain adapter against a real anvil: registry calls and pruning, the deposit → reserve → sign → claim →
release → withdraw cycle, batch claims, decoded custom errors, Python/Solidity EIP-712 parity, the reservation
formula's parity with the contract's, and the EIP-1153 probe."""

from __future__ import annotations

import os
import socket

import pytest
from eth_account import Account
from web3 import Web3

from devkit.devnet import Anvil
from p2pllm.chain import Allocation, Chain, ChainError, Deployment, TxReverted
from p2pllm.keys import dev_account
from p2pllm.receipts import RECEIPT_TYPEHASH, Receipt, receipt_digest, sign_receipt
from tests.chain_fixtures import THAW_S, DevChain

MODEL = b"\x42" * 32
ETH = 10**18


def _receipt(client: str, node: str, amount: int, deadline: int, session: bytes = b"\x01" * 32) -> Receipt:
    return Receipt(client, node, session, tokens=min(amount // 10**12, 2**64 - 1), amount_wei=amount, deadline=deadline)


def test_typehash_and_digest_parity(dev_chain: DevChain) -> None:
    chain = dev_chain.as_account(1)
    assert chain.onchain_receipt_typehash() == RECEIPT_TYPEHASH
    now = chain.block_timestamp()
    for amount in (0, 1, 10**18, 2**256 - 1):
        receipt = _receipt(chain.address, dev_account(2).address, amount, now + 3600, os.urandom(32))
        assert chain.onchain_receipt_digest(receipt) == receipt_digest(receipt, chain.escrow_domain())


def test_deposit_reserve_claim_release_withdraw_cycle(dev_chain: DevChain) -> None:
    client, node = dev_chain.as_account(1), dev_chain.as_account(2)
    client.deposit(ETH)
    assert client.pool_balance(client.address) == ETH
    client.reserve([node.address], [10**16], deposit_wei=0)
    assert client.pool_balance(client.address) == ETH - 10**16
    assert client.allocation_of(client.address, node.address) == Allocation(10**16, 0, 0)
    deadline = client.block_timestamp() + 3600
    domain = client.escrow_domain()
    node_before = node.eth_balance(node.address)

    first = _receipt(client.address, node.address, 3 * 10**15, deadline)
    paid, tx1 = node.claim(first, sign_receipt(first, domain, client.account.key))
    second = _receipt(client.address, node.address, 5 * 10**15, deadline)
    paid2, tx2 = node.claim(second, sign_receipt(second, domain, client.account.key))
    replay, _ = node.claim(second, sign_receipt(second, domain, client.account.key))
    assert (paid, paid2, replay) == (3 * 10**15, 2 * 10**15, 0)
    gas_spent = sum(tx.gas_used * node.w3.eth.get_transaction(tx.tx_hash)["gasPrice"] for tx in (tx1, tx2))
    assert node.eth_balance(node.address) - node_before > 5 * 10**15 - gas_spent - 10**15
    assert node.paid_for(client.address, node.address, first.session_id) == 5 * 10**15
    assert client.allocation_of(client.address, node.address).amount_wei == 5 * 10**15

    client.request_release([node.address], [5 * 10**15])
    with pytest.raises(TxReverted) as early:
        client.release([node.address])
    assert early.value.error == "Escrow__StillThawing"
    dev_chain.increase_time(THAW_S)
    moved, _ = client.release([node.address])
    assert moved == 5 * 10**15
    assert client.allocation_of(client.address, node.address) == Allocation(0, 0, 0)
    client.withdraw(ETH - 5 * 10**15)
    assert client.pool_balance(client.address) == 0
    with pytest.raises(TxReverted) as empty:
        client.withdraw(1)
    assert empty.value.error == "Escrow__InsufficientPool"


def test_escrow_reads_agree_with_web3(dev_chain: DevChain) -> None:
    """pool and allocation are read by plain JSON-RPC (the node's hot path); web3's contract calls are the oracle,
    and the Python reservation formula equals the contract's `reservedUntil`."""
    client, node = dev_chain.as_account(4), dev_chain.as_account(5).address
    escrow = client.escrow
    assert escrow is not None
    assert (client.pool_balance(client.address), client.allocation_of(client.address, node)) == (0, Allocation(0))
    client.reserve([node], [3 * 10**15], deposit_wei=4 * 10**15)
    client.request_release([node], [10**15])
    allocation = client.allocation_of(client.address.lower(), node.lower())
    assert (allocation.amount_wei, allocation.thawing_wei, allocation.ready_at) == \
        tuple(escrow.functions.allocationOf(client.address, node).call())
    assert allocation.thawing_wei == 10**15 and allocation.ready_at > client.block_timestamp()
    assert client.pool_balance(client.address) == escrow.functions.poolOf(client.address).call() == 10**15
    for until in (0, allocation.ready_at - 1, allocation.ready_at, allocation.ready_at + 1, 2**64 - 1):
        assert allocation.reserved_until(until) == client.reserved_until(client.address, node, until)


def test_unreachable_rpc_is_a_chain_error(dev_chain: DevChain) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    offline = Chain(Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}")), None, dev_chain.deployment)
    with pytest.raises(ChainError, match="RPC unreachable"):
        offline.allocation_of(dev_account(4).address, dev_account(5).address)


def test_batch_reports_each_item(dev_chain: DevChain) -> None:
    client, node = dev_chain.as_account(1), dev_chain.as_account(2)
    client.reserve([node.address], [ETH], deposit_wei=ETH)
    deadline = client.block_timestamp() + 3600
    domain = client.escrow_domain()
    good = [_receipt(client.address, node.address, 10**15, deadline, bytes([i]) * 32) for i in range(3)]
    items = [(r, sign_receipt(r, domain, client.account.key)) for r in good]
    forged = _receipt(client.address, node.address, 10**17, deadline, b"\x09" * 32)
    items.insert(1, (forged, sign_receipt(forged, domain, Account.create().key)))
    paid, _ = node.claim_batch(items)
    assert paid == [10**15, 0, 10**15, 10**15]
    assert client.allocation_of(client.address, node.address).amount_wei == ETH - 3 * 10**15


def test_registry_lifecycle_and_paging(dev_chain: DevChain) -> None:
    node = dev_chain.as_account(3)
    ids = [node.register_offer(MODEL, i * 10, i * 10 + 10, 10**12 * (i + 1), f"http://127.0.0.1:{9000 + i}")[0]
           for i in range(3)]
    offers = node.live_offers(MODEL, page_size=2)
    assert [o.offer_id for o in offers] == ids
    assert offers[1].start == 10 and offers[1].end == 20 and offers[1].price_wei_per_token == 2 * 10**12
    node.update_price(ids[0], 7)
    node.heartbeat(ids[0])
    node.remove_offer(ids[1])
    assert {o.offer_id: o.price_wei_per_token for o in node.live_offers(MODEL)} == {ids[0]: 7, ids[2]: 3 * 10**12}
    stranger = dev_chain.as_account(4)
    with pytest.raises(TxReverted) as denied:
        stranger.update_price(ids[0], 1)
    assert denied.value.error == "Registry__NotOwner" and denied.value.error_args["offerId"] == ids[0]
    dev_chain.increase_time(601)
    assert node.live_offers(MODEL) == []
    assert node.offer_count_by_model(MODEL) == 2  # expired, not yet prunable
    assert stranger.prune_offers(MODEL)[0] == 0
    dev_chain.increase_time(86400)
    pruned, cursor, _ = stranger.prune_offers(MODEL, 0, 1)  # a third party, one entry at a time
    assert (pruned, cursor) == (1, ids[2])
    assert stranger.prune_offers(MODEL, cursor, 1)[:2] == (1, 0)
    assert node.offer_count_by_model(MODEL) == 0
    with pytest.raises(TxReverted) as gone:
        node.heartbeat(ids[0])
    assert gone.value.error == "Registry__UnknownOffer"


def test_transient_storage_probe() -> None:
    with Anvil() as cancun:
        assert Chain.connect(cancun.rpc_url).supports_transient_storage()
    with Anvil(extra_args=("--hardfork", "shanghai")) as shanghai:
        assert not Chain.connect(shanghai.rpc_url).supports_transient_storage()


def test_connect_errors_are_one_line(dev_chain: DevChain, tmp_path) -> None:
    with pytest.raises(ChainError, match="cannot reach RPC"):
        Chain.connect("http://127.0.0.1:1")
    with pytest.raises(ChainError, match="chain id 31337, expected 5"):
        Chain.connect(dev_chain.anvil.rpc_url, expected_chain_id=5)
    bogus = Deployment(**{**dev_chain.deployment.__dict__, "escrow": "0x" + "12" * 20})
    with pytest.raises(ChainError, match="no contract code for PaymentEscrow"):
        Chain.connect(dev_chain.anvil.rpc_url, deployment=bogus)
    broke = Chain.connect(dev_chain.anvil.rpc_url, Account.create(), dev_chain.deployment)
    with pytest.raises(ChainError, match="has 0 wei"):
        broke.deposit(1)
    with pytest.raises(ChainError, match="no deployment file"):
        Deployment.load(tmp_path / "missing.json")


def test_concurrent_registrations_all_land(dev_chain: DevChain) -> None:
    """A gas estimate made before another node's registration is mined can fall short (a zero storage slot
    becomes non-zero); the adapter's headroom keeps every transaction from running out of gas."""
    import threading

    outcomes: list[object] = []

    def register(index: int) -> None:
        chain = dev_chain.as_account(index)
        try:
            outcomes.append(chain.register_offer(MODEL, 0, 10, 10**12, f"http://127.0.0.1:{9100 + index}")[0])
        except Exception as exc:  # collected and asserted on below
            outcomes.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o for o in outcomes if isinstance(o, int)) == list(range(1, 9)), outcomes
