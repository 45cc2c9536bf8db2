"""`HopSession`'s stream against a real WebSocket server (the `websockets` package) that plays a node: frames
arrive parsed and in order, and each way a stream can go wrong ends in the typed failure the route session acts
on — a silent node (HopTimeout), a text frame or an unreadable one, a closed stream, and a node flooding the
client with frames it did not ask for (bounded: the client never buffers more than `max_unread_frames`). Also
`wait_set`, the wait behind `recv`, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest
import torch
import uvloop
from eth_account import Account
from websockets.asyncio.server import ServerConnection, serve

from client.hops import HopFailed, HopSession, HopTimeout, Payer, StreamOptions, wait_set
from p2pllm.receipts import EscrowDomain
from p2pllm.wire import Pong, StepResult, encode

SESSION = os.urandom(32)
HIDDEN = 8

Behaviour = Callable[[ServerConnection], Awaitable[None]]


async def with_hop(behaviour: Behaviour, test: Callable[[HopSession], Awaitable[None]],
                   options: StreamOptions | None = None) -> None:
    async def handler(ws: ServerConnection) -> None:
        await behaviour(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        account = Account.create()
        payer = Payer(account.address, bytes(account.key), EscrowDomain(31337, "0x" + "22" * 20))
        hop = HopSession(payer, "0x" + "11" * 20, f"http://127.0.0.1:{port}", 1, 0, 4, 10, 0, 64, torch.float32,
                         HIDDEN, options or StreamOptions(), session_id=SESSION)
        await hop.connect()
        try:
            await test(hop)
        finally:
            await hop.close()


def test_frames_arrive_parsed_and_in_order() -> None:
    async def node(ws: ServerConnection) -> None:
        for position in range(5):
            await ws.send(encode(StepResult(SESSION, position, True, 1.0, torch.full((1, 1, HIDDEN), float(position)))))

    async def client(hop: HopSession) -> None:
        for position in range(5):
            message = await hop.recv(5)
            assert isinstance(message, StepResult) and message.position == position
            assert float(message.hidden[0, 0, 0]) == position

    asyncio.run(with_hop(node, client))


def test_a_silent_node_times_out() -> None:
    async def node(ws: ServerConnection) -> None:
        pass

    async def client(hop: HopSession) -> None:
        with pytest.raises(HopTimeout):
            await hop.recv(0.2)
        assert await hop.ping(0.2) is None

    asyncio.run(with_hop(node, client))


@pytest.mark.parametrize(("frame", "reason"), [("hello", "text frame"), (b"\x00garbage", "unreadable frame"),
                                               (None, "stream closed")])
def test_a_broken_stream_fails_the_hop_and_keeps_failing(frame: str | bytes | None, reason: str) -> None:
    async def node(ws: ServerConnection) -> None:
        await ws.send(encode(Pong(SESSION, 3)))
        if frame is None:
            await ws.close()
        else:
            await ws.send(frame)

    async def client(hop: HopSession) -> None:
        assert await hop.recv(5) == Pong(SESSION, 3)  # what came before the failure is still delivered
        for _ in range(2):
            with pytest.raises(HopFailed) as failed:
                await hop.recv(5)
            assert reason in failed.value.reason and not isinstance(failed.value, HopTimeout)

    asyncio.run(with_hop(node, client))


def test_a_flooding_node_is_cut_off_at_the_bound() -> None:
    async def node(ws: ServerConnection) -> None:
        for length in range(1000):
            await ws.send(encode(Pong(SESSION, length)))

    async def client(hop: HopSession) -> None:
        await asyncio.sleep(0.5)  # the node sends everything while the client takes nothing
        taken = []
        with pytest.raises(HopFailed) as failed:
            while True:
                message = await hop.recv(5)
                assert isinstance(message, Pong)
                taken.append(message.length)
        assert taken == list(range(16)) and "not asked for" in failed.value.reason

    asyncio.run(with_hop(node, client, StreamOptions(max_unread_frames=16)))


def test_wait_set_returns_when_set_or_timed_out_and_lets_a_cancel_through() -> None:
    """`wait_set` (the wait behind every `recv`) returns early once the event is set, returns quietly at its
    timeout, and does not swallow a cancellation that comes from outside (a route session giving up)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        loop.call_later(0.01, event.set)
        started = loop.time()
        await wait_set(event, 5.0)
        assert event.is_set() and loop.time() - started < 1.0

        event.clear()
        started = loop.time()
        await wait_set(event, 0.05)
        assert not event.is_set() and loop.time() - started >= 0.04

        waiter = loop.create_task(wait_set(asyncio.Event(), 5.0))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(scenario())
    uvloop.run(scenario())  # the loop `InferenceClient` runs its streams on
