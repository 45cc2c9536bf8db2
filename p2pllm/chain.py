"""The chain adapter: the only module that imports web3. Typed methods for every OfferRegistry and
PaymentEscrow call (offers, bonds and slashing, reservations and claims), deployment files, and one-line errors
(custom errors decoded with their data). Knows nothing about models, HTTP or routing."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests
from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3Exception

from p2pllm.artifacts import Artifact, load_artifacts
from p2pllm.commitments import Commitment, RegistryDomain
from p2pllm.net import http_client
from p2pllm.receipts import EscrowDomain, Receipt, address_word

DEFAULT_PAGE = 200
GAS_HEADROOM = 1.25
GAS_HEADROOM_FIXED = 25_000
DEFAULT_MIN_BOND_WEI = 10**16  # 0.01 ETH
DEFAULT_COMMITMENT_VALIDITY_S = 86400
DEFAULT_SLASH_REWARD_BPS = 5000
BOND_THAW_MARGIN_S = 3600  # OfferRegistry.MIN_BOND_THAW_MARGIN
MAX_BOND_THAW_S = 60 * 86400  # OfferRegistry.MAX_BOND_THAW
MAX_BOND_WEI = 2**96 - 1


def default_bond_thaw_s(thaw_period_s: int, commitment_validity_s: int) -> int:
    """A bond thaw longer than both the escrow's thaw (itself longer than any receipt's validity) and the
    commitment validity, by the margin."""
    return max(thaw_period_s, commitment_validity_s) + BOND_THAW_MARGIN_S


def bond_params_problem(min_bond_wei: int, bond_thaw_s: int, commitment_validity_s: int, slash_reward_bps: int,
                        max_receipt_validity_s: int) -> str | None:
    """Why the registry (or this deployment's promise that a bond outlives every receipt) would reject these
    parameters, or None."""
    if not 0 < min_bond_wei <= MAX_BOND_WEI:
        return f"the minimum bond must be more than 0 and at most {MAX_BOND_WEI} wei, got {min_bond_wei}"
    if commitment_validity_s <= 0:
        return f"the commitment validity must be positive, got {commitment_validity_s} s"
    floor = max(commitment_validity_s, max_receipt_validity_s) + BOND_THAW_MARGIN_S
    if not floor <= bond_thaw_s <= MAX_BOND_THAW_S:
        return (f"the bond thaw must be at least max(commitment validity {commitment_validity_s} s, max receipt "
                f"validity {max_receipt_validity_s} s) + {BOND_THAW_MARGIN_S} s = {floor} s and at most "
                f"{MAX_BOND_THAW_S} s, got {bond_thaw_s} s")
    if not 0 < slash_reward_bps < 10_000:
        return (f"the slash reward must be 1..9999 basis points (some of a bond is always burned), "
                f"got {slash_reward_bps}")
    return None


class ChainError(RuntimeError):
    """Anything that went wrong talking to the chain, as one human-readable line."""


class TxReverted(ChainError):
    """A transaction or call reverted; `error` is the custom error's name, `args` its decoded data."""

    def __init__(self, message: str, error: str | None = None, args: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.error_args = args or {}


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on one network (deployments/<network>.json)."""

    network: str
    chain_id: int
    rpc_url: str
    registry: str
    escrow: str
    deploy_block: int
    compiler: str
    evm_version: str
    thaw_period_s: int
    max_receipt_validity_s: int
    offer_ttl_s: int
    # Bond parameters; 0 in deployment files written before the registry took bonds.
    min_bond_wei: int = 0
    bond_thaw_s: int = 0
    commitment_validity_s: int = 0
    slash_reward_bps: int = 0

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except FileNotFoundError as exc:
            raise ChainError(f"no deployment file {path}: deploy first (`p2pllm-deploy --network NAME`)") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise ChainError(f"unreadable deployment file {path}: {exc}") from exc

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)


@dataclass(frozen=True)
class Offer:
    """A registry offer: layers [start, end) of `model_id` at `price_wei_per_token`."""

    offer_id: int
    node: str
    model_id: bytes
    start: int
    end: int
    price_wei_per_token: int
    endpoint: str
    expires_at: int


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    gas_used: int
    block_number: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class Slash:
    """A decoded Slashed event: `node` lost its whole bond, `reward_wei` went to `reporter`, `burned_wei` burned."""

    node: str
    reporter: str
    reward_wei: int
    burned_wei: int

    @property
    def bond_wei(self) -> int:
        return self.reward_wei + self.burned_wei


@dataclass(frozen=True)
class Allocation:
    """Funds a client reserved for one node: `thawing_wei` of them may return to the client's pool from
    `ready_at` (0 = no release requested). Claims spend `amount_wei`; a thawing part is never more than it."""

    amount_wei: int
    thawing_wei: int = 0
    ready_at: int = 0

    def reserved_until(self, until: int) -> int:
        """What stays reserved for the node through timestamp `until` whatever the client does (the contract's
        `reservedUntil`)."""
        if self.ready_at == 0 or self.ready_at > until:
            return self.amount_wei
        return max(self.amount_wei - self.thawing_wei, 0)


def _error_selectors(artifacts: dict[str, Artifact]) -> dict[bytes, tuple[str, list[str], list[str]]]:
    selectors: dict[bytes, tuple[str, list[str], list[str]]] = {
        keccak(text="Error(string)")[:4]: ("Error", ["string"], ["message"]),
        keccak(text="Panic(uint256)")[:4]: ("Panic", ["uint256"], ["code"]),
    }
    for artifact in artifacts.values():
        for item in artifact.abi:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                names = [i["name"] for i in item["inputs"]]
                selectors[keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (item["name"], types, names)
    # OpenZeppelin errors reachable through our contracts
    selectors[keccak(text="ReentrancyGuardReentrantCall()")[:4]] = ("ReentrancyGuardReentrantCall", [], [])
    return selectors


_POOL_OF = keccak(text="poolOf(address)")[:4]
_ALLOCATION_OF = keccak(text="allocationOf(address,address)")[:4]
_RESERVED = keccak(text="Reserved(address,address,uint256,uint256)")
_CLAIMED = keccak(text="Claimed(address,address,bytes32,uint256)")


class Chain:
    """A connection to one EVM network, optionally with a signing account and a deployment."""

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount | None = None,
        deployment: Deployment | None = None,
        tx_timeout_s: float = 120.0,
    ) -> None:
        self.w3 = w3
        self.account = account
        self.deployment = deployment
        self.tx_timeout_s = tx_timeout_s
        self.artifacts = load_artifacts()
        self._errors = _error_selectors(self.artifacts)
        self._send_lock = threading.Lock()
        self._rpc_lock = threading.Lock()
        self._rpc: httpx.Client | None = None
        self._min_bond: int | None = None
        self.registry = self.escrow = None
        if deployment is not None:
            self.registry = w3.eth.contract(address=to_checksum_address(deployment.registry),
                                            abi=self.artifacts["OfferRegistry"].abi)
            self.escrow = w3.eth.contract(address=to_checksum_address(deployment.escrow),
                                          abi=self.artifacts["PaymentEscrow"].abi)

    # ------------------------------------------------------------------ connecting
    @classmethod
    def connect(
        cls,
        rpc_url: str,
        account: LocalAccount | None = None,
        deployment: Deployment | None = None,
        expected_chain_id: int | None = None,
        timeout_s: float = 10.0,
    ) -> Chain:
        """Connect and check: RPC reachable, chain id as expected, contract code at the deployment."""
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        try:
            chain_id = w3.eth.chain_id
        except (requests.RequestException, Web3Exception, OSError, ValueError) as exc:
            raise ChainError(f"cannot reach RPC {rpc_url}: {type(exc).__name__}") from exc
        want = expected_chain_id if expected_chain_id is not None else (deployment.chain_id if deployment else None)
        if want is not None and chain_id != want:
            raise ChainError(f"RPC {rpc_url} is chain id {chain_id}, expected {want}")
        if deployment is not None:
            for name, address in (("OfferRegistry", deployment.registry), ("PaymentEscrow", deployment.escrow)):
                if len(w3.eth.get_code(to_checksum_address(address))) == 0:
                    raise ChainError(
                        f"no contract code for {name} at {address} on chain {chain_id}: "
                        "redeploy with `p2pllm-deploy`"
                    )
        return cls(w3, account, deployment)

    @property
    def chain_id(self) -> int:
        return int(self.w3.eth.chain_id)

    @property
    def address(self) -> str:
        return self._require_account().address

    def supports_transient_storage(self) -> bool:
        """Whether the chain runs EIP-1153 (TSTORE/TLOAD, Cancun), which the escrow's reentrancy guard needs:
        a contract-creation `eth_call` that stores 1 transiently, loads it and returns it."""
        init_code = "0x600160005d60005c60005260206000f3"
        try:
            result = bytes(self.w3.eth.call({"data": init_code}))
        except (ContractLogicError, Web3Exception, ValueError):
            return False
        except (requests.RequestException, OSError) as exc:
            raise ChainError(f"RPC unreachable: {type(exc).__name__}") from exc
        return int.from_bytes(result, "big") == 1 if result else False

    def block_timestamp(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def eth_balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(to_checksum_address(address)))

    # ------------------------------------------------------------------ deploying
    def deploy_contracts(
        self,
        network: str,
        rpc_url: str,
        thaw_period_s: int,
        max_receipt_validity_s: int,
        offer_ttl_s: int,
        min_bond_wei: int = DEFAULT_MIN_BOND_WEI,
        commitment_validity_s: int = DEFAULT_COMMITMENT_VALIDITY_S,
        bond_thaw_s: int | None = None,
        slash_reward_bps: int = DEFAULT_SLASH_REWARD_BPS,
    ) -> Deployment:
        """Deploy OfferRegistry and PaymentEscrow from the account and return their Deployment. The bond thaw
        defaults to `default_bond_thaw_s`; any thaw must outlast both the commitment and the receipt validity."""
        if bond_thaw_s is None:
            bond_thaw_s = default_bond_thaw_s(thaw_period_s, commitment_validity_s)
        problem = bond_params_problem(min_bond_wei, bond_thaw_s, commitment_validity_s, slash_reward_bps,
                                      max_receipt_validity_s)
        if problem is not None:
            raise ChainError(f"deploy OfferRegistry: {problem}")
        registry_tx = self._deploy("OfferRegistry", offer_ttl_s, min_bond_wei, bond_thaw_s, commitment_validity_s,
                                   slash_reward_bps)
        escrow_tx = self._deploy("PaymentEscrow", thaw_period_s, max_receipt_validity_s)
        deployment = Deployment(
            network=network,
            chain_id=self.chain_id,
            rpc_url=rpc_url,
            registry=registry_tx["contractAddress"],
            escrow=escrow_tx["contractAddress"],
            deploy_block=int(registry_tx["blockNumber"]),
            compiler=self.artifacts["PaymentEscrow"].compiler,
            evm_version=self.artifacts["PaymentEscrow"].evm_version,
            thaw_period_s=thaw_period_s,
            max_receipt_validity_s=max_receipt_validity_s,
            offer_ttl_s=offer_ttl_s,
            min_bond_wei=min_bond_wei,
            bond_thaw_s=bond_thaw_s,
            commitment_validity_s=commitment_validity_s,
            slash_reward_bps=slash_reward_bps,
        )
        for address in (deployment.registry, deployment.escrow):
            if len(self.w3.eth.get_code(to_checksum_address(address))) == 0:
                raise ChainError(f"deployment reported {address} but the chain has no code there")
        return deployment

    def _deploy(self, name: str, *args: int) -> Any:
        artifact = self.artifacts[name]
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self._send(factory.constructor(*args), what=f"deploy {name}")
        if not receipt["contractAddress"]:
            raise ChainError(f"deploy {name}: no contract address in the receipt")
        return receipt

    # ------------------------------------------------------------------ registry
    def register_offer(
        self, model_id: bytes, start: int, end: int, price_wei_per_token: int, endpoint: str,
        bond_wei: int | None = None,
    ) -> tuple[int, TxResult]:
        """Register an offer, sending `bond_wei` into this node's bond; by default exactly what the bond lacks of
        the registry's minimum (0 once bonded). Registering cancels a pending bond withdrawal."""
        if bond_wei is None:
            bond_wei = self.missing_bond(self.address)
        if bond_wei < 0:
            raise ValueError(f"bond_wei must not be negative, got {bond_wei}")
        result = self._tx(self._registry().functions.register(model_id, start, end, price_wei_per_token, endpoint),
                          "register offer", value=bond_wei)
        offer_id = next(args["offerId"] for name, args in result.events if name == "OfferRegistered")
        return int(offer_id), result

    def update_price(self, offer_id: int, price_wei_per_token: int) -> TxResult:
        return self._tx(self._registry().functions.updatePrice(offer_id, price_wei_per_token), "update price")

    def heartbeat(self, offer_id: int) -> TxResult:
        return self._tx(self._registry().functions.heartbeat(offer_id), "heartbeat")

    def remove_offer(self, offer_id: int) -> TxResult:
        return self._tx(self._registry().functions.remove(offer_id), "remove offer")

    def prune_offers(self, model_id: bytes, cursor: int = 0, limit: int = DEFAULT_PAGE) -> tuple[int, int, TxResult]:
        """Remove the model's offers long past their expiry (anyone may), scanning `limit` list entries from
        `cursor`; returns (pruned, where to continue or 0 at the end, tx). The continuation is read from the
        paging view first: it walks the same entries as the prune."""
        _, next_cursor = self._call(self._registry().functions.offersByModel(model_id, cursor, limit))
        result = self._tx(self._registry().functions.prune(model_id, cursor, limit), "prune offers")
        pruned = sum(1 for name, _ in result.events if name == "OfferPruned")
        return pruned, int(next_cursor), result

    def get_offer(self, offer_id: int) -> Offer:
        return _offer(self._call(self._registry().functions.getOffer(offer_id)))

    def live_offers(self, model_id: bytes, page_size: int = DEFAULT_PAGE) -> list[Offer]:
        """Every unexpired offer for a model, paging through the registry."""
        offers: list[Offer] = []
        cursor = 0
        while True:
            page, cursor = self._call(self._registry().functions.offersByModel(model_id, cursor, page_size))
            offers.extend(_offer(o) for o in page)
            if cursor == 0:
                return offers

    def offers_of(self, node: str, model_id: bytes) -> list[Offer]:
        return [o for o in self.live_offers(model_id) if o.node.lower() == node.lower()]

    def registry_address(self) -> str:
        return str(self._registry().address)

    def offer_count_by_model(self, model_id: bytes) -> int:
        """Entries in the model's list: live offers and expired ones not yet pruned."""
        return int(self._call(self._registry().functions.offerCountByModel(model_id)))

    def offer_ttl_s(self) -> int:
        return int(self._call(self._registry().functions.offerTtl()))

    def offer_count(self, node: str) -> int:
        """How many offers `node` has registered (live, or expired and not yet pruned)."""
        return int(self._call(self._registry().functions.offerCount(to_checksum_address(node))))

    # ------------------------------------------------------------------ bonds and slashing
    def min_bond(self) -> int:
        """The least bond (wei) a node must hold after registering (a deploy-time constant)."""
        if self._min_bond is None:
            self._min_bond = int(self._call(self._registry().functions.minBond()))
        return self._min_bond

    def bond_of(self, node: str) -> int:
        """The bond `node` holds, thawing or not (wei)."""
        return int(self._call(self._registry().functions.bondOf(to_checksum_address(node))))

    def missing_bond(self, node: str) -> int:
        """What `node` must add to its bond to reach the minimum (0 when it has)."""
        return max(self.min_bond() - self.bond_of(node), 0)

    def bond_withdrawal(self, node: str) -> int:
        """When `node`'s requested bond withdrawal unlocks (a timestamp); 0 when none is pending."""
        return int(self._call(self._registry().functions.bondWithdrawal(to_checksum_address(node))))

    def bond_periods(self) -> tuple[int, int, int]:
        """(bondThaw, commitmentValidity, slashRewardBps) of the registry."""
        registry = self._registry()
        return (int(self._call(registry.functions.bondThaw())),
                int(self._call(registry.functions.commitmentValidity())),
                int(self._call(registry.functions.slashRewardBps())))

    def request_bond_withdrawal(self) -> tuple[int, TxResult]:
        """Start the thaw of this node's whole bond (it must have no offers); returns when it unlocks."""
        result = self._tx(self._registry().functions.requestBondWithdrawal(), "request bond withdrawal")
        ready_at = next(args["readyAt"] for name, args in result.events if name == "BondWithdrawalRequested")
        return int(ready_at), result

    def withdraw_bond(self) -> tuple[int, TxResult]:
        """Pay this node's thawed bond back to it; returns the amount."""
        result = self._tx(self._registry().functions.withdrawBond(), "withdraw bond")
        amount = next(args["amount"] for name, args in result.events if name == "BondWithdrawn")
        return int(amount), result

    def slash(self, commitment_a: Commitment, sig_a: bytes, commitment_b: Commitment, sig_b: bytes
              ) -> tuple[Slash, TxResult]:
        """Submit two conflicting commitments signed by one node: its bond goes, part of it to this account."""
        fn = self._registry().functions.slash(commitment_a.as_tuple(), bytes(sig_a), commitment_b.as_tuple(),
                                              bytes(sig_b))
        result = self._tx(fn, "slash")
        args = next(args for name, args in result.events if name == "Slashed")
        return Slash(to_checksum_address(args["node"]), to_checksum_address(args["reporter"]), int(args["reward"]),
                     int(args["burned"])), result

    def proof_used(self, commitment_a: Commitment, commitment_b: Commitment) -> bool:
        """Whether this pair (in either order) has already slashed its node."""
        domain = self.registry_domain()
        fn = self._registry().functions.proofUsed(commitment_a.digest(domain), commitment_b.digest(domain))
        return bool(self._call(fn))

    def registry_domain(self) -> RegistryDomain:
        """The EIP-712 domain nodes sign commitments in: this chain and this registry."""
        return RegistryDomain(self.chain_id, self._registry().address)

    def commitment_digest(self, commitment: Commitment) -> bytes:
        """The registry's own digest of a commitment (for checks; `Commitment.digest` computes it locally)."""
        return bytes(self._call(self._registry().functions.commitmentDigest(commitment.as_tuple())))

    # ------------------------------------------------------------------ escrow
    def escrow_domain(self) -> EscrowDomain:
        return EscrowDomain(self.chain_id, self._escrow().address)

    def deposit(self, amount_wei: int) -> TxResult:
        """Add ETH to this account's pool (free funds: withdrawable at once, not yet reserved for any node)."""
        return self._tx(self._escrow().functions.deposit(), "deposit", value=amount_wei)

    def withdraw(self, amount_wei: int) -> TxResult:
        """Send `amount_wei` of this account's pool back to its wallet (instant)."""
        return self._tx(self._escrow().functions.withdraw(amount_wei), "withdraw")

    def reserve(self, nodes: Sequence[str], amounts_wei: Sequence[int], deposit_wei: int = 0) -> TxResult:
        """One transaction: deposit `deposit_wei` into the pool, then move `amounts_wei[i]` from it into the
        allocation for `nodes[i]`."""
        if not nodes or len(nodes) != len(amounts_wei):
            raise ValueError(f"reserve needs as many amounts as nodes, got {len(nodes)} and {len(amounts_wei)}")
        fn = self._escrow().functions.reserve([to_checksum_address(n) for n in nodes], list(amounts_wei))
        return self._tx(fn, f"reserve for {len(nodes)} node(s)", value=deposit_wei)

    def request_release(self, nodes: Sequence[str], amounts_wei: Sequence[int]) -> TxResult:
        """Start thawing part of each allocation back to the pool (replaces a pending request per node)."""
        fn = self._escrow().functions.requestRelease([to_checksum_address(n) for n in nodes], list(amounts_wei))
        return self._tx(fn, f"request release from {len(nodes)} allocation(s)")

    def cancel_release(self, nodes: Sequence[str]) -> TxResult:
        fn = self._escrow().functions.cancelRelease([to_checksum_address(n) for n in nodes])
        return self._tx(fn, f"cancel release of {len(nodes)} allocation(s)")

    def release(self, nodes: Sequence[str]) -> tuple[int, TxResult]:
        """Move each thawed release into the pool; returns the total moved."""
        result = self._tx(self._escrow().functions.release([to_checksum_address(n) for n in nodes]),
                          f"release {len(nodes)} allocation(s)")
        return sum(int(args["amount"]) for name, args in result.events if name == "Released"), result

    def claim(self, receipt: Receipt, signature: bytes) -> tuple[int, TxResult]:
        result = self._tx(self._escrow().functions.claim(receipt.as_tuple(), signature), "claim")
        return sum(int(args["paid"]) for name, args in result.events if name == "Claimed"), result

    def claim_batch(self, items: Sequence[tuple[Receipt, bytes]]) -> tuple[list[int], TxResult]:
        """Claim many receipts in one transaction; returns what each item paid (0 where rejected)."""
        if not items:
            raise ValueError("claim_batch needs at least one receipt")
        fn = self._escrow().functions.claimBatch([r.as_tuple() for r, _ in items], [s for _, s in items])
        result = self._tx(fn, f"claim batch of {len(items)}")
        paid = [0] * len(items)
        by_channel = {(r.client.lower(), r.node.lower(), r.session_id): i for i, (r, _) in enumerate(items)}
        for name, args in result.events:
            if name == "Claimed":
                index = by_channel.get((args["client"].lower(), args["node"].lower(), bytes(args["sessionId"])))
                if index is not None:
                    paid[index] += int(args["paid"])
        return paid, result

    def pool_balance(self, client: str) -> int:
        """The client's free funds in the escrow."""
        return int.from_bytes(self._eth_call(self._escrow().address, _POOL_OF + address_word(client))[:32], "big")

    def allocation_of(self, client: str, node: str) -> Allocation:
        """What `client` has reserved for `node`, and any release in progress (one plain JSON-RPC read: nodes
        check it on the request path)."""
        data = self._eth_call(self._escrow().address, _ALLOCATION_OF + address_word(client) + address_word(node))
        if len(data) != 96:
            raise ChainError(f"allocationOf returned {len(data)} bytes, expected 96")
        return Allocation(*(int.from_bytes(data[i:i + 32], "big") for i in (0, 32, 64)))

    def reserved_until(self, client: str, node: str, until: int) -> int:
        """The contract's own answer to `Allocation.reserved_until` (for checks; nodes compute it locally)."""
        fn = self._escrow().functions.reservedUntil(to_checksum_address(client), to_checksum_address(node), until)
        return int(self._call(fn))

    def _escrow_logs(self, what: str, topics: list[bytes]) -> list[Any]:
        """The escrow's `what` events matching `topics`, since its deployment."""
        deployment = self.deployment
        try:
            return list(self.w3.eth.get_logs({"address": self._escrow().address, "topics": topics,
                                              "fromBlock": deployment.deploy_block if deployment else 0,
                                              "toBlock": "latest"}))
        except (requests.RequestException, OSError, Web3Exception, ValueError) as exc:
            raise ChainError(f"cannot read the escrow's {what} events: {type(exc).__name__}: {exc}") from exc

    def allocated_nodes(self, client: str) -> list[str]:
        """Every node `client` has ever reserved for, from the escrow's Reserved events (oldest first)."""
        logs = self._escrow_logs("Reserved", [_RESERVED, address_word(client)])
        nodes: dict[str, None] = {}
        for log in logs:
            nodes[to_checksum_address(bytes(log["topics"][2])[12:])] = None
        return list(nodes)

    def earnings(self) -> dict[str, int]:
        """What the escrow has paid each node so far (checksummed address -> wei), from its Claimed events."""
        paid: dict[str, int] = {}
        for log in self._escrow_logs("Claimed", [_CLAIMED]):
            node = to_checksum_address(bytes(log["topics"][1])[12:])
            paid[node] = paid.get(node, 0) + int.from_bytes(bytes(log["data"])[32:64], "big")
        return paid

    def paid_for(self, client: str, node: str, session_id: bytes) -> int:
        fn = self._escrow().functions.paidFor(to_checksum_address(client), to_checksum_address(node), session_id)
        return int(self._call(fn))

    def escrow_periods(self) -> tuple[int, int]:
        """(thawPeriod, maxReceiptValidity) in seconds."""
        escrow = self._escrow()
        return int(self._call(escrow.functions.thawPeriod())), int(self._call(escrow.functions.maxReceiptValidity()))

    def onchain_receipt_digest(self, receipt: Receipt) -> bytes:
        return bytes(self._call(self._escrow().functions.receiptDigest(receipt.as_tuple())))

    def onchain_receipt_typehash(self) -> bytes:
        return bytes(self._call(self._escrow().functions.RECEIPT_TYPEHASH()))

    # ------------------------------------------------------------------ plumbing
    def _registry(self) -> Any:
        if self.registry is None:
            raise ChainError("no deployment loaded: pass --network or a deployment file")
        return self.registry

    def _escrow(self) -> Any:
        if self.escrow is None:
            raise ChainError("no deployment loaded: pass --network or a deployment file")
        return self.escrow

    def _require_account(self) -> LocalAccount:
        if self.account is None:
            raise ChainError("this action needs a key: use --keystore, --private-key-env or --dev-account")
        return self.account

    def _eth_call(self, to: str, data: bytes) -> bytes:
        """A read-only call at the latest block, as plain JSON-RPC over one persistent connection. Nodes read
        their clients' allocations often (in the background), and web3's request pipeline costs ~5 ms a call
        against ~0.5 ms this way; everything else goes through web3. An RPC URL with credentials in it goes
        through web3 too."""
        endpoint = str(getattr(self.w3.provider, "endpoint_uri", "") or "")
        if not endpoint or urllib.parse.urlsplit(endpoint).username:
            return bytes(self.w3.eth.call({"to": to_checksum_address(to), "data": "0x" + data.hex()}))
        request = {"jsonrpc": "2.0", "id": 1, "method": "eth_call",
                   "params": [{"to": to, "data": "0x" + data.hex()}, "latest"]}
        with self._rpc_lock:
            if self._rpc is None:
                self._rpc = http_client(timeout_s=10.0)
            try:
                response = self._rpc.post(endpoint, json=request)
            except httpx.HTTPError as exc:
                raise ChainError(f"RPC unreachable: {type(exc).__name__}: {exc}") from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200 or not isinstance(answer, dict):
            raise ChainError(f"RPC answered HTTP {response.status_code}: {response.content[:200]!r}")
        if "error" in answer:
            error = answer["error"] if isinstance(answer["error"], dict) else {"message": str(answer["error"])}
            raise ChainError(f"eth_call reverted or failed: {error.get('message')}")
        result = answer.get("result")
        if not (isinstance(result, str) and result.startswith("0x")):
            raise ChainError(f"RPC returned no call result: {response.content[:200]!r}")
        try:
            return bytes.fromhex(result[2:])
        except ValueError as exc:
            raise ChainError(f"RPC returned a malformed call result: {result[:80]!r}") from exc

    def _call(self, fn: Any) -> Any:
        try:
            return fn.call()
        except (ContractCustomError, ContractLogicError) as exc:
            raise self._reverted(exc, "call") from exc
        except (requests.RequestException, OSError) as exc:
            raise ChainError(f"RPC unreachable: {type(exc).__name__}") from exc

    def _tx(self, fn: Any, what: str, value: int = 0) -> TxResult:
        receipt = self._send(fn, what, value)
        return TxResult(receipt["transactionHash"].to_0x_hex(), int(receipt["gasUsed"]),
                        int(receipt["blockNumber"]), self._decode_events(receipt))

    def _send(self, fn: Any, what: str, value: int = 0) -> Any:
        account = self._require_account()
        with self._send_lock:
            try:
                tx = fn.build_transaction({
                    "from": account.address,
                    "value": value,
                    "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
                    "chainId": self.chain_id,
                })
                # The estimate holds only for the state it ran on; another transaction mined first can make
                # this one costlier (a storage slot that was zero is not any more), so leave headroom.
                tx["gas"] = int(int(tx["gas"]) * GAS_HEADROOM) + GAS_HEADROOM_FIXED
                cost = int(tx["gas"]) * int(tx.get("maxFeePerGas", tx.get("gasPrice", 0))) + value
                balance = self.w3.eth.get_balance(account.address)
                if balance < cost:
                    raise ChainError(f"{what}: account {account.address} has {balance} wei, needs about {cost}")
                signed = account.sign_transaction(tx)
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.tx_timeout_s)
            except (ContractCustomError, ContractLogicError) as exc:
                raise self._reverted(exc, what) from exc
            except TimeExhausted as exc:
                raise ChainError(f"{what}: not mined within {self.tx_timeout_s:.0f} s") from exc
            except (requests.RequestException, OSError) as exc:
                raise ChainError(f"{what}: RPC unreachable ({type(exc).__name__})") from exc
            except Web3Exception as exc:
                if "insufficient funds" in str(exc).lower():
                    balance = self.w3.eth.get_balance(account.address)
                    raise ChainError(
                        f"{what}: account {account.address} has {balance} wei, not enough for gas + {value} wei"
                    ) from exc
                raise ChainError(f"{what}: {exc}") from exc
        if receipt["status"] != 1:
            out_of_gas = int(receipt["gasUsed"]) >= int(tx["gas"])
            raise TxReverted(f"{what}: transaction {receipt['transactionHash'].to_0x_hex()} reverted"
                             + (f" (out of gas at its limit of {tx['gas']})" if out_of_gas else ""))
        return receipt

    def _reverted(self, exc: Exception, what: str) -> TxReverted:
        data = getattr(exc, "data", None)
        raw = bytes.fromhex(data[2:]) if isinstance(data, str) and data.startswith("0x") else b""
        known = self._errors.get(raw[:4]) if len(raw) >= 4 else None
        if known is None:
            return TxReverted(f"{what} reverted: {exc}")
        name, types, names = known
        values = abi_decode(types, raw[4:]) if types else ()
        args = {n: (v.hex() if isinstance(v, bytes) else v) for n, v in zip(names, values, strict=True)}
        rendered = ", ".join(f"{k}={v}" for k, v in args.items())
        return TxReverted(f"{what} reverted: {name}({rendered})", name, args)

    def _decode_events(self, receipt: Any) -> list[tuple[str, dict[str, Any]]]:
        contracts = [c for c in (self.registry, self.escrow) if c is not None]
        by_topic: dict[bytes, tuple[Any, str]] = {}
        for contract in contracts:
            for item in contract.abi:
                if item["type"] == "event":
                    signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
                    by_topic[keccak(text=signature)] = (contract, item["name"])
        events: list[tuple[str, dict[str, Any]]] = []
        for log in receipt["logs"]:
            if not log["topics"]:
                continue
            hit = by_topic.get(bytes(log["topics"][0]))
            if hit is None:
                continue
            contract, name = hit
            if log["address"].lower() != contract.address.lower():
                continue
            decoded = getattr(contract.events, name)().process_log(log)
            events.append((name, dict(decoded["args"])))
        return events


def _offer(raw: Sequence[Any]) -> Offer:
    offer_id, node, model_id, start, end, price, endpoint, expires_at = raw
    return Offer(int(offer_id), to_checksum_address(node), bytes(model_id), int(start), int(end), int(price),
                 str(endpoint), int(expires_at))
