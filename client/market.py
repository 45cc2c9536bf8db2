"""The client's view of the market: the registry's live offers for a model, each probed over HTTP (`/info`, a
`p2pllm.wire.NodeInfo`, and a few `/health` round trips), kept as routable `Candidate`s or set aside as
`Excluded` with a reason. Knows nothing about routing math, sessions or generation."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from client.routing import RouteOffer
from p2pllm.chain import Offer
from p2pllm.net import http_client
from p2pllm.wire import NodeInfo, WireError


@dataclass(frozen=True)
class Candidate:
    """A live, reachable offer whose node reports what the registry says."""

    offer: Offer
    info: NodeInfo
    rtt_ms: float

    @property
    def compute_ms_per_layer(self) -> float:
        return self.info.compute_ms_per_layer

    @property
    def route_offer(self) -> RouteOffer:
        return RouteOffer(self.offer.offer_id, self.offer.node, self.offer.start, self.offer.end,
                          self.offer.price_wei_per_token, self.rtt_ms, self.compute_ms_per_layer)

    @property
    def credit_wei(self) -> int:
        return self.info.credit_wei


@dataclass(frozen=True)
class Excluded:
    offer: Offer
    reason: str


@dataclass
class Market:
    model_id: bytes
    num_layers: int
    candidates: list[Candidate] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)

    def by_offer_id(self) -> dict[int, Candidate]:
        return {c.offer.offer_id: c for c in self.candidates}

    def route_offers(self, banned_nodes: Iterable[str] = ()) -> list[RouteOffer]:
        banned = {n.lower() for n in banned_nodes}
        return [c.route_offer for c in self.candidates if c.offer.node.lower() not in banned]


def probe(offer: Offer, model_id: bytes, chain_id: int, escrow: str, dtype: str, pings: int = 5,
          timeout_s: float = 3.0, ca_file: Path | None = None) -> Candidate | Excluded:
    """Ask the node who it is and time a few round trips (the fastest is the path's latency: whatever else the
    hosts were doing only adds to it); exclude it with a reason if anything is off."""
    try:
        with http_client(timeout_s, ca_file) as http:
            response = http.get(f"{offer.endpoint}/info")
            response.raise_for_status()
            info = NodeInfo.from_json(response.json())
            rtts = []
            for _ in range(pings):
                started = time.perf_counter()
                http.get(f"{offer.endpoint}/health").raise_for_status()
                rtts.append(1000 * (time.perf_counter() - started))
    except WireError as exc:
        return Excluded(offer, f"unreadable /info: {exc}")
    except (httpx.HTTPError, ValueError) as exc:
        return Excluded(offer, f"unreachable: {type(exc).__name__}")
    checks = [
        (info.model_id == model_id, "serves a different model id"),
        ((info.layer_start, info.layer_end) == (offer.start, offer.end),
         f"reports layers [{info.layer_start}, {info.layer_end}), registry says [{offer.start}, {offer.end})"),
        (info.node.lower() == offer.node.lower(), "answers as a different node address"),
        (info.chain_id == chain_id and info.escrow.lower() == escrow.lower(),
         "is paid through another chain or escrow"),
        (info.dtype == dtype, f"runs {info.dtype}, client runs {dtype}"),
        (info.price_wei_per_token == offer.price_wei_per_token, "charges a different price"),
    ]
    for ok, reason in checks:
        if not ok:
            return Excluded(offer, reason)
    return Candidate(offer, info, min(rtts))


def discover(offers: Sequence[Offer], model_id: bytes, num_layers: int, chain_id: int, escrow: str, dtype: str,
             now: int, ca_file: Path | None = None) -> Market:
    """Probe every offer (in parallel) and sort them into candidates and exclusions."""
    market = Market(model_id, num_layers)
    live = []
    for offer in offers:
        if offer.model_id != model_id:
            market.excluded.append(Excluded(offer, "different model id"))
        elif offer.expires_at < now:
            market.excluded.append(Excluded(offer, "expired"))
        elif offer.end > num_layers:
            market.excluded.append(Excluded(offer, f"range beyond the model's {num_layers} layers"))
        else:
            live.append(offer)
    if live:
        with ThreadPoolExecutor(max_workers=min(16, len(live))) as pool:
            results = list(pool.map(lambda o: probe(o, model_id, chain_id, escrow, dtype, ca_file=ca_file), live))
        for result in results:
            (market.candidates if isinstance(result, Candidate) else market.excluded).append(result)
    return market
