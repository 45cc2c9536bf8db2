"""The node's payment policy: is this receipt enough to serve this request? Checks signer, domain (this
node, chain and escrow), cumulative amount vs price × tokens (with a small credit), monotonicity, deadline
window and escrow cover: what the client owes this node unpaid must fit in what the client reserved for this
node's address (its allocation, read from chain through `EscrowView`, cached briefly), not in the client's pool,
which any receipt to any address could drain. Knows nothing about HTTP, tensors or SQL; raises `PaymentError`
with a stable code."""

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

    def __init__(self, code: str, /, **detail: object) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class EscrowView(Protocol):
    """What the node must know about a client's escrow to accept a receipt."""

    def reserved_wei(self, client: str, until: int, fresh: bool = False) -> int:
        """Funds `client` reserved for this node that stay claimable through timestamp `until`; `fresh` asks
        for the chain's answer now rather than a cached one (a client may just have topped up)."""
        ...

    def answers_now(self, client: str) -> bool:
        """Whether `reserved_wei(client, ...)` (not fresh) answers without reading the chain inline."""
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


class AllocationState(Protocol):
    def reserved_until(self, until: int) -> int: ...


class EscrowReader(Protocol):
    """The escrow read the node needs (`p2pllm.chain.Chain` provides it)."""

    def allocation_of(self, client: str, node: str) -> AllocationState: ...


class EscrowUnavailable(Exception):
    """The client's escrow could not be read from chain (RPC down or failing) and no usable cached answer
    exists: the node cannot tell whether it would be paid."""


@dataclass(frozen=True)
class _EscrowEntry:
    read_at: float
    allocation: AllocationState


class CachedEscrowView:
    """Each client's allocation for this node, read from chain and cached. An answer is fresh for `ttl_s`;
    after that it is still served, up to `max_stale_s` old, while one background read per client replaces it,
    so the chain round trip stays off the request path once a client is known. A client seen for the first
    time, or whose answer is older than `max_stale_s` (the chain has been failing), is read inline, and so is a
    `fresh` request (the caller limits how often it asks); a failed inline read raises `EscrowUnavailable`. The
    contract's thaw margin (an hour beyond any receipt's validity) covers the age of an answer."""

    def __init__(self, reader: EscrowReader, node: str, ttl_s: float = 2.0, max_stale_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < ttl_s <= max_stale_s:
            raise ValueError(f"need 0 < ttl_s <= max_stale_s, got {ttl_s}, {max_stale_s}")
        self._reader = reader
        self._node = node
        self._ttl_s = ttl_s
        self._max_stale_s = max_stale_s
        self._clock = clock
        self._cache: dict[str, _EscrowEntry] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def reserved_wei(self, client: str, until: int, fresh: bool = False) -> int:
        key = client.lower()
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            age = None if entry is None else now - entry.read_at
            refresh = age is not None and self._ttl_s < age <= self._max_stale_s and key not in self._refreshing
            if refresh and not fresh:
                self._refreshing.add(key)
        if entry is None or age is None or age > self._max_stale_s or fresh:
            entry = self._read(client)
        elif refresh and not fresh:
            threading.Thread(target=self._refresh, args=(client,), name="escrow-refresh", daemon=True).start()
        return entry.allocation.reserved_until(until)

    def answers_now(self, client: str) -> bool:
        with self._lock:
            entry = self._cache.get(client.lower())
            return entry is not None and self._clock() - entry.read_at <= self._max_stale_s

    def refresh(self, client: str) -> None:
        """Read `client`'s allocation now (for the claimer, after its claims changed it); failures are logged
        and the next request reads inline."""
        try:
            self._read(client)
        except EscrowUnavailable as exc:
            with self._lock:
                self._cache.pop(client.lower(), None)
            log.warning("escrow read after a claim failed; the next request reads it inline: %s", exc)

    def _read(self, client: str) -> _EscrowEntry:
        read_at = self._clock()
        try:
            allocation = self._reader.allocation_of(client, self._node)
        except Exception as exc:  # whatever the reader raised, the answer is: unknown
            raise EscrowUnavailable(f"cannot read the escrow of {client}: {exc}") from exc
        entry = _EscrowEntry(read_at, allocation)
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
    other_unpaid_wei: int,
    other_deadline: int,
    tokens: int,
    amount_wei: int,
    deadline: int,
    signature: bytes,
    now: int,
    signature_verified: bool = False,
    fresh_escrow: bool = False,
) -> Receipt:
    """The receipt to store if it covers `owed_wei`, what the session owes once this request's tokens are
    served (each token at the price in force when it was served); else PaymentError.

    Escrow cover: what this client would then owe the node unpaid, over all its sessions (`other_unpaid_wei`
    from the others, `amount_wei - paid_wei` from this one), must stay within what the client reserved for this
    node through the latest deadline among those receipts (`other_deadline` is the others' latest). A thawing
    part of the allocation that may leave before then does not count. `signature_verified` skips only the
    signature recovery, for a receipt byte-identical to one this session already verified."""
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
    if amount_wei + terms.credit_wei < owed_wei:
        raise PaymentError("underpaid", owed_wei=str(owed_wei), amount_wei=str(amount_wei),
                           credit_wei=str(terms.credit_wei), tokens=tokens_after)
    unpaid = other_unpaid_wei + max(amount_wei - paid_wei, 0)
    until = max(deadline, other_deadline)
    reserved = escrow.reserved_wei(client, until, fresh_escrow)
    if reserved < unpaid:
        raise PaymentError("insufficient_escrow", reserved_wei=str(reserved), needed_wei=str(unpaid),
                           until=until)
    return receipt
