"""The node's pricing agent (paper §3.3, DESIGN §1): read the competitors from the registry, compute this
node's revenue-maximizing price and move the on-chain price toward it, sparingly (every update costs gas).

Boundary. The market math is `p2pllm.pricing` (pure, dimensionless); this module only converts wei and ms
into those units, decides, and talks to the registry through a two-method view of `p2pllm.chain.Chain`
(`live_offers`, `update_price`). It knows nothing about shards, sessions or receipts: after an on-chain
change it hands the new price to `terms_setter`, and the HTTP node charges it from then on.

Decision (`decide`, pure, unit-tested without a chain), once per `interval_s`:
1. Market. This node plus every live offer for the model that serves at least one of its layers (the
   competitor rule of `p2pllm.pricing.competitors`; offers that do not overlap cannot change this node's
   demand and are left out). Other offers of the same operator count as competitors (no portfolio pricing).
2. Target = the exact best response (`NodeDemand.best_response`: the global revenue maximizer on
   [floor, ceiling] with every rival's price fixed), not one gradient step of Eq. 5. The gradient rule
   moves a node by about η·α·S/T of the way per step, so a node with a small share needs dozens of
   on-chain updates to get where one best response goes at once; each update is a transaction. The jump
   is bounded, though: one update changes the price by at most a factor `max_change_ratio` (default 2),
   so a glitch in the registry (a rival briefly at 0) cannot crash the price in one step, and the
   price is always kept within [price_floor_wei, price_ceiling_wei].
3. Gate. Update only when |target − current|/current > `threshold` (or the current price lies outside
   the bounds), and not within `min_gap_s` of this agent's previous update. Skips that hold back a wanted
   change (rate limit) are logged at INFO, threshold holds at DEBUG.
4. Alone. With no competitor (and no outside option) the share is 1 at every price, revenue grows
   without bound and the "best response" would be the ceiling; the agent then holds its price (only
   pulling it into the bounds) rather than jumping to the ceiling whenever rivals' offers lapse.

Units (a network-wide convention; see `MarketModel`). The weight w = α·p + (1−α)·c of Eq. 1 needs a price
unit and a latency unit that every node and client agree on:
  p = price_wei_per_token / reference_price_wei_per_token   (default 10**12 wei = 1 µETH per token)
  c = compute_ms_per_layer · (end − start) / reference_latency_ms   (default 1 ms: the paper's c_i in ms)
The references are fixed numbers, not read from the market. A reference derived from prices (e.g. the
median competitor price) makes every client's choice invariant to scaling all prices, so revenue p·S
grows with the common scale and no finite equilibrium exists: the agents would ratchet each other up to
the ceiling. A node-specific latency reference (e.g. own compute) would give two nodes two different
markets. c is the compute time of the whole range per token, because the price is per token through the
whole range.

Competitors' cost. Offers carry no cost on-chain. A competitor's compute_ms_per_layer is read from its
`/info` endpoint (what `p2pnode serve` advertises; self-reported, not measured by us) with a short
timeout and cached for `info_ttl_s`; when that fails the agent assumes the competitor is as fast as this
node (cost = own compute per layer × its range length). Round-trip times are not modeled (the agent cannot
know each client's RTT).

Load. `p2pnode serve` gives the agent its advertised compute time as a function: while several sessions share
the node, that is its recent decode rounds' time per layer (a batched step takes longer than a lone one), and
competitors' `/info` reports theirs the same way; a busy node therefore prices as the slower node it is for
the next client, and an idle one as its measured speed.

Ordering with the HTTP terms. A price cut is applied to the node's terms first and then on-chain (restored
if the transaction fails); a raise goes on-chain first and then to the terms. Either way the node never
charges more than the registry advertises.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from p2pllm.chain import Offer
from p2pllm.pricing import (
    Market,
    MarketOffer,
    PricingRules,
    competitors,
    cost_from_ms,
    offer_prices,
    price_from_wei,
    price_to_wei,
)
from p2pllm.wire import NodeInfo

log = logging.getLogger("p2pnode.pricing")

DEFAULT_ALPHA = 0.5
DEFAULT_REFERENCE_PRICE_WEI_PER_TOKEN = 10**12
DEFAULT_REFERENCE_LATENCY_MS = 1.0
DEFAULT_CEILING_IN_REFERENCE_PRICES = 100


class RegistryView(Protocol):
    """The part of `p2pllm.chain.Chain` the agent uses."""

    def live_offers(self, model_id: bytes) -> list[Offer]: ...

    def update_price(self, offer_id: int, price_wei_per_token: int) -> Any: ...


# --------------------------------------------------------------------------------------------------
# the market model: units, client behaviour, bounds


@dataclass(frozen=True)
class MarketModel:
    """How the agent models clients (α, T, optional outside option) and the units of Eq. 1, in wei and ms.

    `price_ceiling_wei=None` means `DEFAULT_CEILING_IN_REFERENCE_PRICES` reference prices.
    """

    alpha: float = DEFAULT_ALPHA
    temperature: float = 1.0
    reference_price_wei_per_token: int = DEFAULT_REFERENCE_PRICE_WEI_PER_TOKEN
    reference_latency_ms: float = DEFAULT_REFERENCE_LATENCY_MS
    price_floor_wei: int = 0
    price_ceiling_wei: int | None = None
    outside_weight: float | None = None

    def __post_init__(self) -> None:
        if self.reference_price_wei_per_token <= 0:
            raise ValueError(f"reference_price_wei_per_token={self.reference_price_wei_per_token}: must be > 0")
        if not (math.isfinite(self.reference_latency_ms) and self.reference_latency_ms > 0):
            raise ValueError(f"reference_latency_ms={self.reference_latency_ms}: must be > 0")
        if self.price_floor_wei < 0:
            raise ValueError(f"price_floor_wei={self.price_floor_wei}: must be >= 0")
        if self.ceiling_wei < self.price_floor_wei:
            raise ValueError(f"price ceiling {self.ceiling_wei} wei is below the floor {self.price_floor_wei} wei")
        self.rules()  # validates alpha, temperature and outside_weight

    @property
    def ceiling_wei(self) -> int:
        if self.price_ceiling_wei is not None:
            return self.price_ceiling_wei
        return DEFAULT_CEILING_IN_REFERENCE_PRICES * self.reference_price_wei_per_token

    def rules(self) -> PricingRules:
        """The dimensionless `PricingRules` (bounds converted with the reference price)."""
        ref = self.reference_price_wei_per_token
        return PricingRules(alpha=self.alpha, temperature=self.temperature, outside_weight=self.outside_weight,
                            price_floor=self.price_floor_wei / ref, price_ceiling=self.ceiling_wei / ref)

    def price(self, price_wei_per_token: int) -> float:
        return price_from_wei(price_wei_per_token, self.reference_price_wei_per_token)

    def wei(self, price: float) -> int:
        return price_to_wei(price, self.reference_price_wei_per_token)

    def cost(self, compute_ms_per_layer: float, n_layers: int) -> float:
        """c of Eq. 1 for a range of `n_layers` layers: its compute per token in reference latencies."""
        return cost_from_ms(compute_ms_per_layer * n_layers, self.reference_latency_ms)

    def market_offer(self, view: OfferView) -> MarketOffer:
        return MarketOffer(view.start, view.end, self.price(view.price_wei_per_token),
                           self.cost(view.compute_ms_per_layer, view.end - view.start))


@dataclass(frozen=True)
class AutoPriceSettings:
    """`p2pnode serve --auto-price`: loop timing, update gate and the market model (see the module doc)."""

    interval_s: float
    threshold: float
    min_gap_s: float
    alpha: float = DEFAULT_ALPHA
    temperature: float = 1.0
    price_floor_wei: int = 0
    price_ceiling_wei: int | None = None
    reference_price_wei_per_token: int = DEFAULT_REFERENCE_PRICE_WEI_PER_TOKEN
    reference_latency_ms: float = DEFAULT_REFERENCE_LATENCY_MS
    outside_weight: float | None = None
    max_change_ratio: float = 2.0
    info_timeout_s: float = 1.0
    info_ttl_s: float = 300.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ValueError(f"auto-price interval {self.interval_s} s: must be > 0")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"auto-price threshold {self.threshold}: must be >= 0")
        if not (math.isfinite(self.min_gap_s) and self.min_gap_s >= 0):
            raise ValueError(f"auto-price min gap {self.min_gap_s} s: must be >= 0")
        if not self.max_change_ratio > 1.0:
            raise ValueError(f"max_change_ratio={self.max_change_ratio}: must be > 1")
        if not (self.info_timeout_s > 0 and self.info_ttl_s >= 0):
            raise ValueError("info_timeout_s must be > 0 and info_ttl_s >= 0")
        self.model()  # validates the market model

    def model(self) -> MarketModel:
        return MarketModel(alpha=self.alpha, temperature=self.temperature,
                           reference_price_wei_per_token=self.reference_price_wei_per_token,
                           reference_latency_ms=self.reference_latency_ms, price_floor_wei=self.price_floor_wei,
                           price_ceiling_wei=self.price_ceiling_wei, outside_weight=self.outside_weight)


# --------------------------------------------------------------------------------------------------
# the pure decision


@dataclass(frozen=True)
class OfferView:
    """One offer as the agent sees it: range, on-chain price and (advertised or assumed) compute per layer."""

    offer_id: int
    start: int
    end: int
    price_wei_per_token: int
    compute_ms_per_layer: float
    cost_source: str = "own"  # "own", "advertised" (from /info) or "assumed" (= own compute per layer)


@dataclass(frozen=True)
class PriceDecision:
    """What one pricing step decided and why. `new_price_wei` is None when the price stays.

    `action` is one of "update", "hold_threshold", "hold_rate_limit", "hold_alone", "hold_at_target".
    Shares are layer-averaged choice probabilities; revenues are expected wei per client request.
    """

    new_price_wei: int | None
    action: str
    reason: str
    current_price_wei: int
    target_price_wei: int
    best_response_wei: int | None
    relative_change: float
    competitors: tuple[OfferView, ...]
    share: float
    target_share: float
    expected_revenue_wei: float
    target_revenue_wei: float

    @property
    def changed(self) -> bool:
        return self.new_price_wei is not None


def decide(
    own: OfferView,
    offers: Sequence[OfferView],
    settings: AutoPriceSettings,
    now_s: float,
    last_update_s: float | None,
) -> PriceDecision:
    """One pricing step for `own` against the live `offers` (own may be among them; it is skipped by id).

    `now_s` and `last_update_s` (time of this agent's previous on-chain update, None if none) are on
    one monotonic clock.
    """
    model = settings.model()
    rules = model.rules()
    current = own.price_wei_per_token
    floor, ceiling = model.price_floor_wei, model.ceiling_wei

    market_offers = [model.market_offer(own)]
    others = [o for o in offers if o.offer_id != own.offer_id]
    market_offers += [model.market_offer(o) for o in others]
    rival_index = competitors(market_offers, 0)
    rivals = tuple(others[j - 1] for j in rival_index)
    kept = [market_offers[0], *(market_offers[j] for j in rival_index)]
    market = Market.from_offers(kept, rules)
    prices = offer_prices(kept)
    demand = market.demand(0, prices)

    def share_at(price_wei: int) -> float:
        return float(demand.share(model.price(price_wei)))

    share_now = share_at(current)
    alone = not rivals and rules.outside_weight is None
    if alone:
        best_wei: int | None = None
        target = min(max(current, floor), ceiling)
        why = f"no competitor serves layers [{own.start}, {own.end})"
    else:
        best_wei = model.wei(demand.best_response())
        target = min(max(_step_limited(current, best_wei, settings.max_change_ratio), floor), ceiling)
        why = f"best response {best_wei} wei"
        if best_wei in (floor, ceiling):
            why += " (at the " + ("ceiling)" if best_wei == ceiling else "floor)")
        if target != best_wei:
            why += f" (step-limited to ×{settings.max_change_ratio:g})"
    target_share = share_at(target)
    change = _relative_change(current, target)
    out_of_bounds = not floor <= current <= ceiling

    def result(action: str, reason: str, new_price: int | None) -> PriceDecision:
        return PriceDecision(
            new_price_wei=new_price, action=action, reason=reason, current_price_wei=current,
            target_price_wei=target, best_response_wei=best_wei, relative_change=change, competitors=rivals,
            share=share_now, target_share=target_share, expected_revenue_wei=current * share_now,
            target_revenue_wei=target * target_share,
        )

    market_text = _market_text(rivals, share_now, target_share, current, target)
    if target == current:
        action = "hold_alone" if alone else "hold_at_target"
        return result(action, f"hold {current} wei: {why}; {market_text}", None)
    if abs(change) <= settings.threshold and not out_of_bounds:
        return result("hold_threshold", f"hold {current} wei: target {target} wei is within the "
                      f"{settings.threshold:.1%} threshold ({change:+.2%}); {why}; {market_text}", None)
    if last_update_s is not None and now_s - last_update_s < settings.min_gap_s:
        wait = settings.min_gap_s - (now_s - last_update_s)
        return result("hold_rate_limit", f"hold {current} wei: want {target} wei ({_signed(current, target)}) but "
                      f"the last update was {now_s - last_update_s:.1f} s ago (min gap {settings.min_gap_s:g} s, "
                      f"{wait:.1f} s to go); {why}; {market_text}", None)
    bound_note = " (back into the price bounds)" if out_of_bounds else ""
    return result("update", f"update {current} -> {target} wei/token ({_signed(current, target)}){bound_note}: "
                  f"{why}; {market_text}", target)


def _step_limited(current: int, target: int, ratio: float) -> int:
    if current == 0:
        return target
    low, high = math.ceil(current / ratio), math.floor(current * ratio)
    return min(max(target, low), high)


def _relative_change(current: int, target: int) -> float:
    if current == 0:
        return 0.0 if target == 0 else math.inf
    return (target - current) / current


def _signed(current: int, target: int) -> str:
    change = _relative_change(current, target)
    return "from 0" if math.isinf(change) else f"{change:+.1%}"


def _market_text(rivals: Sequence[OfferView], share: float, target_share: float, current: int, target: int) -> str:
    listed = ", ".join(f"#{o.offer_id} [{o.start},{o.end}) {o.price_wei_per_token} wei "
                       f"{o.compute_ms_per_layer:.3g} ms/layer ({o.cost_source})" for o in rivals)
    return (f"{len(rivals)} competitor(s){': ' + listed if listed else ''}; share {share:.3f} -> {target_share:.3f}; "
            f"expected revenue {current * share:.4g} -> {target * target_share:.4g} wei/request")


# --------------------------------------------------------------------------------------------------
# competitors' compute cost


@dataclass
class CompetitorCosts:
    """Competitors' compute_ms_per_layer from their `/info`, cached per endpoint; own cost when unknown."""

    timeout_s: float = 1.0
    ttl_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    fetch: Callable[[str, float], Any] | None = None  # (url, timeout) -> parsed JSON; default httpx GET
    _cache: dict[str, tuple[float, float]] = field(default_factory=dict)

    def view(self, offer: Offer, own_compute_ms_per_layer: float) -> OfferView:
        """`offer` with its advertised compute per layer, or `own_compute_ms_per_layer` ("assumed")."""
        advertised = self.advertised_ms(offer.endpoint)
        ms, source = (advertised, "advertised") if advertised is not None else (own_compute_ms_per_layer, "assumed")
        return OfferView(offer.offer_id, offer.start, offer.end, offer.price_wei_per_token, ms, source)

    def advertised_ms(self, endpoint: str) -> float | None:
        now = self.clock()
        cached = self._cache.get(endpoint)
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        try:
            info = NodeInfo.from_json((self.fetch or _get_json)(endpoint.rstrip("/") + "/info", self.timeout_s))
            value = info.compute_ms_per_layer
        except (httpx.HTTPError, ValueError) as exc:  # WireError is a ValueError
            log.debug("no compute_ms_per_layer from %s (%s): assuming own cost", endpoint, type(exc).__name__)
            return None
        if not (math.isfinite(value) and value >= 0):
            return None
        self._cache[endpoint] = (value, now)
        return value


def _get_json(url: str, timeout_s: float) -> Any:
    response = httpx.get(url, timeout=timeout_s)
    response.raise_for_status()
    return response.json()


# --------------------------------------------------------------------------------------------------
# the loop


class PricingAgent:
    """Reads the registry, decides and updates one offer's price; `step()` is one interval's work."""

    def __init__(
        self,
        chain: RegistryView,
        offer: Offer,
        model_hash: bytes,
        terms_setter: Callable[[int], None],
        settings: AutoPriceSettings,
        compute_ms_per_layer: float | Callable[[], float],
        *,
        costs: CompetitorCosts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chain = chain
        self.offer_id = offer.offer_id
        self.model_hash = model_hash
        self.terms_setter = terms_setter
        self.settings = settings
        self.compute_ms_per_layer = compute_ms_per_layer
        self.costs = costs or CompetitorCosts(settings.info_timeout_s, settings.info_ttl_s, clock)
        self.clock = clock
        self.charged_wei = offer.price_wei_per_token  # what the HTTP node charges (last value given to terms)
        self.last_update_s: float | None = None
        self.updates = 0
        self._last_logged: str | None = None

    def step(self) -> PriceDecision | None:
        """One pricing step; None when this node's offer is not live."""
        live = self.chain.live_offers(self.model_hash)
        mine = next((o for o in live if o.offer_id == self.offer_id), None)
        if mine is None:
            log.warning("offer %d is not live (expired or removed): not pricing", self.offer_id)
            return None
        if mine.price_wei_per_token != self.charged_wei:  # changed by someone else (e.g. `p2pnode set-price`)
            log.info("offer %d: on-chain price is %d wei, not %d: charging it", self.offer_id,
                     mine.price_wei_per_token, self.charged_wei)
            self._set_terms(mine.price_wei_per_token)
        # A callable is the node's current advertised compute time, which grows with its load (batching): the
        # agent then prices the latency clients will actually see from it.
        own_ms = self.compute_ms_per_layer() if callable(self.compute_ms_per_layer) else self.compute_ms_per_layer
        own = OfferView(mine.offer_id, mine.start, mine.end, mine.price_wei_per_token, own_ms)
        others = [self.costs.view(o, own_ms) for o in live if o.offer_id != self.offer_id]
        now = self.clock()
        decision = decide(own, others, self.settings, now, self.last_update_s)
        if decision.new_price_wei is not None:
            self._apply(decision.current_price_wei, decision.new_price_wei)
            self.last_update_s = now
            self.updates += 1
        self._log(decision)
        return decision

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.interval_s):
            try:
                self.step()
            except Exception as exc:  # a failed step (RPC down, tx reverted) must not stop pricing: retried next time
                log.warning("pricing step failed (will retry): %s", exc)

    def _apply(self, old_wei: int, new_wei: int) -> None:
        if new_wei < old_wei:  # cut: charge less first, so the node never asks more than the registry says
            self._set_terms(new_wei)
            try:
                self.chain.update_price(self.offer_id, new_wei)
            except Exception:
                self._set_terms(old_wei)
                raise
        else:
            self.chain.update_price(self.offer_id, new_wei)
            self._set_terms(new_wei)

    def _set_terms(self, price_wei: int) -> None:
        self.terms_setter(price_wei)
        self.charged_wei = price_wei

    def _log(self, decision: PriceDecision) -> None:
        # updates always; a held-back change or being alone once per streak; threshold holds only in debug
        news = decision.action in ("hold_rate_limit", "hold_alone") and decision.action != self._last_logged
        level = logging.INFO if decision.changed or news else logging.DEBUG
        log.log(level, "offer %d: %s", self.offer_id, decision.reason)
        self._last_logged = decision.action


def start_pricing_agent(
    stop: threading.Event,
    chain: RegistryView,
    offer: Offer,
    model_hash: bytes,
    terms_setter: Callable[[int], None],
    settings: AutoPriceSettings,
    compute_ms_per_layer: float | Callable[[], float],
) -> threading.Thread:
    """Run a `PricingAgent` for `offer` in a daemon thread, one step every `settings.interval_s`, until `stop`."""
    agent = PricingAgent(chain, offer, model_hash, terms_setter, settings, compute_ms_per_layer)
    log.info("auto-price on for offer %d: every %g s, threshold %.1f%%, min gap %g s, alpha %g, T %g, "
             "1 price unit = %d wei/token, 1 latency unit = %g ms", offer.offer_id, settings.interval_s,
             100 * settings.threshold, settings.min_gap_s, settings.alpha, settings.temperature,
             settings.reference_price_wei_per_token, settings.reference_latency_ms)
    thread = threading.Thread(target=agent.run, args=(stop,), name="pricing agent", daemon=True)
    thread.start()
    return thread
