"""The node's payment policy: is this receipt enough to serve this request? Checks signer, domain (this
node, chain and escrow), cumulative amount vs price × tokens (with a small credit), monotonicity, deadline
window and the client's escrow cover (read from chain through `EscrowView`, cached briefly).
Knows nothing about HTTP, tensors or SQL; raises `PaymentError` with a stable code."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from eth_utils import to_checksum_address

from p2pllm.receipts import EscrowDomain, Receipt, ReceiptSignatureError, address_word, recover_signer_bytes

log = logging.getLogger("p2pnode.payment")


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


class EscrowUnavailable(Exception):
    """The client's escrow could not be read from chain (RPC down or failing) and no usable cached answer
    exists: the node cannot tell whether it would be paid."""


@dataclass(frozen=True)
class _EscrowEntry:
    read_at: float
    balance_wei: int
    thaw_wei: int
    thaw_ready_at: int


class CachedEscrowView:
    """Each client's balance and thaw, read from chain and cached. An answer is fresh for `ttl_s`; after that
    it is still served, up to `max_stale_s` old, while one background read per client replaces it, so the
    chain round trip (~10 ms through web3) stays off the request path once a client is known. A client
    seen for the first time, or whose answer is older than `max_stale_s` (the chain has been failing), is
    read inline; a failed inline read raises `EscrowUnavailable`."""

    def __init__(self, reader: EscrowReader, ttl_s: float = 2.0, max_stale_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < ttl_s <= max_stale_s:
            raise ValueError(f"need 0 < ttl_s <= max_stale_s, got {ttl_s}, {max_stale_s}")
        self._reader = reader
        self._ttl_s = ttl_s
        self._max_stale_s = max_stale_s
        self._clock = clock
        self._cache: dict[str, _EscrowEntry] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def available_wei(self, client: str, until: int) -> int:
        key = client.lower()
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            age = None if entry is None else now - entry.read_at
            refresh = age is not None and self._ttl_s < age <= self._max_stale_s and key not in self._refreshing
            if refresh:
                self._refreshing.add(key)
        if entry is None or now - entry.read_at > self._max_stale_s:
            entry = self._read(client)
        elif refresh:
            threading.Thread(target=self._refresh, args=(client,), name="escrow-refresh", daemon=True).start()
        # Funds whose thaw completes before the receipt's deadline may leave before the node claims.
        if entry.thaw_ready_at and entry.thaw_ready_at <= until:
            return max(entry.balance_wei - entry.thaw_wei, 0)
        return entry.balance_wei

    def _read(self, client: str) -> _EscrowEntry:
        read_at = self._clock()
        try:
            thaw = self._reader.thaw_of(client)
            balance = self._reader.escrow_balance(client)
        except Exception as exc:  # whatever the reader raised, the answer is: unknown
            raise EscrowUnavailable(f"cannot read the escrow of {client}: {exc}") from exc
        entry = _EscrowEntry(read_at, balance, thaw.amount_wei, thaw.ready_at)
        with self._lock:
            current = self._cache.get(client.lower())
            if current is None or current.read_at <= read_at:
                self._cache[client.lower()] = entry
        return entry

    def _refresh(self, client: str) -> None:
        try:
            self._read(client)
        except EscrowUnavailable as exc:
            log.warning("escrow refresh failed, serving the cached answer for now: %s", exc)
        finally:
            with self._lock:
                self._refreshing.discard(client.lower())


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
        if signer != address_word(client)[12:]:
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
