"""The gateway page's view of the network as one JSON-ready dict, with no I/O: the offers (live or why not),
how many live offers cover each layer, the price/latency frontier with the route α picks, the gateway's
spending and each node's earnings as read from the chain by the caller."""

from __future__ import annotations

from typing import Any

from client.frontier import alpha_optimal, pareto_frontier
from client.market import Market


def network_view(market: Market, alpha: float, excluded: set[str], earnings_wei: dict[str, int],
                 spending: dict[str, Any], verification: dict[str, int]) -> dict[str, Any]:
    live = [c for c in market.candidates if c.offer.node.lower() not in excluded]
    offers = [{"offer_id": c.offer.offer_id, "node": c.offer.node, "endpoint": c.offer.endpoint,
               "layers": [c.offer.start, c.offer.end], "price_wei_per_token": str(c.offer.price_wei_per_token),
               "status": "ok" if c in live else "excluded (verdict or ban)", "rtt_ms": round(c.rtt_ms, 2),
               "compute_ms_per_layer": round(c.compute_ms_per_layer, 3)} for c in market.candidates]
    offers += [{"offer_id": e.offer.offer_id, "node": e.offer.node, "endpoint": e.offer.endpoint,
                "layers": [e.offer.start, e.offer.end], "price_wei_per_token": str(e.offer.price_wei_per_token),
                "status": e.reason, "rtt_ms": None, "compute_ms_per_layer": None} for e in market.excluded]
    coverage = [sum(1 for c in live if c.offer.start <= layer < c.offer.end) for layer in range(market.num_layers)]
    frontier_json: list[dict[str, Any]] = []
    chosen = None
    if live and all(coverage):
        frontier = pareto_frontier(market.route_offers(excluded), market.num_layers)
        best = alpha_optimal(frontier, alpha)
        for index, route in enumerate(frontier):
            frontier_json.append({"price_wei_per_token": str(route.price_wei_per_token),
                                  "latency_ms": round(route.latency_ms, 3),
                                  "hops": [{"node": h.node, "layers": [h.start, h.end]} for h in route.hops]})
            if route == best:
                chosen = index
    return {"num_layers": market.num_layers, "alpha": alpha, "offers": offers, "coverage": coverage,
            "frontier": frontier_json, "chosen": chosen, "spending": spending,
            "earnings_wei": {node: str(wei) for node, wei in sorted(earnings_wei.items())},
            "verification": verification}
