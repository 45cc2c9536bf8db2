"""One hop of a route: a session on one node, fed hidden states and paid with cumulative EIP-712 receipts.
A failure surfaces as `HopFailed` (the caller decides about rerouting) or `HopRejected` (a 4xx the client
caused: a bug or a payment problem). Knows nothing about routing or retries."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
from dataclasses import dataclass, field

import httpx
import torch

from p2pllm import codec
from p2pllm.net import KeepAlive
from p2pllm.receipts import EscrowDomain, Receipt, sign_receipt

FAILOVER_STATUSES = frozenset({404, 500, 502, 503, 504})


class HopFailed(Exception):
    """The node is unreachable, timed out, or answered 5xx/503/404: reroute around it."""

    def __init__(self, node: str, endpoint: str, reason: str) -> None:
        super().__init__(f"hop {node} at {endpoint} failed: {reason}")
        self.node = node
        self.endpoint = endpoint
        self.reason = reason


class HopRejected(Exception):
    """The node refused the request with a 4xx that rerouting will not fix."""

    def __init__(self, node: str, status: int, error: str, detail: object) -> None:
        super().__init__(f"node {node} refused ({status} {error}): {detail}")
        self.node = node
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class Payer:
    """The client's signing identity for one escrow deployment."""

    address: str
    private_key: bytes
    domain: EscrowDomain
    receipt_validity_s: int = 3600


@dataclass
class HopSession:
    """A session on one node serving layers [start, end) of a route."""

    http: httpx.Client
    payer: Payer
    node: str
    endpoint: str
    offer_id: int
    start: int
    end: int
    price_wei_per_token: int
    credit_wei: int
    max_length: int
    session_id: bytes = field(default_factory=lambda: os.urandom(32))
    tokens: int = 0
    signed_wei: int = 0
    signing_s: float = 0.0
    deadline: int = 0
    last_server_timing: str = ""
    client_unpaid_wei: int = 0
    _receipt_header: str = ""
    _fast: KeepAlive | None = None

    def open(self) -> None:
        """Open the session; the node answers, among others, what this client already owes it unpaid."""
        response = self._request("POST", "/sessions", json={"session_id": "0x" + self.session_id.hex(),
                                                            "client": self.payer.address,
                                                            "max_length": self.max_length,
                                                            "layer_start": self.start, "layer_end": self.end})
        try:
            self.client_unpaid_wei = int(response.json().get("client_unpaid_wei", 0))
        except (ValueError, TypeError, AttributeError) as exc:
            raise HopFailed(self.node, self.endpoint, f"malformed session answer: {exc}") from exc

    @property
    def max_cost_wei(self) -> int:
        """The most this session can cost: every token up to its limit, plus the credit the client signs ahead."""
        return self.max_length * self.price_wei_per_token + self.credit_wei

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Send hidden states (1, n, hidden) at the next n positions; returns the node's output."""
        tokens_after = self.tokens + int(hidden.shape[1])
        header = self._receipt_for(tokens_after)
        if self._fast is None:
            self._fast = KeepAlive(self.endpoint, timeout_s=self.http.timeout.read or 120.0)
        try:
            status, headers, body = self._fast.post(
                f"/sessions/0x{self.session_id.hex()}/forward", codec.encode(hidden),
                {"X-Position": str(self.tokens), "X-Receipt": header, "Content-Type": "application/octet-stream"})
        except (OSError, http.client.HTTPException) as exc:
            raise HopFailed(self.node, self.endpoint, f"{type(exc).__name__}: {exc}") from exc
        self._check_status(status, body)
        self.last_server_timing = headers.get("server-timing", "")
        self.tokens = tokens_after
        try:
            return codec.decode(body, expected_trailing_dim=int(hidden.shape[-1]))
        except codec.CodecError as exc:
            raise HopFailed(self.node, self.endpoint, f"bad response payload: {exc}") from exc

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        with contextlib.suppress(httpx.HTTPError):  # the node frees it on its idle TTL anyway
            self.http.delete(f"{self.endpoint}/sessions/0x{self.session_id.hex()}")

    @property
    def owed_wei(self) -> int:
        return self.tokens * self.price_wei_per_token

    def _receipt_for(self, tokens_after: int) -> str:
        """A cumulative receipt covering the tokens sent so far. With a node credit of c wei the client signs
        up to c ahead (amount = owed + c), so one signature covers several steps and the node is never
        owed more than it holds a receipt for; without credit every step is signed for exactly what it owes."""
        owed = tokens_after * self.price_wei_per_token
        now = int(time.time())
        if self._receipt_header and owed <= self.signed_wei and self.deadline - now > 300:
            return self._receipt_header
        started = time.perf_counter()
        amount = owed + self.credit_wei
        self.deadline = now + self.payer.receipt_validity_s
        receipt = Receipt(self.payer.address, self.node, self.session_id, tokens_after, amount, self.deadline)
        signature = sign_receipt(receipt, self.payer.domain, self.payer.private_key)
        self._receipt_header = json.dumps({"tokens": tokens_after, "amount_wei": str(amount),
                                           "deadline": self.deadline, "signature": "0x" + signature.hex()})
        self.signed_wei = amount
        self.signing_s += time.perf_counter() - started
        return self._receipt_header

    def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = self.http.request(method, f"{self.endpoint}{path}", **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise HopFailed(self.node, self.endpoint, f"{type(exc).__name__}: {exc}") from exc
        self._check_status(response.status_code, response.content)
        return response

    def _check_status(self, status: int, body: bytes) -> None:
        if status in FAILOVER_STATUSES:
            raise HopFailed(self.node, self.endpoint, f"HTTP {status} {body[:200]!r}")
        if status >= 400:
            try:
                error = json.loads(body)
            except ValueError:
                error = {"error": "unknown", "detail": body[:200].decode(errors="replace")}
            raise HopRejected(self.node, status, str(error.get("error")), error.get("detail"))
