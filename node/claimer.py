"""When and how the node turns held receipts into on-chain payment: batches go out when the unclaimed
value or the age of the oldest receipt passes a threshold, and always before a receipt's deadline; what
the escrow then reports as paid is written back to the ledger. `PaymentBooking` tells the node's standing of
its clients (`Exposure`) about each claim. Knows nothing about HTTP or web3 (the chain calls are injected)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from node.exposure import Exposure
from node.ledger import HeldReceipt, Ledger
from p2pllm.receipts import Receipt

log = logging.getLogger("p2pnode.claims")

SubmitBatch = Callable[[Sequence[tuple[Receipt, bytes]]], list[int]]
PaidFor = Callable[[Receipt], int]
OnPaid = Callable[[Sequence[tuple[Receipt, int]]], None]
Claiming = Callable[[Sequence[Receipt]], AbstractContextManager[object]]


class Refreshable(Protocol):
    def refresh(self, client: str) -> None: ...


@dataclass(frozen=True)
class PaymentBooking:
    """How a claim reaches the node's view of what its clients owe: the claim is declared to `exposure` while
    it runs, and its payments are counted together with a fresh read of each client's allocation, under that
    client's hold, so that no receipt check sees one without the other."""

    escrow: Refreshable
    exposure: Exposure

    def claiming(self, receipts: Sequence[Receipt]) -> AbstractContextManager[object]:
        return self.exposure.claiming(r.client for r in receipts)

    def on_paid(self, settled: Sequence[tuple[Receipt, int]]) -> None:
        for client in sorted({receipt.client.lower() for receipt, _ in settled}):
            with self.exposure.hold(client):
                self.escrow.refresh(client)
                for receipt, paid in settled:
                    if receipt.client.lower() == client:
                        self.exposure.paid(receipt.client, receipt.session_id, paid)


@dataclass(frozen=True)
class ClaimPolicy:
    min_batch_wei: int = 10**15
    max_age_s: float = 300.0
    deadline_margin_s: float = 600.0
    interval_s: float = 5.0
    max_batch: int = 50


@dataclass(frozen=True)
class ClaimReport:
    receipts: int
    paid_wei: int
    tx_hashes: tuple[str, ...] = ()


class Claimer:
    def __init__(self, ledger: Ledger, submit: SubmitBatch, paid_for: PaidFor, policy: ClaimPolicy,
                 clock: Callable[[], float] = time.time, on_paid: OnPaid = lambda settled: None,
                 claiming: Claiming = lambda receipts: contextlib.nullcontext()) -> None:
        """`on_paid` hears, after each batch, every receipt of it with the session's total paid by the escrow;
        `claiming` spans each batch, from before its transaction is sent until `on_paid` has returned."""
        self.ledger = ledger
        self.submit = submit
        self.paid_for = paid_for
        self.policy = policy
        self.clock = clock
        self.on_paid = on_paid
        self.claiming = claiming
        self._lock = threading.Lock()

    def claimable(self) -> list[HeldReceipt]:
        """Held receipts with something left to claim whose deadline has not passed."""
        now = self.clock()
        return [h for h in self.ledger.unclaimed() if h.receipt.deadline > now]

    def due(self) -> bool:
        held = self.claimable()
        if not held:
            return False
        now = self.clock()
        total = sum(h.unclaimed_wei for h in held)
        oldest = min(h.received_at for h in held)
        soonest = min(h.receipt.deadline for h in held)
        return (total >= self.policy.min_batch_wei or now - oldest >= self.policy.max_age_s
                or soonest - now <= self.policy.deadline_margin_s)

    def claim_all(self) -> ClaimReport:
        """Claim every claimable receipt now, in batches; sync the ledger with what the escrow paid."""
        with self._lock:
            held = self.claimable()
            paid_total = 0
            for start in range(0, len(held), self.policy.max_batch):
                batch = held[start:start + self.policy.max_batch]
                with self.claiming([h.receipt for h in batch]):
                    paid = self.submit([(h.receipt, h.signature) for h in batch])
                    paid_total += sum(paid)
                    settled = [(h.receipt, self.paid_for(h.receipt)) for h in batch]
                    for receipt, session_paid in settled:
                        self.ledger.mark_paid(receipt.client, receipt.session_id, session_paid)
                    self.on_paid(settled)
            if held:
                log.info("claimed %d receipt(s), %d wei", len(held), paid_total)
            return ClaimReport(len(held), paid_total)

    def run(self, stop: threading.Event) -> None:
        """Claim whenever due until `stop` is set; failures are logged and retried next interval."""
        while not stop.wait(self.policy.interval_s):
            try:
                if self.due():
                    self.claim_all()
            except Exception as exc:  # a failed claim must not kill the node; it is retried next interval
                log.warning("claim failed, will retry: %s", exc)
