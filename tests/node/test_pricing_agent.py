"""The pricing agent without a chain: `decide` (target, threshold, rate limit, bounds, competitor set, reasons),
the loop step against an in-memory registry (ordering with the node's terms, resync, failures), and the
competitor-cost lookup. Expected prices come from closed forms (the first-order condition of Eq. 2), not
from the agent's own code path."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest

from node.pricing_agent import (
    AutoPriceSettings,
    CompetitorCosts,
    OfferView,
    PricingAgent,
    decide,
)
from p2pllm.chain import Offer
from p2pllm.equilibrium import solve_equilibrium
from p2pllm.pricing import Market, MarketOffer, PricingRules
from tests.node.helpers import node_info_json as info_json

REF = 10**12  # the default reference price: 1 price unit = 10**12 wei/token
MODEL = b"\x11" * 32


def settings(**overrides: float) -> AutoPriceSettings:
    base = {"interval_s": 1.0, "threshold": 0.02, "min_gap_s": 10.0, "alpha": 0.5}
    return AutoPriceSettings(**{**base, **overrides})


def view(offer_id: int, price_wei: int, start: int = 0, end: int = 8, ms: float = 0.125) -> OfferView:
    return OfferView(offer_id, start, end, price_wei, ms)


def foc_gap(price_wei: int, rival_wei: int, alpha: float = 0.5) -> float:
    """|p − 1/(α(1 − P))| for two nodes of equal cost on the same layers (T = 1), P the logit share."""
    p, q = price_wei / REF, rival_wei / REF
    share = 1.0 / (1.0 + math.exp(alpha * (p - q)))
    return abs(p - 1.0 / (alpha * (1.0 - share)))


# ------------------------------------------------------------------------------------------------ decide


def test_target_is_the_best_response_and_raises_revenue() -> None:
    own, rival = view(1, 3 * REF), view(2, 3 * REF)
    decision = decide(own, [own, rival], settings(), now_s=0.0, last_update_s=None)
    assert decision.action == "update"
    assert decision.new_price_wei == decision.target_price_wei == decision.best_response_wei
    assert foc_gap(decision.new_price_wei, rival.price_wei_per_token) < 1e-6  # the first-order condition holds
    assert decision.target_revenue_wei > decision.expected_revenue_wei
    assert [c.offer_id for c in decision.competitors] == [2]  # own offer skipped by id


def test_step_is_bounded_by_max_change_ratio_both_ways() -> None:
    rival = view(2, 3 * REF)
    up = decide(view(1, REF // 10), [rival], settings(), 0.0, None)
    assert up.new_price_wei == 2 * (REF // 10) and "step-limited" in up.reason
    down = decide(view(1, 50 * REF), [rival], settings(), 0.0, None)
    assert down.new_price_wei == 25 * REF
    loose = decide(view(1, REF // 10), [rival], settings(max_change_ratio=1000.0), 0.0, None)
    assert loose.new_price_wei == loose.best_response_wei


def test_threshold_holds_small_moves_and_lets_large_ones_through() -> None:
    rival = view(2, 3 * REF)
    best = decide(view(1, 3 * REF), [rival], settings(), 0.0, None).best_response_wei
    assert best is not None
    near = decide(view(1, round(best * 1.01)), [rival], settings(threshold=0.02), 0.0, None)
    assert near.action == "hold_threshold" and near.new_price_wei is None
    assert "within the 2.0% threshold" in near.reason
    far = decide(view(1, round(best * 1.05)), [rival], settings(threshold=0.02), 0.0, None)
    assert far.action == "update" and far.new_price_wei is not None
    assert far.relative_change < -0.02  # moves down, toward the best response


def test_rate_limit_waits_min_gap_after_the_previous_update() -> None:
    own, rival = view(1, REF), view(2, 3 * REF)
    held = decide(own, [rival], settings(min_gap_s=10.0), now_s=104.0, last_update_s=100.0)
    assert held.action == "hold_rate_limit" and held.new_price_wei is None
    assert "min gap 10 s" in held.reason and "6.0 s to go" in held.reason
    allowed = decide(own, [rival], settings(min_gap_s=10.0), now_s=110.0, last_update_s=100.0)
    assert allowed.new_price_wei == held.target_price_wei


def test_floor_and_ceiling_bound_the_target() -> None:
    rival = view(2, 3 * REF)
    unbounded = decide(view(1, 3 * REF), [rival], settings(), 0.0, None).best_response_wei
    assert unbounded is not None and unbounded > 3 * REF + REF // 2
    capped = decide(view(1, 3 * REF), [rival], settings(price_ceiling_wei=3 * REF + REF // 2), 0.0, None)
    assert capped.new_price_wei == capped.best_response_wei == 3 * REF + REF // 2
    assert "(at the ceiling)" in capped.reason
    floored = decide(view(1, 6 * REF), [rival], settings(price_floor_wei=5 * REF), 0.0, None)
    assert floored.new_price_wei == 5 * REF


def test_a_price_outside_the_bounds_moves_back_even_within_the_threshold() -> None:
    rival = view(2, 3 * REF)
    ceiling = 3 * REF
    decision = decide(view(1, ceiling + 1), [rival], settings(price_ceiling_wei=ceiling, threshold=0.5), 0.0, None)
    assert decision.new_price_wei == ceiling and "back into the price bounds" in decision.reason


def test_alone_holds_instead_of_jumping_to_the_ceiling() -> None:
    alone = decide(view(1, REF), [], settings(), 0.0, None)
    assert alone.action == "hold_alone" and alone.new_price_wei is None and alone.share == 1.0
    assert "no competitor serves layers [0, 8)" in alone.reason
    # with an outside option the monopoly problem has an interior optimum: p = T/(α(1 − P)), P vs the outside
    outside = decide(view(1, REF), [], settings(outside_weight=2.0, max_change_ratio=100.0), 0.0, None)
    assert outside.new_price_wei is not None
    p = outside.new_price_wei / REF
    share = 1.0 / (1.0 + math.exp(0.5 * p + 0.5 * 1.0 - 2.0))  # own cost 0.125 ms × 8 layers / 1 ms = 1
    assert p == pytest.approx(1.0 / (0.5 * (1.0 - share)), rel=1e-6)


def test_only_overlapping_offers_are_competitors() -> None:
    own = view(1, 3 * REF, 0, 4)
    disjoint, overlapping = view(2, REF, 4, 8), view(3, 3 * REF, 2, 6)
    assert decide(own, [disjoint], settings(), 0.0, None).action == "hold_alone"
    decision = decide(own, [disjoint, overlapping], settings(), 0.0, None)
    assert [c.offer_id for c in decision.competitors] == [3]
    # the decision equals the one in the market without the disjoint offer
    assert decision == decide(own, [overlapping], settings(), 0.0, None)


def test_a_slower_rival_lets_the_node_charge_more() -> None:
    rival_fast, rival_slow = view(2, 3 * REF, ms=0.125), view(2, 3 * REF, ms=0.5)
    versus_fast = decide(view(1, 3 * REF), [rival_fast], settings(), 0.0, None)
    versus_slow = decide(view(1, 3 * REF), [rival_slow], settings(), 0.0, None)
    assert versus_slow.best_response_wei > versus_fast.best_response_wei  # type: ignore[operator]
    assert versus_slow.share > versus_fast.share


def test_reason_names_old_new_competitors_share_and_revenue() -> None:
    decision = decide(view(1, 3 * REF), [dataclasses.replace(view(2, 3 * REF), cost_source="advertised")],
                      settings(), 0.0, None)
    reason = decision.reason
    assert reason.startswith(f"update {3 * REF} -> {decision.new_price_wei} wei/token")
    assert "1 competitor(s): #2 [0,8) 3000000000000 wei 0.125 ms/layer (advertised)" in reason
    assert f"share {decision.share:.3f} -> {decision.target_share:.3f}" in reason
    assert "expected revenue" in reason and "wei/request" in reason


def test_alternating_agents_reach_the_equilibrium_in_few_updates() -> None:
    config = settings(threshold=0.01, min_gap_s=0.0)
    offers = [view(1, REF, ms=0.1), view(2, 3 * REF, ms=0.15)]
    model = config.model()
    market = Market.from_offers([model.market_offer(o) for o in offers], model.rules())
    equilibrium = [model.wei(p) for p in solve_equilibrium(market).prices]
    updates = 0
    for t in range(40):
        i = t % 2
        decision = decide(offers[i], offers, config, float(t), None)
        if decision.new_price_wei is not None:
            offers[i] = dataclasses.replace(offers[i], price_wei_per_token=decision.new_price_wei)
            updates += 1
    assert updates <= 10
    for offer, target in zip(offers, equilibrium, strict=True):
        assert offer.price_wei_per_token == pytest.approx(target, rel=0.03)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="threshold"):
        settings(threshold=-0.1)
    with pytest.raises(ValueError, match="below the floor"):
        settings(price_floor_wei=10, price_ceiling_wei=5)
    with pytest.raises(ValueError, match="alpha"):
        settings(alpha=1.5)
    with pytest.raises(ValueError, match="max_change_ratio"):
        settings(max_change_ratio=1.0)
    assert settings().model().rules() == PricingRules(alpha=0.5, temperature=1.0, price_floor=0.0,
                                                      price_ceiling=100.0)


def test_market_units() -> None:
    model = settings(reference_latency_ms=2.0).model()
    assert model.market_offer(view(1, 3 * REF, 2, 6, ms=0.5)) == MarketOffer(2, 6, 3.0, 1.0)  # 4 × 0.5 ms / 2 ms


# ------------------------------------------------------------------------------------------------ the loop


class FakeRegistry:
    """In-memory `live_offers`/`update_price`; records calls in `events` (shared with the terms setter)."""

    def __init__(self, offers: list[Offer], events: list[tuple[str, int]]) -> None:
        self.offers = {o.offer_id: o for o in offers}
        self.events = events
        self.fail_updates = False

    def live_offers(self, model_id: bytes) -> list[Offer]:
        assert model_id == MODEL
        return list(self.offers.values())

    def update_price(self, offer_id: int, price_wei_per_token: int) -> None:
        if self.fail_updates:
            raise RuntimeError("update price: RPC unreachable")
        self.events.append(("chain", price_wei_per_token))
        self.offers[offer_id] = dataclasses.replace(self.offers[offer_id], price_wei_per_token=price_wei_per_token)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def offer(offer_id: int, price_wei: int, endpoint: str = "http://127.0.0.1:9") -> Offer:
    return Offer(offer_id, "0x" + "00" * 20, MODEL, 0, 8, price_wei, endpoint, 2**40)


def make_agent(own_wei: int, rival_wei: int, **overrides: float) -> tuple[PricingAgent, FakeRegistry, list, Clock]:
    events: list[tuple[str, int]] = []
    registry = FakeRegistry([offer(1, own_wei), offer(2, rival_wei)], events)
    clock = Clock()
    costs = CompetitorCosts(clock=clock, fetch=lambda url, timeout: info_json(0.125))
    agent = PricingAgent(registry, registry.offers[1], MODEL, lambda p: events.append(("terms", p)),
                         settings(**overrides), 0.125, costs=costs, clock=clock)
    return agent, registry, events, clock


def test_step_raises_on_chain_first_then_charges(caplog: pytest.LogCaptureFixture) -> None:
    agent, registry, events, _ = make_agent(REF, 3 * REF)
    with caplog.at_level(logging.INFO, logger="p2pnode.pricing"):
        decision = agent.step()
    assert decision is not None and decision.new_price_wei == 2 * REF
    assert events == [("chain", 2 * REF), ("terms", 2 * REF)]
    assert registry.offers[1].price_wei_per_token == 2 * REF and agent.updates == 1
    assert f"offer 1: update {REF} -> {2 * REF} wei/token" in caplog.text


def test_step_cuts_terms_first_and_restores_them_if_the_chain_fails() -> None:
    agent, registry, events, _ = make_agent(20 * REF, 3 * REF)
    registry.fail_updates = True
    with pytest.raises(RuntimeError, match="RPC unreachable"):
        agent.step()
    assert events == [("terms", 10 * REF), ("terms", 20 * REF)]
    assert agent.charged_wei == 20 * REF and agent.last_update_s is None
    registry.fail_updates = False
    events.clear()
    agent.step()
    assert events == [("terms", 10 * REF), ("chain", 10 * REF)]


def test_step_respects_min_gap_across_steps(caplog: pytest.LogCaptureFixture) -> None:
    agent, _, events, clock = make_agent(REF, 3 * REF, min_gap_s=5.0)
    agent.step()
    clock.now += 2.0
    with caplog.at_level(logging.INFO, logger="p2pnode.pricing"):
        held = agent.step()
    assert held is not None and held.action == "hold_rate_limit" and len(events) == 2
    assert "min gap 5 s" in caplog.text
    clock.now += 3.0
    assert agent.step().new_price_wei is not None  # type: ignore[union-attr]
    assert agent.updates == 2


def test_step_charges_an_externally_set_price_and_skips_a_missing_offer() -> None:
    agent, registry, events, _ = make_agent(REF, 3 * REF, threshold=10.0)  # threshold: hold everything
    registry.offers[1] = dataclasses.replace(registry.offers[1], price_wei_per_token=4 * REF)
    decision = agent.step()
    assert events == [("terms", 4 * REF)] and decision is not None and decision.current_price_wei == 4 * REF
    del registry.offers[1]
    assert agent.step() is None


# ------------------------------------------------------------------------------------------------ costs


def test_competitor_costs_use_info_cache_it_and_fall_back_to_own() -> None:
    calls: list[str] = []
    clock = Clock()

    def fetch(url: str, timeout_s: float) -> dict:
        calls.append(url)
        if "bad" in url:
            raise ValueError("not JSON")
        if "old" in url:
            return {"compute_ms_per_layer": 0.5}  # an /info that is not a NodeInfo is not believed
        return info_json(0.75)

    costs = CompetitorCosts(ttl_s=60.0, clock=clock, fetch=fetch)
    good = costs.view(offer(2, REF, "http://good:1/"), 0.2)
    assert (good.compute_ms_per_layer, good.cost_source) == (0.75, "advertised")
    costs.view(offer(2, REF, "http://good:1/"), 0.2)
    assert calls == ["http://good:1/info"]  # cached
    clock.now += 61.0
    costs.view(offer(2, REF, "http://good:1/"), 0.2)
    assert len(calls) == 2  # expired, fetched again
    bad = costs.view(offer(3, REF, "http://bad:1"), 0.2)
    assert (bad.compute_ms_per_layer, bad.cost_source) == (0.2, "assumed")
    old = costs.view(offer(4, REF, "http://old:1"), 0.2)
    assert (old.compute_ms_per_layer, old.cost_source) == (0.2, "assumed")


def test_competitor_costs_over_http_fall_back_when_nothing_listens() -> None:
    costs = CompetitorCosts(timeout_s=0.5)
    assumed = costs.view(offer(2, REF, "http://127.0.0.1:9"), 0.3)
    assert (assumed.compute_ms_per_layer, assumed.cost_source) == (0.3, "assumed")
