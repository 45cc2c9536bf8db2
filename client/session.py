"""A generation's trip through a route of hops, and the one place where retry and reroute live.

Transport. In relay mode (the default) the client sends each step once, to the first hop, with a receipt for
every hop; each node computes, pushes its output to the next, and sends the client a copy, which the client
keeps as the next hop's input for replay; the last node's result is final. In star mode the client feeds every
hop itself. A hop whose link from the previous node broke is fed by the client from then on ("star link"),
whatever the mode.

Opening. Every hop is opened with a signed `OpenSession`; hops are funded (`fund`: the client's allocation for
each node topped up to what the node reports unpaid plus what the session may cost, in one transaction) once
they are open, or after a node refused to open for lack of reservation, which is then opened again.

Failover. A hop that fails (stream closed, unreadable, an error rerouting can fix, or silent past the step
timeout and not answering a ping) has its node banned for a while; the span it served is routed again over the
remaining offers, the replacement hops are opened and funded, the span's stored inputs are replayed on them
(they are paid for those tokens, which they process), and the step continues from there. A node that reports a
receipt problem on a relayed step blames the node that relayed it (the client signed a good one): that node is
replaced the same way. A hop that is alive but never got a relayed step is fed by the client instead.

Knows nothing about tokens, sampling or the chain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from client.funding import Need
from client.hops import HopFailed, HopRejected, HopSession, HopTimeout, Payer, StreamOptions, wait_set
from client.market import Market
from client.routing import Hop, Route, RouteOffer, find_route
from client.spotcheck import Verifier
from client.verify import equivocates
from p2pllm.wire import NextHop, SignedCommitment, StepError, StepResult

log = logging.getLogger("p2pclient.session")

TRANSPORTS = ("relay", "star")
# A relayed step refused for these reasons carried a receipt other than the one the client signed: the node
# that relayed it tampered with it or dropped it.
TAMPER_CODES = frozenset({"missing_receipt", "bad_receipt", "bad_signature", "malformed_receipt", "bad_upstream"})
AMOUNT_CODES = frozenset({"underpaid", "receipt_decreased"})
# Refusals that rerouting will not fix: the client's funds or a bug on the client's side.
REJECT_CODES = frozenset({"insufficient_escrow", "underpaid", "receipt_decreased", "bad_deadline", "bad_signature",
                          "malformed_receipt", "missing_receipt", "bad_receipt", "wrong_node", "bad_span",
                          "stream_bound", "dtype_mismatch", "trailing_dim_mismatch", "shape_mismatch"})


class RouteTooExpensive(Exception):
    def __init__(self, price_wei_per_token: int, max_price_wei_per_token: int) -> None:
        super().__init__(f"the route costs {price_wei_per_token} wei/token, "
                         f"above the price cap of {max_price_wei_per_token} wei/token")
        self.price_wei_per_token = price_wei_per_token
        self.max_price_wei_per_token = max_price_wei_per_token


class FailoverExhausted(Exception):
    """Too many failures in one generation; carries the last one."""


@dataclass(frozen=True)
class FailoverEvent:
    node: str
    span: tuple[int, int]
    reason: str
    replacement: tuple[Hop, ...]
    replayed_tokens: int


@dataclass
class _Slot:
    hop: HopSession
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    fed_by_client: bool = False
    commitment: SignedCommitment | None = None  # the hop's newest verified commitment
    sent_at: int | None = None  # the position of the last step the client sent it itself (not relayed)

    def history(self, upto: int) -> torch.Tensor | None:
        """Its inputs for positions [0, upto)."""
        if upto == 0 or not self.inputs:
            return None
        return torch.cat(self.inputs, dim=1)[:, :upto]


class _Tampered(Exception):
    """The hop at `index` saw a receipt other than the one the client signed, or hidden states without its
    predecessor's matching commitment: the hop before it is to blame (`reason`)."""

    def __init__(self, index: int, reason: str, computed: bool = False) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason
        self.computed = computed  # hop `index` computed on what it was pushed: its state is tainted too


def route_span(market: Market, start: int, end: int, alpha: float, banned: set[str]) -> Route:
    """A route for layers [start, end) only, over offers clipped to that span."""
    clipped = []
    for offer in market.route_offers(banned):
        lo, hi = max(offer.start, start), min(offer.end, end)
        if lo < hi:
            clipped.append(RouteOffer(offer.offer_id, offer.node, lo - start, hi - start,
                                      offer.price_wei_per_token, offer.rtt_ms, offer.compute_ms_per_layer))
    route = find_route(clipped, end - start, alpha)
    hops = tuple(Hop(h.offer_id, h.node, h.start + start, h.end + start, h.price_wei_per_token, h.latency_ms)
                 for h in route.hops)
    return Route(hops, route.price_wei_per_token, route.latency_ms)


def banned_now(banned: dict[str, float], now: float) -> set[str]:
    """The nodes of a ban table (node -> monotonic time the ban ends) still banned at `now`."""
    return {node for node, until in banned.items() if until > now}


Fund = Callable[[Sequence[Need]], None]
LinkEndpoint = Callable[[str, str], str]


@dataclass
class RouteSession:
    """Runs steps through a route, rerouting failed spans; `banned` survives across sessions if shared.
    `link_endpoint(from_node, to_endpoint)`, when given, is the endpoint a relaying node dials for the next hop
    (by default the next node's own endpoint; a network may need otherwise, e.g. a proxy per link). `fund` is
    called in a worker thread."""

    market: Market
    route: Route
    payer: Payer
    max_length: int
    alpha: float
    dtype: torch.dtype
    hidden_size: int
    max_price_wei_per_token: int | None = None
    transport: str = "relay"
    options: StreamOptions = field(default_factory=StreamOptions)
    banned: dict[str, float] = field(default_factory=dict)
    ban_s: float = 120.0
    max_failovers: int = 8
    step_timeout_s: float = 15.0
    step_timeout_per_token_s: float = 0.05
    probe_timeout_s: float = 2.0
    fund: Fund = lambda needs: None
    link_endpoint: LinkEndpoint | None = None
    clock: Callable[[], float] = time.monotonic
    events: list[FailoverEvent] = field(default_factory=list)
    failures: int = 0
    verifier: Verifier | None = None
    slots: list[_Slot] = field(default_factory=list)
    retired: list[HopSession] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set by every hop's reader

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")

    # ------------------------------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open and fund a session on every hop; a node that fails to open is banned and the route recomputed."""
        self._check_price(self.route)
        while True:
            hops = [self._new_hop(hop) for hop in self.route.hops]
            try:
                await self._open_and_fund(hops)
            except HopFailed as failure:
                await self._close(hops)
                self.retired.extend(hops)
                self._note_failure(failure, (0, self.market.num_layers))
                self.route = find_route(self.market.route_offers(self._banned_now()), self.market.num_layers,
                                        self.alpha)
                self._check_price(self.route)
                continue
            except BaseException:
                await self._close(hops)
                raise
            self.slots = [_Slot(hop, fed_by_client=self.transport == "star") for hop in hops]
            return

    async def close(self) -> None:
        await self._close([slot.hop for slot in self.slots])

    @property
    def hops(self) -> list[HopSession]:
        """Every hop used, including ones replaced after a failure."""
        return [*self.retired, *(slot.hop for slot in self.slots)]

    # ------------------------------------------------------------------------------------------ steps

    async def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states through every hop (rerouting around failures); the last hop's output."""
        position = self.slots[0].hop.tokens
        await self._drop_condemned(position)
        tokens = int(hidden.shape[1])
        inputs: dict[int, torch.Tensor] = {0: hidden}
        await self._inject(0, position, hidden)
        index = 0
        while index < len(self.slots):
            try:
                output = await self._result(index, position, tokens, inputs[index])
            except _Tampered as tampered:
                blamed = tampered.index - 1
                failure = HopFailed(self.slots[blamed].hop.node, self.slots[blamed].hop.endpoint, tampered.reason)
                await self._replace(blamed, failure, position, through_end=tampered.computed)
                index = blamed
                await self._inject(index, position, inputs[index])
                continue
            except _LinkBroken:
                await self._inject(index, position, inputs[index])
                continue
            except HopFailed as failure:
                await self._replace(index, failure, position)
                await self._inject(index, position, inputs[index])
                continue
            slot = self.slots[index]
            slot.inputs.append(inputs[index])
            slot.outputs.append(output)
            index += 1
            inputs[index] = output
            if index < len(self.slots) and self.slots[index].fed_by_client:
                await self._inject(index, position, output)
        self._spot_check(position + tokens)
        return inputs[len(self.slots)]

    # ------------------------------------------------------------------------------------------ verification

    def _spot_check(self, length: int) -> None:
        """Start the spot checks the verifier draws for this step (they run beside the next steps)."""
        verifier = self.verifier
        if verifier is None:
            return
        for slot in self.slots:
            if verifier.wants_check(slot.hop):
                outputs = torch.cat(slot.outputs, dim=1)[:, :length]
                inputs = slot.history(length)
                if inputs is not None and int(outputs.shape[1]) == length:
                    verifier.start_check(self.market, self.payer, self.options, self._open_and_fund, slot.hop,
                                         inputs, outputs, self._banned_now())

    async def _drop_condemned(self, position: int) -> None:
        """A node a spot check found wrong leaves the route now: it is banned for good, and the route from its
        hop to the end is replaced and replayed (so no later hop keeps states computed from its outputs)."""
        verifier = self.verifier
        if verifier is None or not verifier.condemned:
            return
        condemned = {c.node.lower(): c for c in verifier.condemned}
        verifier.condemned.clear()
        for node in condemned:
            self.banned[node] = float("inf")
        for index, slot in enumerate(self.slots):
            if slot.hop.node.lower() in condemned:
                failure = HopFailed(slot.hop.node, slot.hop.endpoint,
                                    f"failed a spot check ({condemned[slot.hop.node.lower()].reason})")
                await self._replace(index, failure, position, through_end=True)
                return

    def _verify(self, index: int, position: int, tokens: int, hidden_in: torch.Tensor, result: StepResult) -> None:
        """Check hop `index`'s commitment for the step (and, for a relayed step, its predecessor's commitment
        that came with it). Raises `_Tampered` to blame the predecessor, `HopFailed` to blame the hop."""
        verifier = self.verifier
        if verifier is None:
            return
        slot = self.slots[index]
        if index > 0 and not slot.fed_by_client and slot.sent_at != position:
            previous = self.slots[index - 1]
            upstream = result.upstream
            if previous.commitment is not None and upstream is not None and equivocates(
                    previous.commitment, upstream, previous.hop.node, verifier.domain):
                verifier.on_equivocation(previous.hop.node, previous.commitment, upstream)
                raise _Tampered(index, "equivocated: relayed other hidden states than its signed copy", computed=True)
            if upstream is None or previous.commitment is None or upstream != previous.commitment:
                raise _Tampered(index, "relayed hidden states without its matching signed commitment", computed=True)
        self._check_commitment(slot, position, tokens, hidden_in, result)

    def _check_commitment(self, slot: _Slot, position: int, tokens: int, hidden_in: torch.Tensor,
                          result: StepResult) -> None:
        """Keep `result`'s commitment as the hop's newest, or fail the hop if it is not its valid one."""
        if self.verifier is None:
            return
        problem = self.verifier.check_commitment(slot.hop, position, tokens, hidden_in, result)
        if problem is not None:
            raise HopFailed(slot.hop.node, slot.hop.endpoint, f"bad commitment: {problem}")
        slot.commitment = result.commitment

    def _link(self, sender: HopSession, receiver: HopSession) -> str:
        """The endpoint `sender` is told to push to for `receiver` (through `link_endpoint` when set)."""
        if self.link_endpoint is None:
            return receiver.endpoint
        return self.link_endpoint(sender.node, receiver.endpoint)

    async def _inject(self, index: int, position: int, hidden: torch.Tensor) -> None:
        """Send the step at `position` to hop `index`, relayed on through the hops fed by their predecessor."""
        slot = self.slots[index]
        slot.sent_at = position
        tokens = int(hidden.shape[1])
        relay: list[NextHop] = []
        previous = slot.hop
        for following in self.slots[index + 1:]:
            if following.fed_by_client:
                break
            claim = following.hop.claim_for(position + tokens)
            relay.append(NextHop(self._link(previous, following.hop), following.hop.session_id, claim))
            previous = following.hop
        with contextlib.suppress(HopFailed):  # noticed when its result does not come
            await slot.hop.send(slot.hop.step(position, hidden, tuple(relay)))

    async def _result(self, index: int, position: int, tokens: int, hidden_in: torch.Tensor) -> torch.Tensor:
        """Hop `index`'s output at `position`. Stale frames are skipped; errors are classified. While it waits, a
        hop fed by the one before it also hears whether that one could not relay to it."""
        slot = self.slots[index]
        hop = slot.hop
        timeout = self.step_timeout_s + tokens * self.step_timeout_per_token_s
        deadline = time.monotonic() + timeout
        while True:
            feeder = None if index == 0 or slot.fed_by_client else self.slots[index - 1].hop
            unreachable = None if feeder is None else feeder.take_error("next_hop_unreachable", position,
                                                                        self._link(feeder, hop))
            if feeder is not None and unreachable is not None:
                log.warning("%s cannot reach the next hop (%s); the client feeds it", feeder.node, unreachable.detail)
                slot.fed_by_client = True
                raise _LinkBroken(index)
            message = hop.take()
            if message is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    await self._silent(index, position)
                    deadline = time.monotonic() + self.probe_timeout_s  # it answered the probe: a little longer
                    continue
                # Nothing from this hop (its inbox is empty): wait for any hop's next frame. A feeder's frames
                # that are not about this link stay in its inbox for later; they must not keep us from waiting.
                self.arrived.clear()
                await wait_set(self.arrived, left)
                continue
            if isinstance(message, StepResult):
                if message.position == position and message.session_id == hop.session_id:
                    hop.served(message, tokens)
                    self._verify(index, position, tokens, hidden_in, message)
                    return message.hidden
                continue  # a late copy of an earlier step
            if isinstance(message, StepError):
                self._classify(index, message, position, tokens)
            # Pongs of earlier probes and the like: nothing to do.

    async def _silent(self, index: int, position: int) -> None:
        """Hop `index` said nothing in time: if it is alive and never got the step from the node before it, the
        link is broken (the client feeds it from now on); if it has the step's answer after all, return; otherwise
        it failed."""
        slot = self.slots[index]
        length = await slot.hop.ping(self.probe_timeout_s)
        if length is not None and length > position and slot.hop.has_mail:
            return  # it computed the step, and what it sent arrived while we probed: read it
        if length is None or length > position or slot.fed_by_client:
            raise HopTimeout(slot.hop.node, slot.hop.endpoint, "no answer to the step nor to a ping")
        log.warning("hop %s did not get step %d from the node before it; feeding it directly", slot.hop.node,
                    position)
        slot.fed_by_client = True
        raise _LinkBroken(index)

    def _classify(self, index: int, error: StepError, position: int, tokens: int) -> None:
        """Raise what an error from hop `index` means for the step at `position`; return to keep waiting."""
        hop = self.slots[index].hop
        if error.position is not None and error.position < position:
            return  # about an earlier step that has been dealt with
        if error.code == "next_hop_unreachable":
            following = self.slots[index + 1].hop if index + 1 < len(self.slots) else None
            if following is not None and error.detail.get("endpoint") == self._link(hop, following):
                log.warning("%s cannot reach the next hop (%s); the client feeds it", hop.node, error.detail)
                self.slots[index + 1].fed_by_client = True
            return
        if error.relayed and error.code == "position_mismatch":
            expected = error.detail.get("expected")
            if isinstance(expected, int) and expected > position:
                return  # it already has this step (a replacement relayed it again)
        if error.relayed and (error.code in TAMPER_CODES or (
                error.code in AMOUNT_CODES and str(error.detail.get("amount_wei"))
                != str(hop.claim_for(position + tokens).amount_wei))):
            raise _Tampered(index, f"tampered with the next hop's step ({error.code})")
        if error.code in REJECT_CODES:
            raise HopRejected(hop.node, error.code, error.detail)
        raise HopFailed(hop.node, hop.endpoint, f"{error.code}: {error.detail}")

    # ------------------------------------------------------------------------------------------ failover

    async def _replace(self, index: int, failure: HopFailed, position: int, through_end: bool = False) -> None:
        """Swap the hop at `index` (with `through_end`, it and every hop after it) for a fresh route over its
        span, replaying its inputs before `position`."""
        failed = self.slots[index]
        last = len(self.slots) - 1 if through_end else index
        span = (failed.hop.start, self.slots[last].hop.end)
        history = failed.history(position)
        for slot in self.slots[index:last + 1]:
            await slot.hop.close()
        while True:
            self._note_failure(failure, span)
            replacement = route_span(self.market, span[0], span[1], self.alpha, self._banned_now())
            new_route = self._spliced(index, replacement)
            self._check_price(new_route)
            hops = [self._new_hop(hop) for hop in replacement.hops]
            new_slots = [_Slot(hop, fed_by_client=self.transport == "star") for hop in hops]
            try:
                await self._open_and_fund(hops)
                replay = history
                for slot in new_slots:
                    if replay is None:
                        break
                    await slot.hop.send(slot.hop.step(0, replay))
                    result = await self._replayed(slot, replay)
                    slot.inputs.append(replay)
                    slot.outputs.append(result)
                    replay = result
            except HopFailed as again:
                await self._close(hops)
                self.retired.extend(hops)
                failure = again
                continue
            break
        self.retired.extend(slot.hop for slot in self.slots[index:last + 1])
        self.slots[index:last + 1] = new_slots
        self.route = new_route
        self.events.append(FailoverEvent(failed.hop.node, span, failure.reason, replacement.hops,
                                         0 if history is None else int(history.shape[1])))

    async def _replayed(self, slot: _Slot, replay: torch.Tensor) -> torch.Tensor:
        tokens = int(replay.shape[1])
        timeout = self.step_timeout_s + tokens * self.step_timeout_per_token_s
        while True:
            message = await slot.hop.recv(timeout)
            if isinstance(message, StepResult) and message.position == 0:
                slot.hop.served(message, tokens)
                self._check_commitment(slot, 0, tokens, replay, message)
                return message.hidden
            if isinstance(message, StepError):
                if message.code in REJECT_CODES:
                    raise HopRejected(slot.hop.node, message.code, message.detail)
                raise HopFailed(slot.hop.node, slot.hop.endpoint, f"replay refused: {message}")

    def _note_failure(self, failure: HopFailed, span: tuple[int, int]) -> None:
        self.failures += 1
        if self.failures > self.max_failovers:
            raise FailoverExhausted(f"gave up after {self.failures - 1} failovers; last: {failure}") from failure
        self.banned[failure.node.lower()] = self.clock() + self.ban_s
        log.warning("%s; rerouting layers [%d, %d)", failure, *span)

    def _spliced(self, index: int, replacement: Route) -> Route:
        hops = list(self.route.hops[:index]) + list(replacement.hops) + list(self.route.hops[index + 1:])
        return Route(tuple(hops), sum(h.price_wei_per_token for h in hops), sum(h.latency_ms for h in hops))

    def _banned_now(self) -> set[str]:
        return banned_now(self.banned, self.clock())

    def _check_price(self, route: Route) -> None:
        if self.max_price_wei_per_token is not None and route.price_wei_per_token > self.max_price_wei_per_token:
            raise RouteTooExpensive(route.price_wei_per_token, self.max_price_wei_per_token)

    # ------------------------------------------------------------------------------------------ opening

    def _new_hop(self, hop: Hop) -> HopSession:
        candidate = self.market.by_offer_id()[hop.offer_id]
        return HopSession(self.payer, candidate.offer.node, candidate.offer.endpoint, hop.offer_id, hop.start,
                          hop.end, hop.price_wei_per_token, candidate.credit_wei, self.max_length, self.dtype,
                          self.hidden_size, self.options, arrived=self.arrived)

    async def _open_and_fund(self, hops: Sequence[HopSession]) -> None:
        """Open every hop; reserve, in one transaction, what each node lacks (opening again those that refused
        for lack of reservation)."""
        outcomes = await asyncio.gather(*(hop.open() for hop in hops), return_exceptions=True)
        needs, refused = [], []
        for hop, outcome in zip(hops, outcomes, strict=True):
            if isinstance(outcome, HopRejected) and outcome.error == "insufficient_escrow" and \
                    isinstance(outcome.detail, dict):
                refused.append(hop)
                unpaid = int(outcome.detail.get("client_unpaid_wei", 0))
                minimum = int(outcome.detail.get("min_session_reserve_wei", 0))
                needs.append(Need(hop.node, unpaid, max(hop.max_cost_wei, minimum)))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                needs.append(Need(hop.node, hop.client_unpaid_wei, hop.max_cost_wei))
        await asyncio.to_thread(self.fund, needs)
        if refused:
            await asyncio.gather(*(hop.open() for hop in refused))

    @staticmethod
    async def _close(hops: Sequence[HopSession]) -> None:
        await asyncio.gather(*(hop.close() for hop in hops))


class _LinkBroken(HopFailed):
    """Hop `index` is alive but its predecessor's relay never reached it; it is fed by the client now."""

    def __init__(self, index: int) -> None:
        super().__init__("", "", "relay link broken")
        self.index = index

__all__ = ["TRANSPORTS", "FailoverEvent", "FailoverExhausted", "RouteSession", "RouteTooExpensive", "banned_now",
           "route_span"]
