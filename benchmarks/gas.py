"""Gas actually used (from transaction receipts) by the settlement contracts on a fresh anvil.

    python benchmarks/gas.py      # prints one JSON line

Scenario: a node registers its first offer for a model that already has one; it updates the price and
heartbeats; a client makes its first deposit; the node submits the first receipt of a session
(`claim_first`), then a later receipt of the same session (`claim_next`); `claim_batch_marginal` is
(gas of claimBatch of 10 first-claims − gas of claimBatch of 1) / 9. The node submits its own claims,
as `p2pnode` does.
"""

from __future__ import annotations

import json
import os
import sys

from p2pllm.chain import Chain
from p2pllm.devnet import Anvil
from p2pllm.keys import dev_account
from p2pllm.receipts import Receipt, sign_receipt

TARGETS = {"claim_first": 80_000, "claim_next": 45_000, "claim_batch_marginal": 35_000, "register": 200_000}


def measure() -> dict[str, float]:
    with Anvil() as anvil:
        deployer = Chain.connect(anvil.rpc_url, dev_account(0), expected_chain_id=31337)
        deployment = deployer.deploy_contracts("anvil", anvil.rpc_url, 2 * 86400, 86400, 600)
        other, node, client = (Chain.connect(anvil.rpc_url, dev_account(i), deployment) for i in (3, 1, 2))
        model = os.urandom(32)
        other.register_offer(model, 0, 10, 10**12, "http://127.0.0.1:9000")
        offer_id, register = node.register_offer(model, 10, 20, 2 * 10**12, "http://127.0.0.1:9001")
        update = node.update_price(offer_id, 3 * 10**12)
        heartbeat = node.heartbeat(offer_id)
        deposit = client.deposit(10**18)

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
        return {
            "register": register.gas_used,
            "update_price": update.gas_used,
            "heartbeat": heartbeat.gas_used,
            "deposit": deposit.gas_used,
            "claim_first": claim_first.gas_used,
            "claim_next": claim_next.gas_used,
            "claim_batch_marginal": round((batch_10.gas_used - batch_1.gas_used) / 9),
            "claim_batch_10": batch_10.gas_used,
        }


def main() -> int:
    figures = measure()
    figures["targets_met"] = all(figures[k] <= v for k, v in TARGETS.items())
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
