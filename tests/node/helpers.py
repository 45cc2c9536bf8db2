"""Test helpers for driving real `p2pnode serve` processes and talking to them like a client would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from p2pllm import codec
from p2pllm.localnet import parse_ready
from p2pllm.receipts import EscrowDomain, Receipt, sign_receipt


@dataclass
class NodeProcess:
    process: subprocess.Popen[str]
    endpoint: str
    offer_id: int
    address: str
    lines: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_node(args: Sequence[str], cwd: Path, timeout_s: float = 180) -> NodeProcess:
    """Run `p2pnode serve ARGS` as a real process and wait for its READY line."""
    cmd = [sys.executable, "-m", "node.cli", "serve", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        ready = parse_ready(line)
        if ready is not None:
            node = NodeProcess(process, *ready, lines)
            threading.Thread(target=_drain, args=(process, lines), daemon=True).start()
            return node
    process.kill()
    raise RuntimeError("node did not become ready:\n" + "".join(lines[-40:]))


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)


@dataclass
class PayingSession:
    """A client's session on one node: signs cumulative receipts and forwards hidden states."""

    http: httpx.Client
    endpoint: str
    session_id: bytes
    client_key: bytes
    client: str
    node: str
    domain: EscrowDomain
    price_wei_per_token: int
    deadline: int
    tokens: int = 0

    def open(self, max_length: int) -> httpx.Response:
        return self.http.post(f"{self.endpoint}/sessions", json={
            "session_id": "0x" + self.session_id.hex(), "client": self.client, "max_length": max_length})

    def receipt_header(self, tokens_after: int, amount_wei: int | None = None) -> str:
        amount = self.price_wei_per_token * tokens_after if amount_wei is None else amount_wei
        receipt = Receipt(self.client, self.node, self.session_id, tokens_after, amount, self.deadline)
        signature = sign_receipt(receipt, self.domain, self.client_key)
        return json.dumps({"tokens": tokens_after, "amount_wei": str(amount), "deadline": self.deadline,
                           "signature": "0x" + signature.hex()})

    def forward(self, hidden: torch.Tensor, receipt: str | None = None) -> httpx.Response:
        n = int(hidden.shape[1])
        header = receipt if receipt is not None else self.receipt_header(self.tokens + n)
        response = self.http.post(
            f"{self.endpoint}/sessions/0x{self.session_id.hex()}/forward", content=codec.encode(hidden),
            headers={"X-Position": str(self.tokens), "X-Receipt": header,
                     "Content-Type": "application/octet-stream"})
        if response.status_code == 200:
            self.tokens += n
        return response
