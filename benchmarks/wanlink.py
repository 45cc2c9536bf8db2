"""Emulated wide-area links on loopback: latency-injecting TCP proxies for benchmarks.

A `DelayedLink` listens on 127.0.0.1 and forwards every accepted connection to one loopback target, holding
each chunk of bytes for a fixed one-way delay `d` in each direction independently: a chunk read at time t is
written at t + d, in order (never earlier; the event loop's millisecond timer makes it up to about 1 ms later,
typically 0.2-0.5 ms, and a traversal at d = 0 costs about 0.1 ms). Chunks are stamped when read and released
by their own deadline, so back-to-back chunks all arrive about d after they were sent, not d after one another
(no cumulative delay); bandwidth is not limited. Half-closes are passed on (at their delay too); a reset or
error on either side closes both. TCP_NODELAY is set on both sides. Only data is delayed: the TCP handshake with
the proxy and the proxy's own connection to the target are immediate, so opening a connection costs no round
trip of its own.

A `LinkSet` runs any number of links on one event loop in a thread of its own, so synchronous code can use
them (``with LinkSet() as links:``); closing it closes every listening socket and every connection. A link
is named by its (source, destination) pair; `LinkSet.mesh` makes the links a benchmark needs between a client
and a set of nodes (client→node, and node→node for every ordered pair). A link's target may be set after it
is listening (its port is known at once, so a node can be told to advertise it before the node is started).

Boundary: plain bytes over TCP on loopback. Knows nothing about HTTP, WebSockets, nodes or the client; it
refuses non-loopback targets and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

CHUNK_BYTES = 65536
LISTEN_HOST = "127.0.0.1"
CLIENT = "client"

T = TypeVar("T")


class LinkError(RuntimeError):
    """A link was misused: a non-loopback target, no target yet, a duplicate name, or a closed set."""


def check_loopback(host: str) -> None:
    """Raise LinkError unless `host` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError as exc:
        raise LinkError(f"target {host!r} is not a loopback address") from exc
    if not loopback:
        raise LinkError(f"target {host!r} is not a loopback address; links are for loopback only")


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DelayedLink:
    """One proxy: 127.0.0.1:`port` -> `target`, each direction delayed by `delay_s`. Created by `LinkSet.add`;
    its coroutines run on the set's loop. `delay_s` and `target` may be changed from any thread: a new delay
    applies to chunks read after the change, a new target to connections accepted after it."""

    def __init__(self, name: tuple[str, str], delay_s: float = 0.0, target: tuple[str, int] | None = None) -> None:
        self.name = name
        self.delay_s = delay_s
        self._target: tuple[str, int] | None = None
        if target is not None:
            self.set_target(*target)
        self.port = 0
        self.connections_accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: what a peer dials to go through this link."""
        return f"http://{LISTEN_HOST}:{self.port}"

    @property
    def target(self) -> tuple[str, int] | None:
        return self._target

    def set_target(self, host: str, port: int) -> None:
        check_loopback(host)
        if not 0 < port < 65536:
            raise LinkError(f"bad target port {port}")
        self._target = (host, port)

    @property
    def delay_s(self) -> float:
        return self._delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        if value < 0:
            raise LinkError(f"delay must be >= 0, got {value}")
        self._delay_s = float(value)

    async def start(self, port: int = 0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LISTEN_HOST, port))
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=CHUNK_BYTES)
        self.port = int(sock.getsockname()[1])

    async def close(self) -> None:
        """Stop listening, then abort every connection and wait for its tasks."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    # ------------------------------------------------------------------------------------------ connections

    async def _accept(self, down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(down_writer)
        self.connections_accepted += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            _nodelay(down_writer)
            if self._target is None:
                return  # nowhere to go yet: the peer sees the connection closed
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._target, limit=CHUNK_BYTES)
            except OSError:
                return
            self._writers.add(up_writer)
            _nodelay(up_writer)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._direction(down_reader, up_writer))
                    group.create_task(self._direction(up_reader, down_writer))
            except* (OSError, asyncio.IncompleteReadError):
                pass  # a reset on one side: both sides are closed below
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Cancelled by `close()`: end quietly (asyncio's streams would log a cancelled handler as an error).
        finally:
            for writer in (down_writer, up_writer):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
            self._tasks.discard(task)

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Bytes from `reader` to `writer`, each chunk written `delay_s` after it was read (EOF too)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            while True:
                chunk = await reader.read(CHUNK_BYTES)
                queue.put_nowait((loop.time() + self._delay_s, chunk))
                if not chunk:
                    return

        async def write() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()

        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            group.create_task(write())


class LinkSet:
    """Delayed links on an event loop in a thread of its own. ``with LinkSet(delay_s) as links:`` starts it and
    closes everything on exit; `lifetime_s`, when given, closes it by itself after that long (a bound for a
    caller that never closes it)."""

    def __init__(self, delay_s: float = 0.0, lifetime_s: float | None = None, call_timeout_s: float = 10.0) -> None:
        self.delay_s = delay_s
        self.lifetime_s = lifetime_s
        self.call_timeout_s = call_timeout_s
        self.links: dict[tuple[str, str], DelayedLink] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._native_id: int | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LinkSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._thread is not None:
            raise LinkError("link set already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._native_id = threading.get_native_id()
            if self.lifetime_s is not None:
                loop.call_later(self.lifetime_s, lambda: loop.create_task(self._close_all(stop=True)))
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="wanlink", daemon=True)
        self._thread.start()
        ready.wait(self.call_timeout_s)

    def close(self) -> None:
        """Close every link (listening sockets and connections) and stop the loop's thread. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            self._closed = True
            return
        with contextlib.suppress(RuntimeError, TimeoutError):  # loop already stopped by `lifetime_s`
            asyncio.run_coroutine_threadsafe(self._close_all(), loop).result(self.call_timeout_s)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(self.call_timeout_s)

    async def _close_all(self, stop: bool = False) -> None:
        self._closed = True
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)
        if stop:
            asyncio.get_running_loop().stop()

    @property
    def native_thread_id(self) -> int:
        """The OS thread id of the loop's thread (e.g. to give it CPUs of its own)."""
        if self._native_id is None:
            raise LinkError("link set not started")
        return self._native_id

    # ------------------------------------------------------------------------------------------ links

    def add(self, source: str, destination: str, target: tuple[str, int] | None = None,
            delay_s: float | None = None) -> DelayedLink:
        """A new listening link named (source, destination); its port is known on return."""
        name = (source, destination)
        if name in self.links:
            raise LinkError(f"link {source}->{destination} exists")
        link = DelayedLink(name, self.delay_s if delay_s is None else delay_s, target)
        self._call(link.start())
        self.links[name] = link
        return link

    def get(self, source: str, destination: str) -> DelayedLink:
        return self.links[(source, destination)]

    def mesh(self, nodes: Iterable[str], client: str = CLIENT) -> dict[tuple[str, str], DelayedLink]:
        """Links client→node for every node and node→node for every ordered pair of distinct nodes (targets
        unset; see `point`)."""
        names = list(nodes)
        made = {}
        for destination in names:
            for source in [client, *names]:
                if source != destination:
                    made[(source, destination)] = self.add(source, destination)
        return made

    def point(self, destination: str, host: str, port: int) -> None:
        """Every link into `destination` forwards to host:port from now on."""
        for (_, to), link in self.links.items():
            if to == destination:
                link.set_target(host, port)

    def set_delay(self, delay_s: float) -> None:
        """The one-way delay of every link, for chunks read from now on."""
        self.delay_s = delay_s
        for link in self.links.values():
            link.delay_s = delay_s

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._closed:
            coro.close()
            raise LinkError("link set not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.call_timeout_s)


def reserve_port(host: str = LISTEN_HOST) -> int:
    """A free port on `host` that bind(port 0) will not hand out again for a while (it is left in TIME_WAIT),
    while a server that binds it with SO_REUSEADDR, as `p2pnode serve` does, still can."""
    check_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection((host, port)):
            accepted, _ = listener.accept()
            # The side that closes first keeps TIME_WAIT: the accepted (server) side, on the port itself.
            accepted.close()
    return port


__all__ = ["CLIENT", "DelayedLink", "LinkError", "LinkSet", "check_loopback", "reserve_port"]
