"""The node-to-node streams of one session: where a relaying node pushes its outputs. One WebSocket per next
(endpoint, session), opened on first use and kept while the session lives. Whatever the next node sends back
on it (its errors about relayed steps) is read at once and handed to `on_reply`, so the next node never waits
on a reader that is not there. Knows nothing about payment, the shard or the session table."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from p2pllm.wire import WireError, stream_url

log = logging.getLogger("p2pnode.relay")


@dataclass(frozen=True)
class RelaySettings:
    """How this node dials the next node: TLS context for `wss` (with a private CA when given), timeouts and
    the frame size it accepts back."""

    ssl_context: ssl.SSLContext | None = None
    connect_timeout_s: float = 5.0
    max_frame_bytes: int = 16 * 1024 * 1024


class RelayUnreachable(Exception):
    """The next hop could not be reached or its stream broke; the step was not delivered."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"next hop {endpoint} unreachable: {reason}")
        self.endpoint = endpoint
        self.reason = reason


class Relay:
    """The outgoing streams of one session."""

    def __init__(self, settings: RelaySettings, on_reply: Callable[[bytes], Awaitable[None]]) -> None:
        self.settings = settings
        self.on_reply = on_reply
        self._links: dict[tuple[str, bytes], ClientConnection] = {}
        self._readers: set[asyncio.Task[None]] = set()

    async def push(self, endpoint: str, session_id: bytes, frame: bytes) -> None:
        """Send `frame` (a step for `session_id` at `endpoint`) in order after the ones before it."""
        key = (endpoint, session_id)
        link = self._links.get(key)
        if link is None:
            link = await self._connect(endpoint)
            self._links[key] = link
            reader = asyncio.get_running_loop().create_task(self._read(link))
            self._readers.add(reader)
            reader.add_done_callback(self._readers.discard)
        try:
            await link.send(frame)
        except (ConnectionClosed, OSError) as exc:
            self._links.pop(key, None)
            raise RelayUnreachable(endpoint, f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            with contextlib.suppress(ConnectionClosed, OSError):
                await link.close()
        for reader in list(self._readers):
            reader.cancel()

    async def _connect(self, endpoint: str) -> ClientConnection:
        try:
            url = stream_url(endpoint)
        except WireError as exc:
            raise RelayUnreachable(endpoint, str(exc)) from exc
        settings = self.settings
        try:
            return await connect(url, ssl=settings.ssl_context if url.startswith("wss://") else None,
                                 open_timeout=settings.connect_timeout_s, max_size=settings.max_frame_bytes,
                                 compression=None, proxy=None)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ssl.SSLError) as exc:
            raise RelayUnreachable(endpoint, f"{type(exc).__name__}: {exc}") from exc

    async def _read(self, link: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            async for frame in link:
                if isinstance(frame, bytes):
                    try:
                        await self.on_reply(frame)
                    except Exception as exc:  # the client's stream may be gone; the relay keeps going
                        log.debug("could not pass on a reply from the next hop: %s", exc)
