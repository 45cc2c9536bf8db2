"""What the node's stream and HTTP routes share: the state they serve from (`AppState`), the one failure type
a step or an open raises (`StepFailure`, a stable code with data and, when waiting helps, a retry delay), and
how executor errors map to those codes. No framework objects, no I/O."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.commit import Committer
from node.executor import (
    CacheBudgetExceeded,
    DtypeMismatch,
    ExecutorError,
    LengthExceeded,
    PositionMismatch,
    SessionExists,
    ShapeMismatch,
    ShardExecutor,
    UnknownSession,
)
from node.exposure import Exposure
from node.ledger import Ledger
from node.metrics import Metrics
from node.payment import EscrowView, Terms
from node.scheduler import Scheduler
from node.session import SessionTable
from p2pllm.wire import NodeInfo


class StepFailure(Exception):
    """Why a frame was not served: `code` is stable, `detail` holds data, `retry_after_s` says when to retry."""

    def __init__(self, code: str, detail: dict[str, Any] | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail or {}
        self.retry_after_s = retry_after_s


@dataclass
class AppState:
    """Everything the routes need, passed in by the caller. `info` holds what `/info` answers; its price and
    free tokens are filled in from `terms` and the executor when it is served."""

    executor: ShardExecutor
    sessions: SessionTable
    ledger: Ledger
    terms: Terms
    escrow: EscrowView
    exposure: Exposure
    info: NodeInfo
    metrics: Metrics
    scheduler: Scheduler
    committer: Committer | None = None  # signs every step's output commitment (None: results carry none)
    max_session_length: int = 4096
    min_session_reserve_wei: int | None = None  # None: one token at the current price
    max_frame_bytes: int = 16 * 1024 * 1024
    retry_after_s: float = 2.0
    fresh_escrow_min_s: float = 1.0
    claim_wait_s: float = 30.0  # how long a step refused during a claim of its client's receipts waits for it
    now: Callable[[], int] = lambda: int(time.time())
    on_receipt: Callable[[], None] = lambda: None

    def compute_ms_per_layer(self) -> float:
        """The compute time per layer to advertise: the one measured at start-up, or, while several sessions
        share the node, its recent decode rounds' time per layer when that is longer (a step waits for its whole
        batch, so a client's latency estimate should include it)."""
        base = self.info.compute_ms_per_layer
        if len(self.sessions) <= 1:
            return base
        layers = self.executor.shard.end - self.executor.shard.start
        return max(base, round(self.scheduler.load().recent_step_ms / layers, 4))

    @property
    def session_reserve_wei(self) -> int:
        """What a client must have reserved for this node, beyond what it owes, to open a session."""
        if self.min_session_reserve_wei is not None:
            return self.min_session_reserve_wei
        return self.terms.price_wei_per_token


# The one place where the executor's typed errors become stable codes (and a retry delay when it helps).
EXECUTOR_ERRORS: dict[type[ExecutorError], str] = {
    CacheBudgetExceeded: "cache_full",
    UnknownSession: "unknown_session",
    SessionExists: "session_exists",
    PositionMismatch: "position_mismatch",
    LengthExceeded: "length_exceeded",
    ShapeMismatch: "shape_mismatch",
    DtypeMismatch: "dtype_mismatch",
}


def executor_failure(state: AppState, exc: ExecutorError) -> StepFailure:
    data = {k: v for k, v in vars(exc).items() if not k.startswith("_")}
    code = EXECUTOR_ERRORS.get(type(exc), type(exc).__name__)
    return StepFailure(code, data, state.retry_after_s if code == "cache_full" else None)
