"""`KeepAlive`: reuses one connection, notices one the server closed while idle, and raises (never retries)
when a request fails."""

from __future__ import annotations

import http.server
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
