"""The node's payment policy: is this receipt enough to serve this request? Checks signer, domain (this
node, chain and escrow), cumulative amount vs price × tokens (with a small credit), monotonicity, deadline
window and the client's escrow cover (read from chain through `EscrowView`, cached briefly).
Knows nothing about HTTP, tensors or SQL; raises `PaymentError` with a stable code."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from eth_utils import to_checksum_address

from p2pllm.receipts import EscrowDomain, Receipt, ReceiptSignatureError, recover_signer_bytes


class PaymentError(Exception):
    """A receipt the node will not serve for; `code` is machine-readable, `detail` human-readable data."""

    def __init__(self, code: str, **detail: object) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class EscrowView(Protocol):
    """What the node must know about a client's escrow to accept a receipt."""

    def available_wei(self, client: str, until: int) -> int:
        """Funds that stay claimable by the node until timestamp `until`."""
        ...


@dataclass(frozen=True)
class Terms:
    """The node's advertised terms."""

    node: str
    domain: EscrowDomain
    price_wei_per_token: int
    credit_wei: int
    max_receipt_validity_s: int
    min_deadline_margin_s: int = 120


class ThawState(Protocol):
    amount_wei: int
    ready_at: int


class EscrowReader(Protocol):
    """The two escrow reads the node needs (`p2pllm.chain.Chain` provides them)."""

    def escrow_balance(self, client: str) -> int: ...

    def thaw_of(self, client: str) -> ThawState: ...


class CachedEscrowView:
    """Reads balance and thaw from chain, caching each client's answer for `ttl_s`."""

    def __init__(self, reader: EscrowReader, ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._reader = reader
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, int, int, int]] = {}
        self._lock = threading.Lock()

    def available_wei(self, client: str, until: int) -> int:
        key = client.lower()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is None or now - hit[0] > self._ttl_s:
            thaw = self._reader.thaw_of(client)
            hit = (now, self._reader.escrow_balance(client), thaw.amount_wei, thaw.ready_at)
            with self._lock:
                self._cache[key] = hit
        _, balance, thaw_amount, ready_at = hit
        # Funds whose thaw completes before the receipt's deadline may leave before the node claims.
        if ready_at and ready_at <= until:
            return max(balance - thaw_amount, 0)
        return balance

    def forget(self, client: str) -> None:
        with self._lock:
            self._cache.pop(client.lower(), None)


def check_receipt(
    terms: Terms,
    escrow: EscrowView,
    *,
    client: str,
    session_id: bytes,
    tokens_after: int,
    owed_wei: int,
    previous: Receipt | None,
    paid_wei: int,
    tokens: int,
    amount_wei: int,
    deadline: int,
    signature: bytes,
    now: int,
    signature_verified: bool = False,
) -> Receipt:
    """The receipt to store if it covers `owed_wei`, what the session owes once this request's tokens are
    served (each token at the price in force when it was served); else PaymentError. `signature_verified`
    skips only the signature recovery, for a receipt byte-identical to one this session already verified."""
    try:
        receipt = Receipt(client, terms.node, session_id, tokens, amount_wei, deadline)
    except ValueError as exc:
        raise PaymentError("malformed_receipt", reason=str(exc)) from exc
    if not signature_verified:
        try:
            signer = recover_signer_bytes(receipt, terms.domain, signature)
        except ReceiptSignatureError as exc:
            raise PaymentError("bad_signature", reason=exc.reason) from exc
        if signer.hex() != client[2:].lower():
            raise PaymentError("bad_signature", reason="not signed by the session's client for this node, chain "
                               "and escrow", recovered=to_checksum_address(signer))
    if deadline < now + terms.min_deadline_margin_s or deadline > now + terms.max_receipt_validity_s:
        raise PaymentError("bad_deadline", deadline=deadline, earliest=now + terms.min_deadline_margin_s,
                           latest=now + terms.max_receipt_validity_s)
    if previous is not None and (amount_wei < previous.amount_wei or tokens < previous.tokens):
        raise PaymentError("receipt_decreased", previous_amount_wei=str(previous.amount_wei),
                           amount_wei=str(amount_wei), previous_tokens=previous.tokens, tokens=tokens)
    owed = owed_wei
    if amount_wei + terms.credit_wei < owed:
        raise PaymentError("underpaid", owed_wei=str(owed), amount_wei=str(amount_wei),
                           credit_wei=str(terms.credit_wei), tokens=tokens_after)
    outstanding = amount_wei - paid_wei
    available = escrow.available_wei(client, deadline)
    if available < outstanding:
        raise PaymentError("insufficient_escrow", available_wei=str(available), needed_wei=str(outstanding))
    return receipt
