"""Pytest plugin (loaded with -p from pyproject): a real anvil on a free port and freshly deployed
contracts, shared by the chain, node, client and end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devkit.devnet import Anvil
from p2pllm.chain import Chain, Deployment
from p2pllm.keys import dev_account

THAW_S = 2 * 86400
VALIDITY_S = 86400
OFFER_TTL_S = 600


@dataclass
class DevChain:
    anvil: Anvil
    deployment: Deployment

    def as_account(self, index: int) -> Chain:
        """A Chain bound to the deployment, signing as anvil dev account `index`."""
        return Chain.connect(self.anvil.rpc_url, dev_account(index), self.deployment)

    def increase_time(self, seconds: int) -> None:
        w3 = self.as_account(0).w3
        w3.provider.make_request("evm_increaseTime", [seconds])
        w3.provider.make_request("evm_mine", [])


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    with Anvil() as chain:
        yield chain


@pytest.fixture
def dev_chain(anvil: Anvil) -> DevChain:
    deployer = Chain.connect(anvil.rpc_url, dev_account(0), expected_chain_id=31337)
    deployment = deployer.deploy_contracts("anvil", anvil.rpc_url, THAW_S, VALIDITY_S, OFFER_TTL_S)
    return DevChain(anvil, deployment)
