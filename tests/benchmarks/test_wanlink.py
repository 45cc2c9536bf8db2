"""The benchmarks' latency-injecting TCP proxy (`benchmarks/wanlink.py`): bytes intact both ways, a round trip
costs two one-way delays, back-to-back chunks are not delayed cumulatively, half-closes pass, loopback only.
Upper bounds are generous: these run on loaded 2-core CI machines."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from benchmarks.wanlink import LinkError, LinkSet, reserve_port

D = 0.020


class Echo:
    """A loopback TCP echo server: every byte it reads goes straight back; EOF is answered with EOF."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.close()


def dial(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def test_bytes_arrive_intact_both_ways_and_eof_passes(echo: Echo) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, several chunks each way
    with LinkSet(delay_s=0.001) as links:
        link = links.add("client", "echo", ("127.0.0.1", echo.port))
        with dial(link.port) as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            assert recv_exactly(sock, len(payload)) == payload
            sender.join()
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""  # the echo's EOF came back through the link


def test_round_trip_costs_two_one_way_delays(echo: Echo) -> None:
    with LinkSet(delay_s=D) as links:
        link = links.add("client", "echo", ("127.0.0.1", echo.port))
        with dial(link.port) as sock:
            sock.sendall(b"warm")
            recv_exactly(sock, 4)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                sock.sendall(b"ping")
                assert recv_exactly(sock, 4) == b"ping"
                times.append(time.perf_counter() - started)
    assert min(times) >= 2 * D
    assert min(times) < 2 * D + 0.2


def test_back_to_back_chunks_are_not_delayed_cumulatively(echo: Echo) -> None:
    count = 50
    with LinkSet(delay_s=D) as links:
        link = links.add("client", "echo", ("127.0.0.1", echo.port))
        with dial(link.port) as sock:
            for i in range(count):
                sock.sendall(bytes([i]) * 10)
                time.sleep(0.0005)  # separate chunks, not one coalesced write
            last_sent = time.perf_counter()
            data = recv_exactly(sock, 10 * count)
            done = time.perf_counter()
    assert data == b"".join(bytes([i]) * 10 for i in range(count))
    # Cumulative delays would take count * D = 1 s; one round trip after the last send is 2 D.
    assert done - last_sent < 2 * D + 0.3


def test_delay_changes_apply_to_new_chunks(echo: Echo) -> None:
    with LinkSet(delay_s=0.0) as links:
        link = links.add("client", "echo", ("127.0.0.1", echo.port))
        with dial(link.port) as sock:
            sock.sendall(b"a")
            recv_exactly(sock, 1)
            links.set_delay(D)
            started = time.perf_counter()
            sock.sendall(b"b")
            recv_exactly(sock, 1)
            assert time.perf_counter() - started >= 2 * D


def test_mesh_target_later_and_loopback_only(echo: Echo) -> None:
    with LinkSet() as links:
        made = links.mesh(["A", "B"])
        assert set(made) == {("client", "A"), ("client", "B"), ("A", "B"), ("B", "A")}
        assert len({link.port for link in made.values()}) == 4
        links.point("B", "127.0.0.1", echo.port)
        for source in ("client", "A"):
            with dial(links.get(source, "B").port) as sock:
                sock.sendall(b"hi")
                assert recv_exactly(sock, 2) == b"hi"
        with pytest.raises(LinkError):
            links.get("client", "A").set_target("10.0.0.1", 80)
        with pytest.raises(LinkError):
            links.add("client", "C", ("example.com", 80))


def test_close_ends_connections_and_listening(echo: Echo) -> None:
    links = LinkSet(delay_s=0.0)
    links.start()
    link = links.add("client", "echo", ("127.0.0.1", echo.port))
    sock = dial(link.port)
    sock.sendall(b"x")
    recv_exactly(sock, 1)
    links.close()
    sock.settimeout(2)
    assert sock.recv(1) == b""
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", link.port), timeout=1).close()
    links.close()  # twice is fine


def test_reserved_port_is_bindable_with_reuseaddr() -> None:
    port = reserve_port()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(1)
    server.close()


def test_lifetime_bounds_a_link_set(echo: Echo) -> None:
    links = LinkSet(lifetime_s=0.1)
    links.start()
    port = links.add("client", "echo", ("127.0.0.1", echo.port)).port
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the link still listens after its lifetime")
    links.close()
