"""One paid step of a session, around its compute: `admit` checks the receipt against the payment policy and
everything its client owes this node and counts it; after the scheduler has run the step, `record` (on the
compute worker, before the output is released) stores a new receipt durably, and `settle` books the step on the
session; `refund` undoes an admission whose step was not served. Raises `StepFailure` with a stable code.

`admit` never blocks on I/O when called with `blocking=False` (the event loop): when it would have to read the
chain (a client without a cached escrow answer, or a fresh read before refusing), it raises `NeedsChain`, and
the caller runs it again with `blocking=True` in a worker thread. The ledger is read for a session's earlier
receipt when the session opens (`NodeSession.held`), not here.

Knows nothing about streams, frames, relaying or how compute is scheduled."""

from __future__ import annotations

import time
from dataclasses import dataclass

from node.api import AppState, StepFailure, executor_failure
from node.executor import ExecutorError
from node.exposure import Standing
from node.payment import EscrowUnavailable, PaymentError, check_receipt
from node.session import AcceptedReceipt, NodeSession
from p2pllm.receipts import Receipt
from p2pllm.wire import ReceiptClaim


class NeedsChain(Exception):
    """Admission has to read the chain: run it again with `blocking=True`, off the event loop."""


@dataclass(frozen=True)
class Admission:
    """A step's receipt, accepted and counted in its client's standing, not yet served."""

    claim: ReceiptClaim
    receipt: Receipt
    standing: Standing
    previous_deadline: int
    repeated: bool  # the same receipt as the session's newest: verified and stored already
    tokens: int


def admit(state: AppState, session: NodeSession, position: int, tokens: int, claim: ReceiptClaim | None,
          blocking: bool) -> Admission:
    """Check the step at `position` of `tokens` tokens and its receipt; count the receipt in the client's
    standing (before the compute, so that a concurrent step of the same client weighs it)."""
    if session.closed:
        raise StepFailure("unknown_session", {"session_id": session.key})
    if claim is None:
        raise StepFailure("missing_receipt", {"position": position})
    try:
        length = state.executor.session(session.key).length
    except ExecutorError as exc:
        raise executor_failure(state, exc) from exc
    if position != length:
        raise StepFailure("position_mismatch", {"expected": length, "got": position})
    if position + tokens > session.max_length:
        raise StepFailure("length_exceeded", {"max_length": session.max_length, "requested": position + tokens})
    client = session.client
    # The newest accepted receipt is kept on the session (the ledger's, from an earlier run, was read at open).
    # A client with credit sends the same receipt for several steps: already verified and stored, it is checked
    # again only for what changes with time and tokens.
    previous = session.accepted.receipt if session.accepted is not None else session.held
    repeated = session.accepted is not None and session.accepted.claim == claim
    if not blocking and not state.escrow.answers_now(client):
        raise NeedsChain
    owed_after = session.owed_wei + state.terms.price_wei_per_token * tokens
    retried = False
    while True:
        mark = state.exposure.claim_mark(client)
        try:
            receipt, standing = _check_and_count(state, session, client, position + tokens, owed_after, previous,
                                                 claim, repeated, blocking)
            break
        except PaymentError as exc:
            # A claim of this client's receipts overlapped the check: the chain may have shown the allocation
            # after the claim while the standing still counted what it paid. Check again once it has ended.
            overlapped = state.exposure.claim_overlapped(client, mark)
            if exc.code != "insufficient_escrow" or not overlapped or retried:
                raise StepFailure(exc.code, dict(exc.detail)) from exc
            if not blocking:
                raise NeedsChain from exc
            state.exposure.wait_claims(client, state.claim_wait_s)
            retried = True
        except EscrowUnavailable as exc:
            raise StepFailure("chain_unavailable", {"reason": str(exc)}, state.retry_after_s) from exc
    return Admission(claim, receipt, standing, previous.deadline if previous is not None else 0, repeated, tokens)


def _check_and_count(state: AppState, session: NodeSession, client: str, tokens_after: int, owed_after: int,
                     previous: Receipt | None, claim: ReceiptClaim, repeated: bool,
                     blocking: bool) -> tuple[Receipt, Standing]:
    """Check the receipt against the client's standing and count it there, as one step under the client's hold;
    an `insufficient_escrow` refusal asks the chain first (the client may just have reserved more), at most once
    a second per session, so that no client makes the node read the chain on every request."""
    with state.exposure.hold(client):
        standing = state.exposure.standing(client, session.session_id)

        def check(fresh: bool) -> Receipt:
            return check_receipt(
                state.terms, state.escrow, client=client, session_id=session.session_id,
                tokens_after=tokens_after, owed_wei=owed_after, previous=previous,
                paid_wei=standing.paid_wei, other_unpaid_wei=standing.other_unpaid_wei,
                other_deadline=standing.other_deadline, tokens=claim.tokens, amount_wei=claim.amount_wei,
                deadline=claim.deadline, signature=claim.signature, now=state.now(), signature_verified=repeated,
                fresh_escrow=fresh,
            )

        try:
            receipt = check(False)
        except PaymentError as exc:
            now = time.monotonic()
            if exc.code != "insufficient_escrow" or now - session.fresh_escrow_at < state.fresh_escrow_min_s:
                raise
            if not blocking:
                raise NeedsChain from exc
            session.fresh_escrow_at = now
            receipt = check(True)
        state.exposure.accept(client, session.session_id, claim.amount_wei, standing.paid_wei, claim.deadline)
    return receipt, standing


def record(state: AppState, admission: Admission) -> None:
    """Store a new receipt durably (runs on the compute worker, before the step's output is released: a crash
    after this loses no earnings)."""
    if not admission.repeated:
        state.ledger.record(admission.receipt, admission.claim.signature)


def settle(state: AppState, session: NodeSession, admission: Admission) -> None:
    """Book a served step on its session."""
    session.owed_wei += state.terms.price_wei_per_token * admission.tokens
    session.accepted = AcceptedReceipt(admission.claim, admission.receipt)
    state.on_receipt()


def refund(state: AppState, session: NodeSession, admission: Admission) -> None:
    """The step was not served: its receipt no longer counts."""
    with state.exposure.hold(session.client):
        state.exposure.accept(session.client, session.session_id, admission.standing.amount_wei,
                              admission.standing.paid_wei, admission.previous_deadline)
