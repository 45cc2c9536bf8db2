"""One paid step of a session, start to finish: the receipt checked against the payment policy and everything
its client owes this node, the shard run over the session's cache, the receipt stored durably before the
output leaves. Synchronous (the stream runs a decode step inline and a prefill in a worker thread); raises
`StepFailure` with a stable code. Knows nothing about streams, frames or relaying."""

from __future__ import annotations

import time

import torch

from node.api import AppState, StepFailure, executor_failure
from node.executor import ExecutorError
from node.exposure import Standing
from node.payment import EscrowUnavailable, PaymentError, check_receipt
from node.session import AcceptedReceipt, NodeSession
from p2pllm.receipts import Receipt
from p2pllm.wire import ReceiptClaim


def run_step(state: AppState, session: NodeSession, position: int, hidden: torch.Tensor,
             claim: ReceiptClaim | None) -> tuple[torch.Tensor, float]:
    """The shard's output for `hidden` (1, tokens, hidden) at `position`, and the compute time in seconds."""
    if session.closed:
        raise StepFailure("unknown_session", {"session_id": session.key})
    if claim is None:
        raise StepFailure("missing_receipt", {"position": position})
    tokens_now = int(hidden.shape[1])
    try:
        length = state.executor.session(session.key).length
    except ExecutorError as exc:
        raise executor_failure(state, exc) from exc
    if position != length:
        raise StepFailure("position_mismatch", {"expected": length, "got": position})
    if position + tokens_now > session.max_length:
        raise StepFailure("length_exceeded", {"max_length": session.max_length, "requested": position + tokens_now})
    receipt, standing, previous_deadline = _admit(state, session, position, tokens_now, claim)
    repeated = session.accepted is not None and session.accepted.claim == claim
    compute_started = time.perf_counter()
    try:
        out = state.executor.forward(session.key, hidden, torch.arange(position, position + tokens_now))
    except ExecutorError as exc:
        with state.exposure.hold(session.client):  # not served: this receipt no longer counts
            state.exposure.accept(session.client, session.session_id, standing.amount_wei, standing.paid_wei,
                                  previous_deadline)
        raise executor_failure(state, exc) from exc
    compute_s = time.perf_counter() - compute_started
    if not repeated:
        # Durable before the output leaves: a crash after this line loses no earnings.
        state.ledger.record(receipt, claim.signature)
    session.owed_wei += state.terms.price_wei_per_token * tokens_now
    session.accepted = AcceptedReceipt(claim, receipt)
    state.on_receipt()
    return out, compute_s


def _admit(state: AppState, session: NodeSession, position: int, tokens_now: int,
           claim: ReceiptClaim) -> tuple[Receipt, Standing, int]:
    """Check the receipt and count it in the client's standing (before the compute, so that a concurrent
    request of the same client weighs it); returns the receipt, the standing before it, and the previous
    receipt's deadline, for undoing."""
    client = session.client
    # The newest accepted receipt is kept on the session: the ledger is read only for a session's first
    # receipt (it may hold one from an earlier run). A client with credit sends the same receipt for several
    # steps: already verified and stored, it is checked again only for what changes with time and tokens.
    previous = session.accepted.receipt if session.accepted is not None else None
    if previous is None:
        held = state.ledger.latest(client, session.session_id)
        previous = held.receipt if held else None
    repeated = session.accepted is not None and session.accepted.claim == claim
    terms = state.terms
    owed_after = session.owed_wei + terms.price_wei_per_token * tokens_now
    with state.exposure.hold(client):
        standing = state.exposure.standing(client, session.session_id)

        def check(fresh: bool) -> Receipt:
            return check_receipt(
                terms, state.escrow, client=client, session_id=session.session_id,
                tokens_after=position + tokens_now, owed_wei=owed_after, previous=previous,
                paid_wei=standing.paid_wei, other_unpaid_wei=standing.other_unpaid_wei,
                other_deadline=standing.other_deadline, tokens=claim.tokens, amount_wei=claim.amount_wei,
                deadline=claim.deadline, signature=claim.signature, now=state.now(), signature_verified=repeated,
                fresh_escrow=fresh,
            )

        try:
            try:
                receipt = check(False)
            except PaymentError as exc:
                # The client may just have reserved more: ask the chain before refusing, at most once a second
                # per session, so that no client makes the node read the chain on every request.
                now = time.monotonic()
                if exc.code != "insufficient_escrow" or now - session.fresh_escrow_at < state.fresh_escrow_min_s:
                    raise
                session.fresh_escrow_at = now
                receipt = check(True)
        except PaymentError as exc:
            raise StepFailure(exc.code, dict(exc.detail)) from exc
        except EscrowUnavailable as exc:
            raise StepFailure("chain_unavailable", {"reason": str(exc)}, state.retry_after_s) from exc
        state.exposure.accept(client, session.session_id, claim.amount_wei, standing.paid_wei, claim.deadline)
    return receipt, standing, previous.deadline if previous is not None else 0
