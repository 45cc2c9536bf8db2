"""Gas actually used (from transaction receipts) by the settlement contracts on a fresh anvil.

    python benchmarks/gas.py      # prints one JSON line

Scenario: a node registers its first offer for a model that already has one, sending the minimum bond with
it (`register_bonded`), then a second offer with nothing to add (`register`); it updates the price and
heartbeats; a client makes its first deposit into its pool; a second, fresh client reserves for three nodes it
never used, depositing the sum in the same transaction (`reserve_route_3`, what `p2pclient generate` sends
before a first generation); the first client reserves for the node, which submits the first receipt of a
session (`claim_first`), then a later receipt of the same session (`claim_next`); `claim_batch_marginal` is
(gas of claimBatch of 10 first-claims − gas of claimBatch of 1) / 9. The node submits its own claims, as
`p2pnode` does. `prune_per_offer` is the gas of pruning 20 long-expired offers (of two owners) in one call, per offer.
Last, a reporter slashes the node (its two offers removed) with two conflicting commitments it signed (`slash`).
"""

from __future__ import annotations

import json
import os
import sys

from devkit.devnet import Anvil
from p2pllm.chain import Chain
from p2pllm.commitments import Commitment, sign_commitment, tensor_hash
from p2pllm.keys import dev_account
from p2pllm.receipts import Receipt, sign_receipt

TARGETS = {"claim_first": 80_000, "claim_next": 52_000, "claim_batch_marginal": 35_000, "register": 200_000,
           "register_bonded": 205_000, "reserve_route_3": 110_000, "slash": 150_000}


def measure() -> dict[str, float]:
    with Anvil() as anvil:
        deployer = Chain.connect(anvil.rpc_url, dev_account(0), expected_chain_id=31337)
        deployment = deployer.deploy_contracts("anvil", anvil.rpc_url, 2 * 86400, 86400, 600)
        other, node, client, fresh = (Chain.connect(anvil.rpc_url, dev_account(i), deployment) for i in (3, 1, 2, 4))
        model = os.urandom(32)
        other.register_offer(model, 0, 10, 10**12, "http://127.0.0.1:9000")
        offer_id, register_bonded = node.register_offer(model, 10, 20, 2 * 10**12, "http://127.0.0.1:9001")
        assert int(node.w3.eth.get_transaction(register_bonded.tx_hash)["value"]) == node.min_bond()
        _, register = node.register_offer(model, 20, 30, 2 * 10**12, "http://127.0.0.1:9001")
        update = node.update_price(offer_id, 3 * 10**12)
        heartbeat = node.heartbeat(offer_id)
        deposit = client.deposit(10**18)
        hops = [dev_account(i).address for i in (5, 6, 7)]
        reserve_3 = fresh.reserve(hops, [10**15] * 3, deposit_wei=3 * 10**15)
        client.reserve([node.address], [10**17])

        domain = client.escrow_domain()
        deadline = client.block_timestamp() + 3600

        def signed(session: bytes, tokens: int) -> tuple[Receipt, bytes]:
            receipt = Receipt(client.address, node.address, session, tokens, tokens * 3 * 10**12, deadline)
            return receipt, sign_receipt(receipt, domain, client.account.key)

        session = os.urandom(32)
        _, claim_first = node.claim(*signed(session, 17))
        _, claim_next = node.claim(*signed(session, 18))
        _, batch_1 = node.claim_batch([signed(os.urandom(32), 5)])
        _, batch_10 = node.claim_batch([signed(os.urandom(32), 5) for _ in range(10)])

        spam_model = os.urandom(32)
        for spammer in (other, fresh):
            for _ in range(10):
                spammer.register_offer(spam_model, 0, 1, 1, "http://127.0.0.1:9")
        anvil_w3 = other.w3
        anvil_w3.provider.make_request("evm_increaseTime", [600 + 86400 + 1])
        anvil_w3.provider.make_request("evm_mine", [])
        pruned, _, prune = client.prune_offers(spam_model, 0, 20)
        assert pruned == 20, pruned

        issued, step_session = client.block_timestamp(), os.urandom(32)
        a, b = (Commitment(step_session, 40, 1, tensor_hash(b"in"), tensor_hash(out), model, 10, 20, issued)
                for out in (b"out a", b"out b"))
        registry_domain = client.registry_domain()
        signatures = [sign_commitment(c, registry_domain, node.account.key) for c in (a, b)]
        slashed, slash = fresh.slash(a, signatures[0], b, signatures[1])
        assert slashed.node == node.address and node.offer_count(node.address) == 0
        return {
            "register_bonded": register_bonded.gas_used,
            "register": register.gas_used,
            "update_price": update.gas_used,
            "heartbeat": heartbeat.gas_used,
            "deposit": deposit.gas_used,
            "reserve_route_3": reserve_3.gas_used,
            "claim_first": claim_first.gas_used,
            "claim_next": claim_next.gas_used,
            "claim_batch_marginal": round((batch_10.gas_used - batch_1.gas_used) / 9),
            "claim_batch_10": batch_10.gas_used,
            "prune_per_offer": round(prune.gas_used / 20),
            "slash": slash.gas_used,
        }


def main() -> int:
    figures = measure()
    figures["targets_met"] = all(figures[k] <= v for k, v in TARGETS.items())
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
