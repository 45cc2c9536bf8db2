"""A generation's trip through a route of hops, and the one place where retry and reroute live.

`RouteSession.step(hidden)` sends hidden states through every hop in order. Each hop keeps the inputs it was
sent. Hops are funded (`fund`: the client's allocation for each node topped up) once they are open and before
any of them is sent a token: the opened route, and each replacement span. When a hop fails (connection error,
timeout, 5xx, 503, lost session) its node is banned for a while, the span it served is routed again over the
remaining offers, the replacement hops are opened and funded, the span's stored inputs are replayed to rebuild
their caches (the replacements are paid for those tokens, which they process), and the step continues. Knows
nothing about tokens, sampling or the chain."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import torch

from client.hops import HopFailed, HopSession, Payer
from client.market import Market
from client.routing import Hop, Route, RouteOffer, find_route

log = logging.getLogger("p2pclient.session")


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


@dataclass
class RouteSession:
    """Runs steps through a route, rerouting failed spans; `banned` survives across sessions if shared."""

    market: Market
    route: Route
    payer: Payer
    http: httpx.Client
    max_length: int
    alpha: float
    max_price_wei_per_token: int | None = None
    banned: dict[str, float] = field(default_factory=dict)
    ban_s: float = 120.0
    max_failovers: int = 8
    fund: Callable[[Sequence[HopSession]], None] = lambda hops: None
    clock: Callable[[], float] = time.monotonic
    events: list[FailoverEvent] = field(default_factory=list)
    failures: int = 0
    slots: list[_Slot] = field(default_factory=list)
    retired: list[HopSession] = field(default_factory=list)

    def open(self) -> None:
        """Open a session on every hop; a node that fails to open is banned and the route recomputed."""
        self._check_price(self.route)
        while True:
            opened: list[_Slot] = []
            try:
                for hop in self.route.hops:
                    opened.append(_Slot(self._open_hop(hop)))
            except HopFailed as failure:
                for slot in opened:
                    slot.hop.close()
                self._note_failure(failure, (0, self.market.num_layers))
                self.route = find_route(self.market.route_offers(self._banned_now()), self.market.num_layers,
                                        self.alpha)
                self._check_price(self.route)
                continue
            self._fund_or_close(opened)
            self.slots = opened
            return

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states through every hop (rerouting around failures); the last hop's output."""
        index = 0
        while index < len(self.slots):
            slot = self.slots[index]
            try:
                output = slot.hop.forward(hidden)
            except HopFailed as failure:
                self._replace(index, failure)
                continue  # retry the same position with the replacement's first hop
            slot.inputs.append(hidden)
            hidden = output
            index += 1
        return hidden

    def close(self) -> None:
        for slot in self.slots:
            slot.hop.close()

    @property
    def hops(self) -> list[HopSession]:
        """Every hop used, including ones replaced after a failure."""
        return [*self.retired, *(slot.hop for slot in self.slots)]

    # ------------------------------------------------------------------ failover
    def _replace(self, index: int, failure: HopFailed) -> None:
        """Swap the failed hop at `index` for a fresh route over its span, replaying the span's inputs."""
        failed = self.slots[index]
        span = (failed.hop.start, failed.hop.end)
        history = torch.cat(failed.inputs, dim=1) if failed.inputs else None
        while True:
            self._note_failure(failure, span)
            replacement = route_span(self.market, span[0], span[1], self.alpha, self._banned_now())
            new_route = self._spliced(index, replacement)
            self._check_price(new_route)
            new_slots: list[_Slot] = []
            try:
                for hop in replacement.hops:
                    new_slots.append(_Slot(self._open_hop(hop)))
                self._fund_or_close(new_slots)
                replay = history
                for slot in new_slots:
                    if replay is not None:
                        slot.inputs.append(replay)
                        replay = slot.hop.forward(replay)
            except HopFailed as again:
                for slot in new_slots:
                    slot.hop.close()
                self.retired.extend(slot.hop for slot in new_slots)
                failure = again
                continue
            break
        self.retired.append(failed.hop)
        self.slots[index:index + 1] = new_slots
        self.route = new_route
        self.events.append(FailoverEvent(failed.hop.node, span, failure.reason, replacement.hops,
                                         0 if history is None else int(history.shape[1])))

    def _fund_or_close(self, slots: list[_Slot]) -> None:
        try:
            self.fund([slot.hop for slot in slots])
        except BaseException:
            for slot in slots:
                slot.hop.close()
            raise

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
        now = self.clock()
        return {node for node, until in self.banned.items() if until > now}

    def _check_price(self, route: Route) -> None:
        if self.max_price_wei_per_token is not None and route.price_wei_per_token > self.max_price_wei_per_token:
            raise RouteTooExpensive(route.price_wei_per_token, self.max_price_wei_per_token)

    def _open_hop(self, hop: Hop) -> HopSession:
        candidate = self.market.by_offer_id()[hop.offer_id]
        session = HopSession(self.http, self.payer, candidate.offer.node, candidate.offer.endpoint, hop.offer_id,
                             hop.start, hop.end, hop.price_wei_per_token, candidate.credit_wei, self.max_length)
        session.open()
        return session


__all__ = ["FailoverEvent", "FailoverExhausted", "RouteSession", "RouteTooExpensive", "route_span"]
