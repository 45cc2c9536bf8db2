"""`KeepAlive`: reuses one connection, notices one the server closed while idle, raises (never retries)
when a request fails, and reads every HTTP/1.x response framing, refusing malformed answers."""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from p2pllm.net import KeepAlive


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: ClassVar[set[tuple[str, int]]] = set()

    def do_POST(self) -> None:
        _Echo.connections.add(self.client_address)  # the client port names the connection
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Seen", self.headers.get("X-Test", ""))
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Echo.connections.clear()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_reuses_one_connection_and_replaces_a_closed_one(server: http.server.ThreadingHTTPServer) -> None:
    client = KeepAlive(f"http://127.0.0.1:{server.server_address[1]}")
    for i in range(3):
        status, headers, body = client.post("/echo", f"x{i}".encode(), {"X-Test": str(i)})
        assert (status, body, headers["x-seen"]) == (200, f"x{i}".encode(), str(i))
    assert len(_Echo.connections) == 1
    assert client.post("/close", b"bye", {})[0] == 200  # the server closes after this one
    assert client.post("/echo", b"again", {})[2] == b"again"
    assert len(_Echo.connections) == 2
    client.close()


def test_failures_raise_and_bad_endpoints_are_refused(server: http.server.ThreadingHTTPServer) -> None:
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with pytest.raises(OSError):
        KeepAlive(f"http://127.0.0.1:{port}", timeout_s=2).post("/echo", b"x", {})
    with pytest.raises(ValueError, match="not an http"):
        KeepAlive("ftp://example")


class _Canned:
    """A one-connection raw TCP server that answers every request with the next canned byte string."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            reader = conn.makefile("rb")
            for answer in self.answers:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += reader.readline()
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + reader.read(length))
                conn.sendall(answer)
                if answer.endswith(b"CLOSE"):
                    conn.shutdown(socket.SHUT_RDWR)
                    return

    def client(self) -> KeepAlive:
        return KeepAlive(f"http://127.0.0.1:{self.port}/prefix/", timeout_s=5)


def test_response_framings() -> None:
    server = _Canned([
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nT: x\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close CLOSE",
    ])
    client = server.client()
    assert client.post("/a", b"12345", {"X-Receipt": "r"}) == (200, {"content-length": "3", "x-a": "1, 2"}, b"abc")
    assert client.post("/b", b"", {})[2] == b"wikipedia"
    assert client.post("/c", b"", {})[:1] == (204,)
    assert client.post("/d", b"", {})[2] == b"until close CLOSE"
    assert client._sock is None  # an answer framed by close leaves no connection to reuse
    first = server.requests[0]
    assert first.startswith(b"POST /prefix/a HTTP/1.1\r\nHost: 127.0.0.1:") and first.endswith(b"\r\n\r\n12345")
    assert b"X-Receipt: r\r\n" in first and b"Content-Length: 5\r\n" in first


@pytest.mark.parametrize("answer", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nshort CLOSE",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
    b"CLOSE",
])
def test_malformed_answers_raise_http_exceptions(answer: bytes) -> None:
    client = _Canned([answer]).client()
    with pytest.raises(http.client.HTTPException):
        client.post("/x", b"body", {})
    assert client._sock is None
