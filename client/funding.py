"""What a client reserves for the nodes of a route before it uses them, and the one transaction that does it.

A node serves only against funds reserved for its own address (the escrow's per-(client, node) allocation),
and weighs each receipt against everything the client owes it unpaid. So before a generation uses a hop, that
node's allocation must cover what the node reports as unpaid plus the most this session can cost there (price
× the session's token limit + the node's credit), through the latest receipt deadline the session may sign.
`plan_reservation` (pure) turns those needs and the current allocations into one reservation: for each node that
falls short, enough for `ahead` such sessions (so that a transaction is not needed before every generation),
taken from the pool first and, for the rest, deposited from the wallet in the same transaction.
`Funder` reads the chain, plans and sends. Knows nothing about HTTP, tensors or routing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Need:
    """What the allocation for `node` must hold: `unpaid_wei` already owed plus `session_wei` at most to come."""

    node: str
    unpaid_wei: int
    session_wei: int

    @property
    def total_wei(self) -> int:
        return self.unpaid_wei + self.session_wei


@dataclass(frozen=True)
class Reservation:
    """One `reserve` transaction: `amounts_wei[i]` more for `nodes[i]`, of which `deposit_wei` in total comes
    from the wallet (the rest from the pool)."""

    nodes: tuple[str, ...]
    amounts_wei: tuple[int, ...]
    deposit_wei: int
    tx_hash: str = ""

    @property
    def total_wei(self) -> int:
        return sum(self.amounts_wei)


class InsufficientPool(Exception):
    """The pool cannot cover a reservation and depositing from the wallet is not allowed."""

    def __init__(self, shortfall_wei: int, pool_wei: int) -> None:
        super().__init__(f"the route needs {shortfall_wei} wei more reserved than the escrow pool's {pool_wei} wei: "
                         "deposit more (`p2pclient deposit`) or allow depositing from the wallet")
        self.shortfall_wei = shortfall_wei
        self.pool_wei = pool_wei


def plan_reservation(needs: Sequence[Need], reserved_wei: Mapping[str, int], pool_wei: int,
                     ahead: int = 1) -> Reservation | None:
    """The reservation that tops up every node whose allocation does not cover its needs (several needs of one
    node add up), to what it owes plus `ahead` times what the sessions may cost; None when every allocation
    already covers its needs. `reserved_wei` maps a node (any case) to what stays reserved for it through the
    horizon; the pool pays first, the wallet the rest."""
    if ahead < 1:
        raise ValueError(f"ahead must be >= 1, got {ahead}")
    totals: dict[str, int] = {}
    targets: dict[str, int] = {}
    names: dict[str, str] = {}
    for need in needs:
        if need.unpaid_wei < 0 or need.session_wei < 0:
            raise ValueError(f"negative need for {need.node}: {need}")
        key = need.node.lower()
        names.setdefault(key, need.node)
        totals[key] = totals.get(key, 0) + need.total_wei
        targets[key] = targets.get(key, 0) + need.unpaid_wei + ahead * need.session_wei
    have = {node.lower(): amount for node, amount in reserved_wei.items()}
    short = [(names[key], targets[key] - have.get(key, 0)) for key, total in totals.items()
             if total > have.get(key, 0)]
    if not short:
        return None
    shortfall = sum(amount for _, amount in short)
    return Reservation(tuple(n for n, _ in short), tuple(a for _, a in short), max(shortfall - pool_wei, 0))


class AllocationState(Protocol):
    def reserved_until(self, until: int) -> int: ...


class EscrowAccount(Protocol):
    """The chain calls a funder needs (`p2pllm.chain.Chain` provides them)."""

    @property
    def address(self) -> str: ...

    def pool_balance(self, client: str) -> int: ...

    def allocation_of(self, client: str, node: str) -> AllocationState: ...

    def reserve(self, nodes: Sequence[str], amounts_wei: Sequence[int], deposit_wei: int = 0) -> object: ...


class Funder:
    """Keeps the allocations of the nodes a client uses topped up; `allow_deposit` lets a reservation take
    what the pool lacks from the wallet. `horizon_s`: how far ahead the reservation must hold (the receipts'
    validity plus a margin for a long generation); `ahead`: how many sessions' worth a top-up reserves."""

    def __init__(self, chain: EscrowAccount, allow_deposit: bool, horizon_s: int, ahead: int = 1,
                 clock: Callable[[], float] = time.time) -> None:
        self.chain = chain
        self.allow_deposit = allow_deposit
        self.horizon_s = horizon_s
        self.ahead = ahead
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}  # node (lower case) -> the most running sessions may still cost

    def ensure(self, needs: Sequence[Need]) -> Reservation | None:
        """Reserve whatever `needs` lack, in one transaction; None if nothing was missing. Calls from several
        threads (concurrent sessions, spot checks) run one at a time: each reads what the previous reserved, and
        each session's need counts what the sessions still running with the same nodes may cost (a node weighs
        everything the client owes it), until `release`."""
        with self._lock:
            widened = [Need(n.node, n.unpaid_wei, n.session_wei + self._in_flight.get(n.node.lower(), 0))
                       for n in needs]
            reservation = self._ensure(widened)
            for need in needs:
                key = need.node.lower()
                self._in_flight[key] = self._in_flight.get(key, 0) + need.session_wei
            return reservation

    def release(self, needs: Sequence[Need]) -> None:
        """The sessions behind `needs` (as given to `ensure`) have ended."""
        with self._lock:
            for need in needs:
                key = need.node.lower()
                left = self._in_flight.get(key, 0) - need.session_wei
                if left > 0:
                    self._in_flight[key] = left
                else:
                    self._in_flight.pop(key, None)

    def _ensure(self, needs: Sequence[Need]) -> Reservation | None:
        until = int(self.clock()) + self.horizon_s
        client = self.chain.address
        nodes = {need.node.lower(): need.node for need in needs}
        reserved = {node: self.chain.allocation_of(client, node).reserved_until(until) for node in nodes.values()}
        pool = self.chain.pool_balance(client)
        plan = plan_reservation(needs, reserved, pool, self.ahead)
        if plan is None:
            return None
        if plan.deposit_wei and not self.allow_deposit:
            raise InsufficientPool(plan.total_wei, pool)
        tx = self.chain.reserve(plan.nodes, plan.amounts_wei, plan.deposit_wei)
        return Reservation(plan.nodes, plan.amounts_wei, plan.deposit_wei, str(getattr(tx, "tx_hash", "")))
