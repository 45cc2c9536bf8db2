"""The HTTP client the client role, tools and tests share (httpx): TCP_NODELAY, so a request's headers and body
are not held back by Nagle's algorithm waiting for a delayed ACK, and TLS verified against the system's trust
store or a given CA file. Per-token traffic does not use it: it goes over `p2pllm.wire` streams."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from p2pllm.tls import client_ssl_context


def http_client(timeout_s: float = 30.0, ca_file: Path | str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                                    verify=client_ssl_context(ca_file))
    return httpx.Client(transport=transport, timeout=timeout_s)
