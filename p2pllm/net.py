"""HTTP client plumbing shared by the client role, tools and tests.

`http_client` builds the general-purpose client (httpx) for everything but the per-token path, with
TCP_NODELAY so a request's headers and body are not held back by Nagle's algorithm waiting for a delayed
ACK (on loopback that alone costs milliseconds per hop).

`KeepAlive` is the per-token path: one persistent HTTP/1.1 connection to one endpoint, speaking just the
subset of HTTP/1.1 a node's forward call needs (a POST with a body; a response framed by Content-Length,
chunked encoding or connection close). It writes each request with a single send and parses the answer
from a buffered socket reader; `http.client` spends about 0.1 ms a request in its general header parser,
which is a real share of one hop's overhead."""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import urllib.parse

import httpx

MAX_LINE_BYTES = 65536
MAX_HEADERS = 100
MAX_BODY_BYTES = 1 << 30


def http_client(timeout_s: float = 30.0) -> httpx.Client:
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(transport=transport, timeout=timeout_s)


class ProtocolError(http.client.HTTPException):
    """The server's answer is not HTTP/1.x as this client reads it (or exceeds its limits)."""


class KeepAlive:
    """One persistent HTTP/1.1 connection to one endpoint. A connection the server closed while idle is
    noticed before reuse and replaced; a failure during a request is raised, never retried (the request may
    have been processed), as `OSError` (connect, timeout, reset) or `http.client.HTTPException` (a
    malformed or truncated answer). Not thread-safe: one caller at a time."""

    def __init__(self, endpoint: str, timeout_s: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self.scheme, self.host = parsed.scheme, parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.prefix = parsed.path.rstrip("/")
        self.query = parsed.query
        self.timeout_s = timeout_s
        default_port = self.port == (443 if self.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = host if default_port else f"{host}:{self.port}"
        self._sock: socket.socket | None = None
        self._reader: socket.SocketIO | None = None
        self._rfile = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """POST `body` to `path`; returns (status, headers with lower-case names, body)."""
        target = (self.prefix + path) or "/"
        if self.query:
            target += ("&" if "?" in target else "?") + self.query
        head = [f"POST {target} HTTP/1.1", f"Host: {self._host_header}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        sock = self._connection()
        try:
            sock.sendall(request)
            status, response_headers, data, keep = self._read_response()
        except BaseException:
            self.close()
            raise
        if not keep:
            self.close()
        return status, response_headers, data

    def close(self) -> None:
        if self._rfile is not None:
            self._rfile.close()
            self._rfile = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------------------------------ internal

    def _connection(self) -> socket.socket:
        if self._sock is not None and _dropped(self._sock, self.timeout_s):
            self.close()
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
            self._sock = sock
            self._rfile = sock.makefile("rb")
        return self._sock

    def _line(self) -> bytes:
        line = self._rfile.readline(MAX_LINE_BYTES + 1)  # type: ignore[union-attr]
        if len(line) > MAX_LINE_BYTES:
            raise ProtocolError("response line too long")
        if not line:
            raise http.client.RemoteDisconnected("the server closed the connection without answering")
        return line

    def _read_response(self) -> tuple[int, dict[str, str], bytes, bool]:
        while True:  # skip interim 1xx answers
            status_line = self._line()
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise http.client.BadStatusLine(status_line.decode("latin-1", "replace").strip())
            status = int(parts[1])
            headers = self._headers()
            if not 100 <= status < 200:
                break
        version_11 = parts[0] == b"HTTP/1.1"
        connection = headers.get("connection", "").lower()
        keep = ("close" not in connection) if version_11 else ("keep-alive" in connection)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            data = self._chunked()
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                raise ProtocolError(f"bad Content-Length {length!r}")
            data = self._exactly(int(length))
        elif status in (204, 304):
            data = b""
        else:  # framed by the server closing the connection
            data = self._rfile.read(MAX_BODY_BYTES + 1)  # type: ignore[union-attr]
            if len(data) > MAX_BODY_BYTES:
                raise ProtocolError("response body too large")
            keep = False
        return status, headers, data, keep

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"malformed header line {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raise ProtocolError(f"more than {MAX_HEADERS} response headers")

    def _exactly(self, size: int) -> bytes:
        data = self._rfile.read(size)  # type: ignore[union-attr]
        if len(data) != size:
            raise http.client.IncompleteRead(data, size - len(data))
        return data

    def _chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                self._headers()  # trailer section, ends with an empty line
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise ProtocolError("response body too large")
            chunks.append(self._exactly(size))
            if self._line() not in (b"\r\n", b"\n"):
                raise ProtocolError("chunk not followed by CRLF")


def _dropped(sock: socket.socket, timeout_s: float) -> bool:
    """Whether an idle keep-alive connection was closed by the server (or got junk). A readable plain socket
    means exactly that; a TLS socket may just have received a session ticket, which reading reveals."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    if not isinstance(sock, ssl.SSLSocket):
        return True
    sock.setblocking(False)
    try:
        sock.recv(1)  # b"" (closed) or application data nobody asked for: either way unusable
        return True
    except (ssl.SSLWantReadError, BlockingIOError):
        return False  # TLS housekeeping only
    except OSError:
        return True
    finally:
        sock.settimeout(timeout_s)
