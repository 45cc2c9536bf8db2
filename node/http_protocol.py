"""The node's HTTP/1.1 protocol for uvicorn: uvicorn's httptools protocol, except that a response's head and
body leave in one send.

uvicorn writes a response's status line and headers as soon as the app sends `http.response.start`, and the
body on `http.response.body`: two sends, so two TCP segments with TCP_NODELAY. A client blocked on the answer
is woken by the first, parses the headers, blocks again and is woken by the second: one extra pair of
context switches on every per-token hop (measured: the client's voluntary context switches per forward went
from about 1.85 to 1). `CoalescingTransport` holds a write until a second one comes in the same event-loop
turn (the body after the head: both go at once, through `writelines`, which uvloop sends with one vectored
write, without copying) or, failing that, until the loop's next turn.

Boundary: asyncio transports and uvicorn's protocol class only; knows nothing about routes, payment or models.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps an asyncio write transport: a write is held until the next write in the same event-loop turn,
    which passes both on together, or else until the loop's next turn. Ordering is kept; `close` and
    `write_eof` pass pending data on first; `abort` drops it, as aborting a transport drops its buffer.
    Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    @property
    def wrapped(self) -> asyncio.WriteTransport:
        return self._transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data) if not isinstance(data, bytes) else data)
        if len(self._pending) == 1:
            self._loop.call_soon(self.flush)
        else:
            # A second write in the same turn (a response's body after its head): pass both on now rather than
            # after the request's teardown.
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Pass queued data on now (also what the scheduled callback does)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self._transport.is_closing():
            return  # a closed transport would only warn; the peer is gone
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._pending)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol over a `CoalescingTransport` (pass as `uvicorn.Config(http=...)`).
    Flow control still works: the real transport calls this protocol's pause/resume_writing as before."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
