"""Which K consecutive layers a joining node should serve: the window with the highest expected revenue.

Boundary: pure numbers over `p2pllm.pricing` offers (dimensionless prices and costs). Knows nothing about
loading weights, the registry or the node agent; the agent reads offers, calls `choose_layers`, and
loads the chosen range.

Anchor: Petals' block selection (`choose_best_blocks`) scans every window of the node's length and
takes the one with the least served throughput, lowest start on ties. Here the score is money: for
every window [s, s + K) the new node is added to the market with its cost, every existing offer keeps
its current price (short run: rivals have not re-priced yet), and the node's expected revenue is that
of its best-response price (`NodeDemand.best_response`). On a layer no offer serves the node is alone:
its share there is 1 (or its share against the outside option, if the rules have one), so revenue on
that layer is capped only by the price ceiling or the outside option. Ties (within `tie_tolerance`,
relative) go to the lowest start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from p2pllm.pricing import Market, MarketInputError, MarketOffer, NodeDemand, PricingRules, offer_prices


@dataclass(frozen=True)
class WindowRevenue:
    """One candidate window [start, end): best-response price, layer-averaged share and expected revenue."""

    start: int
    end: int
    price: float
    share: float
    expected_revenue: float
    uncovered_layers: int


@dataclass(frozen=True)
class LayerChoice:
    """The chosen window and every alternative (ordered by start) for display."""

    start: int
    end: int
    price: float
    expected_revenue: float
    alternatives: tuple[WindowRevenue, ...]


def window_revenues(
    offers: Sequence[MarketOffer], n_layers: int, n_served_layers: int, cost: float, rules: PricingRules
) -> tuple[WindowRevenue, ...]:
    """Expected revenue of a new node (cost `cost`) on every window [s, s + n_served_layers), by start."""
    _check_window(n_layers, n_served_layers)
    if not np.isfinite(cost) or cost < 0.0:
        raise MarketInputError("cost", cost, "must be finite and >= 0")
    market = Market.from_offers(offers, rules, n_layers)
    rivals = market.layer_log_partition(offer_prices(offers))
    uncovered = ~market.serves.any(axis=0)
    windows = []
    for start in range(n_layers - n_served_layers + 1):
        end = start + n_served_layers
        demand = NodeDemand(rivals[start:end], float(cost), rules)
        price = demand.best_response()
        share = float(demand.share(price))
        gaps = int(uncovered[start:end].sum())
        windows.append(WindowRevenue(start, end, price, share, price * share, gaps))
    return tuple(windows)


def choose_layers(
    offers: Sequence[MarketOffer],
    n_layers: int,
    n_served_layers: int,
    cost: float,
    rules: PricingRules,
    *,
    tie_tolerance: float = 1e-12,
) -> LayerChoice:
    """The highest-revenue window for a node serving `n_served_layers` layers; ties go to the lowest start."""
    if not 0.0 <= tie_tolerance < 1.0:
        raise MarketInputError("tie_tolerance", tie_tolerance, "must lie in [0, 1)")
    windows = window_revenues(offers, n_layers, n_served_layers, cost, rules)
    best = max(w.expected_revenue for w in windows)
    threshold = best - tie_tolerance * max(1.0, abs(best))
    chosen = next(w for w in windows if w.expected_revenue >= threshold)
    return LayerChoice(chosen.start, chosen.end, chosen.price, chosen.expected_revenue, windows)


def _check_window(n_layers: int, n_served_layers: int) -> None:
    for name, value in (("n_layers", n_layers), ("n_served_layers", n_served_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MarketInputError(name, value, "must be a positive integer")
    if n_served_layers > n_layers:
        raise MarketInputError("n_served_layers", n_served_layers, f"must be <= n_layers ({n_layers})")
