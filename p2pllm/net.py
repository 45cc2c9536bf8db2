"""HTTP client construction shared by the client role, tools and tests: keep-alive connections with
TCP_NODELAY, so a request's headers and body (two writes) are not held back by Nagle's algorithm waiting
for a delayed ACK — on loopback that alone costs milliseconds per hop."""

from __future__ import annotations

import socket

import httpx


def http_client(timeout_s: float = 30.0) -> httpx.Client:
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(transport=transport, timeout=timeout_s)
