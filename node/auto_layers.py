"""`p2pnode register --layers auto`: pick the K consecutive layers to serve from the live registry.

Boundary: glue. Reads the model's live offers (through `p2pllm.chain.Chain.live_offers`) and the model's
layer count (`p2pllm.models.resolve_model`), converts them to the dimensionless market with the pricing
agent's `MarketModel` (same units, same competitor-cost assumption: a competitor's `/info` compute per
layer, else this node's), and lets `p2pllm.layer_choice.choose_layers` score every window: the new node's
expected revenue at its best-response price with every rival's price fixed. Layers no offer serves are
unserved demand, where the new node is alone (share 1), so a window over a gap scores high. Prints the
choice and the table of alternatives to stderr (stdout stays free for `--json`) and returns the range.
Knows nothing about loading weights or serving.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

from node.pricing_agent import CompetitorCosts, MarketModel, OfferView
from p2pllm.chain import Offer
from p2pllm.layer_choice import LayerChoice, choose_layers
from p2pllm.models import resolve_model
from p2pllm.pricing import Market, MarketOffer, offer_prices

log = logging.getLogger("p2pnode.layers")


class OfferSource(Protocol):
    def live_offers(self, model_id: bytes) -> list[Offer]: ...


def choose_layers_from_registry(
    chain: OfferSource,
    model_name: str,
    model_hash: bytes,
    num_layers: int | None,
    price_wei: int,
    compute_ms_per_layer: float,
    *,
    model: MarketModel | None = None,
    costs: CompetitorCosts | None = None,
    out: TextIO | None = None,
) -> tuple[int, int]:
    """The half-open range [start, start + num_layers) with the highest expected revenue for a new node.

    `price_wei` is the price the offer will be registered at: the table shows the expected revenue at it
    beside the best-response one. Raises ValueError for a missing or out-of-range `num_layers`.
    """
    if num_layers is None:
        raise ValueError("--layers auto needs --num-layers K (how many layers this node will serve)")
    n_layers = resolve_model(model_name).num_layers
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= n_layers:
        raise ValueError(f"--num-layers {num_layers}: must be between 1 and the model's {n_layers} layers")
    if not compute_ms_per_layer >= 0:
        raise ValueError(f"--compute-ms-per-layer {compute_ms_per_layer}: must be >= 0")
    if price_wei < 0:
        raise ValueError(f"price {price_wei} wei: must be >= 0")
    model = model or MarketModel()
    costs = costs or CompetitorCosts()
    views = []
    for offer in chain.live_offers(model_hash):
        if offer.end > n_layers:
            log.warning("ignoring offer %d: layers [%d, %d) beyond the model's %d", offer.offer_id, offer.start,
                        offer.end, n_layers)
            continue
        views.append(costs.view(offer, compute_ms_per_layer))
    market_offers = [model.market_offer(v) for v in views]
    cost = model.cost(compute_ms_per_layer, num_layers)
    choice = choose_layers(market_offers, n_layers, num_layers, cost, model.rules())
    at_price = _shares_at_price(market_offers, n_layers, num_layers, model.price(price_wei), cost, model)
    _print_choice(choice, views, at_price, price_wei, model, out or sys.stderr)
    return choice.start, choice.end


def _shares_at_price(
    offers: Sequence[MarketOffer], n_layers: int, width: int, price: float, cost: float, model: MarketModel
) -> list[float]:
    """The new node's layer-averaged share in every window when it charges `price` (rivals' prices fixed)."""
    shares = []
    for start in range(n_layers - width + 1):
        candidate = [*offers, MarketOffer(start, start + width, price, cost)]
        market = Market.from_offers(candidate, model.rules(), n_layers)
        shares.append(float(market.shares(offer_prices(candidate))[-1]))
    return shares


def _print_choice(
    choice: LayerChoice, views: Sequence[OfferView], at_price: Sequence[float], price_wei: int,
    model: MarketModel, out: TextIO,
) -> None:
    assumed = sum(v.cost_source == "assumed" for v in views)
    print(f"auto layers: {len(views)} live offer(s) ({assumed} with assumed compute cost); alpha {model.alpha:g}, "
          f"T {model.temperature:g}, 1 price unit = {model.reference_price_wei_per_token} wei/token, "
          f"1 latency unit = {model.reference_latency_ms:g} ms", file=out)
    ref = model.reference_price_wei_per_token
    rows: list[list[Any]] = []
    for window, share in zip(choice.alternatives, at_price, strict=True):
        mark = "*" if (window.start, window.end) == (choice.start, choice.end) else ""
        rows.append([f"{mark}{window.start}-{window.end}", window.uncovered_layers, model.wei(window.price),
                     f"{window.share:.3f}", f"{window.expected_revenue * ref:.4g}",
                     f"{share:.3f}", f"{price_wei * share:.4g}"])
    headers = ["layers", "unserved", "best price wei", "share", "revenue wei/req", "share@yours",
               "revenue@yours"]
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)
    print(f"auto layers: chose [{choice.start}, {choice.end}) — expected revenue "
          f"{choice.expected_revenue * ref:.4g} wei/request at its best-response price "
          f"{model.wei(choice.price)} wei/token (your price {price_wei} wei/token)", file=out)

