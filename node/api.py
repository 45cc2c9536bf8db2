"""What the node's HTTP layer shares between its routes: the state they serve from (`AppState`), the one
error type they raise (`ApiError`), how executor errors map to HTTP statuses and stable codes, and how an
error becomes a `{"error": code, "detail": ...}` JSON body. No framework objects, no I/O."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
from p2pllm.receipts import Receipt

SESSION_ID_PATTERN = r"^0x[0-9a-fA-F]{64}$"
ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


@dataclass(frozen=True)
class AcceptedReceipt:
    """The newest receipt a session paid with, as its X-Receipt header arrived, once it is stored in the
    ledger."""

    header: str
    receipt: Receipt


@dataclass
class AppState:
    """Everything the routes need, passed in by the caller."""

    executor: ShardExecutor
    ledger: Ledger
    terms: Terms
    escrow: EscrowView
    exposure: Exposure
    info: dict[str, Any]
    metrics: Metrics
    max_body_bytes: int = 4 * 1024 * 1024
    max_session_length: int = 4096
    retry_after_s: int = 2
    now: Callable[[], int] = lambda: int(time.time())
    on_receipt: Callable[[], None] = lambda: None
    clients: dict[str, str] = field(default_factory=dict)
    owed_wei: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, AcceptedReceipt] = field(default_factory=dict)
    # When each session last made the node read its client's escrow from the chain before refusing it.
    fresh_escrow_at: dict[str, float] = field(default_factory=dict)
    fresh_escrow_min_s: float = 1.0
    lock: threading.Lock = field(default_factory=threading.Lock)


# The one place where the executor's typed errors become HTTP statuses and stable codes.
EXECUTOR_ERRORS: dict[type[ExecutorError], tuple[int, str]] = {
    CacheBudgetExceeded: (503, "cache_full"),
    UnknownSession: (404, "unknown_session"),
    SessionExists: (409, "session_exists"),
    PositionMismatch: (409, "position_mismatch"),
    LengthExceeded: (400, "length_exceeded"),
    ShapeMismatch: (400, "shape_mismatch"),
    DtypeMismatch: (400, "dtype_mismatch"),
}


def executor_error(exc: ExecutorError) -> ApiError:
    data = {k: v for k, v in vars(exc).items() if not k.startswith("_")}
    status, code = EXECUTOR_ERRORS.get(type(exc), (400, type(exc).__name__))
    return ApiError(status, code, data)


def error_body(code: str, detail: Any) -> bytes:
    """The JSON body of every error answer; `detail` is made JSON-safe (bytes, ints past 2^53 → str)."""
    return json.dumps({"error": code, "detail": detail}, default=str).encode()


def error_headers(state: AppState, err: ApiError) -> dict[str, str]:
    headers = dict(err.headers or {})
    if err.status == 503:
        headers.setdefault("Retry-After", str(state.retry_after_s))
    return headers
