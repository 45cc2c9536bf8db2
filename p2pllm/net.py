"""HTTP client construction shared by the client role, tools and tests: keep-alive connections with
TCP_NODELAY, so a request's headers and body (two writes) are not held back by Nagle's algorithm waiting
for a delayed ACK — on loopback that alone costs milliseconds per hop."""

from __future__ import annotations

import http.client
import select
import socket
import urllib.parse

import httpx


def http_client(timeout_s: float = 30.0) -> httpx.Client:
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(transport=transport, timeout=timeout_s)


class KeepAlive:
    """One persistent HTTP/1.1 connection to one endpoint over `http.client`, for the per-token hot path
    (measurably lighter than a general-purpose client). A connection the server closed while idle is noticed
    before reuse and replaced; a failure during a request is raised, never retried (the request may have
    been processed), as `OSError` or `http.client.HTTPException`."""

    def __init__(self, endpoint: str, timeout_s: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self.scheme, self.host = parsed.scheme, parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.prefix = parsed.path.rstrip("/")
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        conn = self._connection()
        try:
            conn.request("POST", self.prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is not None and self._conn.sock is not None and _dropped(self._conn.sock):
            self.close()
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout_s)
            self._conn.connect()
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn


def _dropped(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server (or sent junk)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)
