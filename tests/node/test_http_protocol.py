"""node.http_protocol: the coalescing transport on its own (a recording transport, a real event loop), then the
protocol inside a real uvicorn server on uvloop, seen from a real HTTP client and from the socket's side."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop

from node.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport


class RecordingTransport:
    """A write transport that records what reaches it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: list[bytes]) -> None:
        self.calls.append(("writelines", [bytes(d) for d in list_of_data]))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def run(coroutine_fn: Any) -> Any:
    return asyncio.run(coroutine_fn())


def test_head_and_body_in_one_turn_leave_together_at_the_second_write() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert real.calls == []  # held
        transport.write(b"body")
        assert real.calls == [("writelines", [b"HTTP/1.1 200 OK\r\n\r\n", b"body"])]  # at once, not next turn
        await asyncio.sleep(0)
        return real.calls

    assert run(scenario) == [("writelines", [b"HTTP/1.1 200 OK\r\n\r\n", b"body"])]


def test_a_lone_write_leaves_on_the_next_turn() -> None:
    async def scenario() -> None:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert real.calls == []
        await asyncio.sleep(0)
        assert real.calls == [("write", b"HTTP/1.1 204 No Content\r\n\r\n")]
        transport.write(b"next")  # a later turn starts a new batch
        await asyncio.sleep(0)
        assert real.calls[-1] == ("write", b"next")

    run(scenario)


def test_order_is_kept_across_batches_and_writelines() -> None:
    async def scenario() -> list[bytes]:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.writelines([b"a", b"b", b"c"])
        transport.write(b"")  # ignored
        transport.write(b"d")
        await asyncio.sleep(0)
        out: list[bytes] = []
        for kind, data in real.calls:
            out += data if kind == "writelines" else [data]
        return out

    assert run(scenario) == [b"a", b"b", b"c", b"d"]


def test_buffers_are_copied_when_written() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        source = bytearray(b"abc")
        transport.write(source)
        source[:] = b"xyz"  # the caller may reuse its buffer once write returns
        await asyncio.sleep(0)
        return real.calls

    assert run(scenario) == [("write", b"abc")]


def test_close_and_write_eof_pass_pending_data_on_first_and_abort_drops_it() -> None:
    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        loop = asyncio.get_running_loop()
        results = []
        for action in ("close", "write_eof", "abort"):
            real = RecordingTransport()
            transport = CoalescingTransport(real, loop)  # type: ignore[arg-type]
            transport.write(b"pending")
            getattr(transport, action)()
            await asyncio.sleep(0)  # the scheduled flush finds nothing left to do
            results.append(real.calls)
        return results[0], results[1], results[2]

    closed, eof, aborted = run(scenario)
    assert closed == [("write", b"pending"), ("close", None)]
    assert eof == [("write", b"pending"), ("write_eof", None)]
    assert aborted == [("abort", None)]


def test_nothing_is_written_to_a_transport_that_is_closing() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"late")
        real.closing = True  # the peer went away meanwhile
        await asyncio.sleep(0)
        return real.calls

    assert run(scenario) == []


def test_buffer_size_counts_pending_data_and_the_rest_is_delegated() -> None:
    async def scenario() -> None:
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"12345")
        assert transport.get_write_buffer_size() == 7 + 5
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
        assert transport.wrapped is real
        await asyncio.sleep(0)
        assert transport.get_write_buffer_size() == 7

    run(scenario)


# ----------------------------------------------------------------------------------- inside a real uvicorn

SENDS: list[list[tuple[str, int]]] = []  # per connection: what reached the real uvloop transport


class _SpyTransport:
    """Sits between the coalescing transport and uvloop's, recording each call that would be a send."""

    def __init__(self, transport: asyncio.Transport, log: list[tuple[str, int]]) -> None:
        self._transport = transport
        self._log = log

    def write(self, data: bytes) -> None:
        self._log.append(("write", len(data)))
        self._transport.write(data)

    def writelines(self, list_of_data: list[bytes]) -> None:
        self._log.append(("writelines", sum(len(d) for d in list_of_data)))
        self._transport.writelines(list_of_data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _SpiedProtocol(CoalescingHttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        log: list[tuple[str, int]] = []
        SENDS.append(log)
        super().connection_made(_SpyTransport(transport, log))  # type: ignore[arg-type]


BIG = 8 * 1024 * 1024


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    path = scope["path"]
    if path == "/stream":  # chunked, with the loop turning between chunks
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    body = b"x" * BIG if path == "/big" else b"hello"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(_app, http=_SpiedProtocol, loop="uvloop", lifespan="off",
                                           log_level="warning", ws="none"))
    thread = threading.Thread(target=lambda: uvloop.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_each_response_reaches_the_socket_in_one_send_on_a_keep_alive_connection(server_url: str) -> None:
    SENDS.clear()
    with httpx.Client() as http:
        answers = [http.get(f"{server_url}/small") for _ in range(5)]
    assert [(a.status_code, a.content) for a in answers] == [(200, b"hello")] * 5
    assert len(SENDS) == 1  # one connection, kept alive
    assert [kind for kind, _ in SENDS[0]] == ["writelines"] * 5  # head + body together, once per response
    assert all(size > len(b"hello") for _, size in SENDS[0])


def test_a_large_body_arrives_whole_through_flow_control(server_url: str) -> None:
    with httpx.Client() as http:
        answer = http.get(f"{server_url}/big")
    assert answer.status_code == 200
    assert answer.content == b"x" * BIG


def test_a_streamed_response_arrives_whole(server_url: str) -> None:
    with httpx.Client() as http:
        answer = http.get(f"{server_url}/stream")
    assert answer.status_code == 200
    assert answer.content == b"one,two,three"
