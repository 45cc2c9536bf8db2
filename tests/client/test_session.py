"""`RouteSession`'s transport and failover logic, table-driven over an in-memory network of scripted nodes (no
sockets): each fake node adds its layer count to the hidden states, keeps a session position, relays to the
next node as the step says, and misbehaves on cue. Whatever goes wrong, the output equals what the full model
gives, the culprit is banned, and every hop was sent exactly the tokens it computed. The real streams are
covered by tests/node/test_stream.py and the end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from client.funding import Need
from client.hops import HopFailed, HopRejected, HopTimeout, Payer
from client.market import Candidate, Market
from client.routing import Route, find_route
from client.session import FailoverExhausted, RouteSession
from p2pllm.chain import Offer
from p2pllm.receipts import EscrowDomain
from p2pllm.wire import Message, NodeInfo, Ping, Pong, ReceiptClaim, SessionOpened, Step, StepError, StepResult

LAYERS = 6
MODEL = b"\x01" * 32
DOMAIN = EscrowDomain(31337, "0x" + "E5" * 20)
PAYER = Payer("0x" + "C1" * 20, b"\x01" * 32, DOMAIN)


CLIENT_LINK_S = 0.02  # how long a step takes from the client to a node


@dataclass
class Fault:
    """What a node does wrong, and at which step position: die (its streams close), killed (dead before the
    step arrives: its streams close, and the node relaying to it reports it unreachable), go silent (no answer,
    no pong), drop_relay (computes, answers the client, never pushes on), tamper (pushes on with a receipt the
    client did not sign), unreachable (reports it cannot reach the next hop)."""

    kind: str
    at: int


@dataclass
class FakeNode:
    address: str
    endpoint: str
    start: int
    end: int
    network: Network
    fault: Fault | None = None
    sessions: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    dead: bool = False

    def alive_for(self, step: Step) -> bool:
        """False once the node is dead; a "killed" node dies as this step reaches it."""
        if self.fault is not None and self.fault.kind == "killed" and step.position >= self.fault.at:
            self.die()
        return not self.dead

    def die(self) -> None:
        if not self.dead:
            self.dead = True
            for s in self.sessions.values():
                s["inbox"].put_nowait(HopFailed(self.address, self.endpoint, "stream closed"))

    def deliver(self, step: Step, relayed: bool) -> None:
        session = self.sessions.get(step.session_id)
        if not self.alive_for(step) or session is None:
            return
        inbox = session["inbox"]
        fault = self.fault if self.fault is not None and self.fault.at == step.position else None
        if fault is not None and fault.kind == "die":
            self.die()
            return
        if fault is not None and fault.kind == "silent":
            session["silent"] = True
            return
        if step.receipt is None or step.receipt.signature == b"\xee" * 65:
            code = "missing_receipt" if step.receipt is None else "bad_signature"
            inbox.put_nowait(StepError(code, {}, self.address, step.session_id, step.position, relayed))
            return
        if step.position != session["length"]:
            inbox.put_nowait(StepError("position_mismatch", {"expected": session["length"], "got": step.position},
                                       self.address, step.session_id, step.position, relayed))
            return
        tokens = int(step.hidden.shape[1])
        session["length"] += tokens
        session["computed"] += tokens
        out = step.hidden + (self.end - self.start)
        # As the real node: the client's copy first, then the push on (and word if it failed).
        inbox.put_nowait(StepResult(step.session_id, step.position, not step.relay, 1.0, out))
        if step.relay:
            following = step.relay[0]
            receipt = following.receipt
            if fault is not None and fault.kind == "tamper":
                receipt = type(receipt)(receipt.tokens, receipt.amount_wei, receipt.deadline, b"\xee" * 65)
            onward = Step(following.session_id, step.position, receipt, out, step.relay[1:])
            unreachable = StepError("next_hop_unreachable", {"endpoint": following.endpoint}, self.address,
                                    step.session_id, step.position, relayed)
            if fault is not None and fault.kind == "unreachable":
                inbox.put_nowait(unreachable)
            elif not self.network.reachable(following.endpoint, onward):
                # A push to a dead peer fails only when TCP says so: the client has seen its stream close by then.
                asyncio.get_running_loop().call_later(CLIENT_LINK_S / 2, inbox.put_nowait, unreachable)
            elif fault is None or fault.kind != "drop_relay":
                self.network.push(following.endpoint, onward)


@dataclass
class Network:
    nodes: dict[str, FakeNode] = field(default_factory=dict)
    opened: list[str] = field(default_factory=list)

    def reachable(self, endpoint: str, step: Step) -> bool:
        return self.nodes[endpoint].alive_for(step)

    def push(self, endpoint: str, step: Step) -> None:
        """Node to node: it arrives a moment later (on the next turn of the event loop), as over a socket."""
        asyncio.get_running_loop().call_soon(self.nodes[endpoint].deliver, step, True)


class Inbox:
    """A hop's received frames, announced on the route session's shared event (as `HopSession`'s reader does)."""

    def __init__(self, arrived: asyncio.Event) -> None:
        self.items: deque[Any] = deque()
        self.arrived = arrived

    def put_nowait(self, item: Any) -> None:
        self.items.append(item)
        self.arrived.set()


class FakeHop:
    """The `HopSession` interface over a `FakeNode`."""

    def __init__(self, node: FakeNode, hop: Any, max_length: int, arrived: asyncio.Event) -> None:
        self.fake = node
        self.node, self.endpoint, self.offer_id = node.address, node.endpoint, hop.offer_id
        self.start, self.end = hop.start, hop.end
        self.price_wei_per_token, self.credit_wei, self.max_length = hop.price_wei_per_token, 0, max_length
        self.session_id = bytes([len(node.network.opened) + 1]) * 32
        self.tokens = self.signed_wei = 0
        self.signing_s = 0.0
        self.client_unpaid_wei = 0
        self.arrived = arrived
        self.inbox = Inbox(arrived)
        self.closed = False

    @property
    def max_cost_wei(self) -> int:
        return self.max_length * self.price_wei_per_token

    @property
    def has_mail(self) -> bool:
        return bool(self.inbox.items)

    async def open(self) -> SessionOpened:
        if self.fake.dead:
            raise HopFailed(self.node, self.endpoint, "cannot connect")
        self.fake.network.opened.append(self.node)
        self.fake.sessions[self.session_id] = {"inbox": self.inbox, "length": 0, "computed": 0, "silent": False}
        return SessionOpened(self.session_id, self.max_length, 100, 0)

    def claim_for(self, tokens_after: int) -> Any:
        self.signed_wei = tokens_after * self.price_wei_per_token
        return ReceiptClaim(tokens_after, self.signed_wei, 2_000_000_000, b"\x01" * 65)

    def step(self, position: int, hidden: torch.Tensor, relay: tuple = ()) -> Step:
        return Step(self.session_id, position, self.claim_for(position + int(hidden.shape[1])), hidden, relay)

    async def send(self, message: Message) -> None:
        if self.fake.dead:
            raise HopFailed(self.node, self.endpoint, "stream closed")
        if isinstance(message, Step):  # it arrives later, as over a network
            asyncio.get_running_loop().call_later(CLIENT_LINK_S, self.fake.deliver, message, False)
        elif isinstance(message, Ping):
            session = self.fake.sessions[self.session_id]
            if not session["silent"]:
                self.inbox.put_nowait(Pong(self.session_id, session["length"]))

    def take(self) -> Message | None:
        if not self.inbox.items:
            return None
        item = self.inbox.items.popleft()
        if isinstance(item, HopFailed):
            self.inbox.items.appendleft(item)
            raise item
        return item

    def put_back(self, message: Message) -> None:
        self.inbox.items.appendleft(message)

    def take_error(self, code: str, position: int, endpoint: str | None = None) -> StepError | None:
        for item in self.inbox.items:
            if (isinstance(item, StepError) and item.code == code and item.position == position
                    and (endpoint is None or item.detail.get("endpoint") == endpoint)):
                self.inbox.items.remove(item)
                return item
        return None

    async def recv(self, timeout_s: float) -> Message:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (message := self.take()) is None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise HopTimeout(self.node, self.endpoint, "silent")
            self.arrived.clear()
            if not self.inbox.items:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), left)
        return message

    async def ping(self, timeout_s: float) -> int | None:
        held = []
        try:
            await self.send(Ping(self.session_id))
            while True:
                answer = await self.recv(timeout_s)
                if isinstance(answer, Pong):
                    return answer.length
                held.append(answer)
        except HopFailed:
            return None
        finally:
            for message in reversed(held):
                self.put_back(message)

    def served(self, result: StepResult, tokens: int) -> None:
        self.tokens = result.position + tokens

    async def close(self) -> None:
        self.closed = True


class FakeSession(RouteSession):
    network: Network

    def _new_hop(self, hop: Any) -> Any:
        node = next(n for n in self.network.nodes.values() if n.address == hop.node)
        return FakeHop(node, hop, self.max_length, self.arrived)


# Nodes: A [0,3) and A2 [0,3); B [3,6), B2 [3,6) and B3 [3,6). Prices make A, B the first choice.
NODES = {"A": (0, 3, 1), "A2": (0, 3, 5), "B": (3, 6, 1), "B2": (3, 6, 4), "B3": (3, 6, 6)}


def _network(faults: dict[str, Fault]) -> tuple[Network, Market]:
    network = Network()
    market = Market(MODEL, LAYERS)
    for offer_id, (name, (start, end, price)) in enumerate(NODES.items(), start=1):
        address = "0x" + f"{offer_id:02x}" * 20
        endpoint = f"http://{name.lower()}:1"
        network.nodes[endpoint] = FakeNode(address, endpoint, start, end, network, faults.get(name))
        info = NodeInfo(address, "fake", MODEL, start, end, LAYERS, 4, "float32", "cpu", 1.0, 31337, DOMAIN.escrow,
                        DOMAIN.escrow, offer_id, 86400, 172800, price, 0, 0, 100, 100)
        market.candidates.append(Candidate(Offer(offer_id, address, MODEL, start, end, price, endpoint, 2**40), info,
                                           1.0))
    return network, market


def _session(network: Network, market: Market, transport: str, funded: list | None = None) -> FakeSession:
    route = find_route(market.route_offers(), LAYERS, alpha=1.0)
    session = FakeSession(market, route, PAYER, 32, 1.0, torch.float32, 4, transport=transport,
                          step_timeout_s=0.2, step_timeout_per_token_s=0.0, probe_timeout_s=0.1,
                          fund=(funded.append if funded is not None else lambda needs: None))
    session.network = network
    return session


def _names(network: Network, route: Route) -> list[str]:
    by_address = {n.address: name for name, n in zip(NODES, network.nodes.values(), strict=True)}
    return [by_address[h.node] for h in route.hops]


def _computed(network: Network, name: str) -> int:
    node = list(network.nodes.values())[list(NODES).index(name)]
    return sum(s["computed"] for s in node.sessions.values())


async def _generate(session: RouteSession, steps: int) -> list[torch.Tensor]:
    await session.open()
    outputs = [await session.step(torch.zeros(1, 3, 4))]
    for _ in range(steps - 1):
        outputs.append(await session.step(torch.zeros(1, 1, 4)))
    await session.close()
    return outputs


@pytest.mark.parametrize(("transport", "faults", "route", "banned", "computed"), [
    ("relay", {}, ["A", "B"], [], {"A": 6, "B": 6}),
    ("star", {}, ["A", "B"], [], {"A": 6, "B": 6}),
    # B dies at position 4 (the second decode step): B2 replays the 4 tokens B had and takes over.
    ("relay", {"B": Fault("die", 4)}, ["A", "B2"], ["B"], {"A": 6, "B": 4, "B2": 6}),
    ("star", {"B": Fault("die", 4)}, ["A", "B2"], ["B"], {"A": 6, "B": 4, "B2": 6}),
    # B is killed between steps: A cannot push to it and says so; B's stream closes; B2 takes over, and A's word
    # about B (still waiting in A's inbox) is not taken for news about A's link to B2.
    ("relay", {"B": Fault("killed", 4)}, ["A", "B2"], ["B"], {"A": 6, "B": 4, "B2": 6}),
    # B goes silent: the step times out, B does not answer a ping either, and is replaced.
    ("relay", {"B": Fault("silent", 3)}, ["A", "B2"], ["B"], {"A": 6, "B": 3, "B2": 6}),
    # A tampers with B's receipt: B refuses and tells the client, which blames A and replaces it.
    ("relay", {"A": Fault("tamper", 4)}, ["A2", "B"], ["A"], {"A": 5, "A2": 6, "B": 6}),
    # A never pushes position 5 on: B is alive but never got it, so the client feeds B itself from then on.
    ("relay", {"A": Fault("drop_relay", 5)}, ["A", "B"], [], {"A": 6, "B": 6}),
    # A reports it cannot reach B: the client feeds B directly.
    ("relay", {"A": Fault("unreachable", 3)}, ["A", "B"], [], {"A": 6, "B": 6}),
    # A dies at once: its span is rerouted before any token of the step reached B.
    ("relay", {"A": Fault("die", 0)}, ["A2", "B"], ["A"], {"A": 0, "A2": 6, "B": 6}),
])
def test_failover(transport: str, faults: dict[str, Fault], route: list[str], banned: list[str],
                  computed: dict[str, int]) -> None:
    network, market = _network(faults)
    session = _session(network, market, transport)
    outputs = asyncio.run(_generate(session, 4))
    assert all(torch.equal(out[:, -1], torch.full((1, 4), float(LAYERS))) for out in outputs)  # every layer, once
    assert _names(network, session.route) == route
    banned_names = sorted(n for n, node in zip(NODES, network.nodes.values(), strict=True)
                          if node.address.lower() in session.banned)
    assert banned_names == sorted(banned)
    assert {name: _computed(network, name) for name in computed} == computed
    assert len(session.events) == len(banned)
    # The client feeds the second hop itself only where the link to it really broke (or in star mode).
    fed = transport == "star" or any(f.kind in ("drop_relay", "unreachable") for f in faults.values())
    assert session.slots[1].fed_by_client == fed
    # What each hop was asked to be paid for is what it computed (its receipts never run ahead of its work).
    for hop in session.hops:
        node = network.nodes[hop.endpoint]
        assert hop.tokens == node.sessions[hop.session_id]["computed"]


async def _count_steps(session: RouteSession) -> list[str]:
    """Open, run one step, and return the hops the client itself sent a step to."""
    sent: list[str] = []
    await session.open()
    for slot in session.slots:
        original = slot.hop.send

        async def counting(message: Message, original: Any = original, name: str = slot.hop.node) -> None:
            if isinstance(message, Step):
                sent.append(name)
            await original(message)

        slot.hop.send = counting  # type: ignore[method-assign]
    await session.step(torch.zeros(1, 2, 4))
    return sent


@pytest.mark.parametrize(("transport", "sends"), [("relay", 1), ("star", 2)])
def test_relay_sends_each_step_once_and_star_to_every_hop(transport: str, sends: int) -> None:
    network, market = _network({})
    assert len(asyncio.run(_count_steps(_session(network, market, transport)))) == sends


def test_open_funds_every_hop_in_one_call_and_gives_up_after_too_many_failures() -> None:
    network, market = _network({})
    funded: list[list[Need]] = []
    session = _session(network, market, "relay", funded)
    asyncio.run(session.open())
    assert len(funded) == 1 and sorted(n.node for n in funded[0]) == sorted(h.node for h in session.route.hops)
    assert all(n.session_wei == 32 * h.price_wei_per_token for n, h in zip(funded[0], session.route.hops,
                                                                             strict=True))
    dead = {name: Fault("die", 0) for name in NODES}
    network, market = _network(dead)
    session = _session(network, market, "relay")
    session.max_failovers = 1  # A fails, then its replacement A2: one failover too many
    with pytest.raises(FailoverExhausted, match="gave up after 1 failovers"):
        asyncio.run(_generate(session, 1))


def test_a_refusal_the_client_caused_is_not_rerouted() -> None:
    network, market = _network({})
    session = _session(network, market, "star")

    async def run() -> None:
        await session.open()
        hop = session.slots[0].hop
        await hop.send(Step(hop.session_id, 0, None, torch.zeros(1, 1, 4)))  # no receipt, sent by the client
        await session._result(0, 0, 1, torch.zeros(1, 1, 4))

    with pytest.raises(HopRejected) as refused:
        asyncio.run(run())
    assert refused.value.error == "missing_receipt" and not session.events
