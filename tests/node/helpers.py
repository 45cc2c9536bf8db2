"""Test helpers for driving real `p2pnode serve` processes (or a node app under a real uvicorn in a thread) and
talking to them over their stream like a client would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import uvicorn
from websockets.sync.client import ClientConnection, connect

from devkit.localnet import parse_ready
from p2pllm.receipts import EscrowDomain, Receipt, SessionOpenTerms, sign_receipt, sign_session_open
from p2pllm.wire import (
    Message,
    NextHop,
    NodeInfo,
    OpenSession,
    ReceiptClaim,
    Step,
    StepResult,
    encode,
    parse,
    stream_url,
)


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


def start_node(args: Sequence[str], cwd: Path, timeout_s: float = 180, module: str = "node.cli",
               prefix: Sequence[str] = ()) -> NodeProcess:
    """Run `p2pnode serve ARGS` as a real process and wait for its READY line. `module` runs another entry
    point with the same command line (a test fixture that wraps the node, e.g. tests.node.tampering_node);
    `prefix` runs it through another command (e.g. `ip netns exec NS`)."""
    cmd = [*prefix, sys.executable, "-m", module, "serve", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
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


def node_info_json(compute_ms_per_layer: float, price_wei_per_token: int = 10**12) -> dict:
    """What a node's /info answers, with the given advertised compute time (other fields plausible)."""
    return NodeInfo("0x" + "11" * 20, "tiny", b"\x01" * 32, 0, 8, 8, 64, "float32", "cpu", compute_ms_per_layer, 31337,
                    "0x" + "22" * 20, "0x" + "33" * 20, 2, 86400, 2 * 86400, price_wei_per_token, 0, 0, 64,
                    64).to_json()


class ServedApp:
    """An ASGI app served by a real uvicorn (WebSocket layer included) on a free loopback port, in a thread."""

    def __init__(self, app: object, ws_max_size: int = 16 * 1024 * 1024) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", ws_max_size=ws_max_size,
                                lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._sock.close()


@dataclass
class PayingSession:
    """A client's session on one node over its stream: a signed open, cumulative receipts, steps and results."""

    endpoint: str
    session_id: bytes
    client_key: bytes
    client: str
    node: str
    domain: EscrowDomain
    price_wei_per_token: int
    deadline: int
    dtype: torch.dtype = torch.float32
    hidden_size: int = 256
    tokens: int = 0
    ws: ClientConnection | None = None

    def connect(self) -> PayingSession:
        self.ws = connect(stream_url(self.endpoint), max_size=None, compression=None, proxy=None, legacy=True)
        return self

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def send(self, message: Message | bytes) -> None:
        assert self.ws is not None
        self.ws.send(message if isinstance(message, bytes) else encode(message))

    def recv(self, timeout_s: float = 30) -> Message:
        assert self.ws is not None
        frame = self.ws.recv(timeout=timeout_s)
        assert isinstance(frame, bytes), frame
        return parse(frame)

    def open_message(self, max_length: int, span: tuple[int, int] = (0, 4), deadline: int | None = None,
                     key: bytes | None = None, node: str | None = None) -> OpenSession:
        deadline = deadline if deadline is not None else int(time.time()) + 300
        terms = SessionOpenTerms(node or self.node, self.session_id, max_length, span[0], span[1], deadline)
        signature = sign_session_open(terms, self.domain, key or self.client_key)
        return OpenSession(self.session_id, self.client, node or self.node, max_length, span[0], span[1], deadline,
                           signature)

    def open(self, max_length: int, span: tuple[int, int] = (0, 4)) -> Message:
        if self.ws is None:
            self.connect()
        self.send(self.open_message(max_length, span))
        return self.recv()

    def claim(self, tokens_after: int, amount_wei: int | None = None, key: bytes | None = None,
              node: str | None = None, domain: EscrowDomain | None = None) -> ReceiptClaim:
        amount = self.price_wei_per_token * tokens_after if amount_wei is None else amount_wei
        receipt = Receipt(self.client, node or self.node, self.session_id, tokens_after, amount, self.deadline)
        signature = sign_receipt(receipt, domain or self.domain, key or self.client_key)
        return ReceiptClaim(tokens_after, amount, self.deadline, signature)

    def step(self, hidden: torch.Tensor, claim: ReceiptClaim | None = None, position: int | None = None,
             relay: tuple[NextHop, ...] = ()) -> Step:
        n = int(hidden.shape[1])
        at = self.tokens if position is None else position
        return Step(self.session_id, at, claim if claim is not None else self.claim(at + n), hidden, relay)

    def forward(self, hidden: torch.Tensor, claim: ReceiptClaim | None = None, position: int | None = None,
                relay: tuple[NextHop, ...] = ()) -> Message:
        """Send a step and return the node's answer; a result advances the session's position."""
        self.send(self.step(hidden, claim, position, relay))
        answer = self.recv()
        if isinstance(answer, StepResult):
            self.tokens = answer.position + int(hidden.shape[1])
        return answer
