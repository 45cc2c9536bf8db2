"""When and how the node turns held receipts into on-chain payment: batches go out when the unclaimed
value or the age of the oldest receipt passes a threshold, and always before a receipt's deadline; what
the escrow then reports as paid is written back to the ledger. Knows nothing about HTTP or web3 (the
chain calls are injected)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node.ledger import HeldReceipt, Ledger
from p2pllm.receipts import Receipt

log = logging.getLogger("p2pnode.claims")

SubmitBatch = Callable[[Sequence[tuple[Receipt, bytes]]], list[int]]
PaidFor = Callable[[Receipt], int]
OnPaid = Callable[[Sequence[tuple[Receipt, int]]], None]


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
                 clock: Callable[[], float] = time.time, on_paid: OnPaid = lambda settled: None) -> None:
        """`on_paid` hears, after each batch, every receipt of it with the session's total paid by the escrow."""
        self.ledger = ledger
        self.submit = submit
        self.paid_for = paid_for
        self.policy = policy
        self.clock = clock
        self.on_paid = on_paid
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
