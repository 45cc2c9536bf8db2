"""Layer choice: gaps beat crowds, literal windows, deterministic ties, revenue of every alternative."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm.layer_choice import choose_layers, window_revenues
from p2pllm.pricing import Market, MarketInputError, MarketOffer, NodeDemand, PricingRules, foc_price

RULES = PricingRules(alpha=0.5, price_ceiling=50.0)


def crowd(start: int, end: int, count: int, price: float = 2.0, cost: float = 1.0) -> list[MarketOffer]:
    return [MarketOffer(start, end, price, cost) for _ in range(count)]


def test_uncovered_gap_beats_a_crowded_range() -> None:
    offers = crowd(0, 4, 5)
    choice = choose_layers(offers, n_layers=6, n_served_layers=2, cost=1.0, rules=RULES)
    assert (choice.start, choice.end) == (4, 6)
    assert choice.price == RULES.price_ceiling  # alone: share 1 at any price, revenue = ceiling
    assert choice.expected_revenue == RULES.price_ceiling
    assert [w.start for w in choice.alternatives] == [0, 1, 2, 3, 4]
    assert [w.uncovered_layers for w in choice.alternatives] == [0, 0, 0, 1, 2]
    revenues = [w.expected_revenue for w in choice.alternatives]
    assert revenues[0] == revenues[1] == revenues[2] < revenues[3] < revenues[4]


def test_half_covered_window_earns_half_the_ceiling_plus_its_competitive_half() -> None:
    offers = crowd(0, 4, 5)
    window = window_revenues(offers, 6, 2, 1.0, RULES)[3]  # layers 3 (crowded) and 4 (empty)
    assert window.price == RULES.price_ceiling  # the monopoly layer makes the ceiling pay most
    log_z = math.log(5.0) - (0.5 * 2.0 + 0.5 * 1.0)  # five rivals of weight 1.5 on layer 3
    crowded_share = 1.0 / (1.0 + math.exp(0.5 * 50.0 + 0.5 * 1.0 + log_z))
    assert math.isclose(window.share, (1.0 + crowded_share) / 2.0, rel_tol=1e-12)
    assert math.isclose(window.expected_revenue, 50.0 * (1.0 + crowded_share) / 2.0, rel_tol=1e-12)


def test_empty_network_ties_go_to_the_lowest_start() -> None:
    choice = choose_layers([], n_layers=8, n_served_layers=3, cost=0.5, rules=RULES)
    assert (choice.start, choice.end) == (0, 3)
    assert len(choice.alternatives) == 6
    assert {w.expected_revenue for w in choice.alternatives} == {RULES.price_ceiling}


def test_symmetric_rivals_tie_and_the_lowest_start_wins() -> None:
    # One rival per layer everywhere, all alike: every window is worth the same.
    offers = [MarketOffer(0, 2, 3.0, 1.0), MarketOffer(2, 4, 3.0, 1.0)]
    choice = choose_layers(offers, n_layers=4, n_served_layers=2, cost=1.0, rules=RULES)
    revenues = [w.expected_revenue for w in choice.alternatives]
    assert revenues[0] == revenues[1] == revenues[2]
    assert choice.start == 0


def test_gap_with_an_outside_option_prices_at_the_monopoly_foc() -> None:
    rules = PricingRules(alpha=0.5, outside_weight=3.0, price_ceiling=50.0)
    offers = crowd(0, 3, 4)
    choice = choose_layers(offers, n_layers=5, n_served_layers=2, cost=1.0, rules=rules)
    assert (choice.start, choice.end) == (3, 5)
    assert choice.price < rules.price_ceiling
    share = choice.alternatives[-1].share
    assert math.isclose(choice.price, foc_price(share, rules.alpha), rel_tol=1e-9)


def test_prefers_expensive_slow_rivals_to_cheap_fast_ones() -> None:
    offers = crowd(0, 3, 2, price=1.0, cost=0.5) + crowd(3, 6, 2, price=4.0, cost=3.0)
    choice = choose_layers(offers, n_layers=6, n_served_layers=3, cost=1.0, rules=RULES)
    assert (choice.start, choice.end) == (3, 6)
    revenues = [w.expected_revenue for w in choice.alternatives]
    assert revenues == sorted(revenues)  # every step right swaps a cheap rival layer for a dear one


def test_window_revenue_is_the_new_nodes_best_response_in_the_joined_market() -> None:
    offers = [MarketOffer(0, 3, 1.5, 1.0), MarketOffer(2, 5, 2.5, 0.4), MarketOffer(1, 4, 2.0, 2.0)]
    for window in window_revenues(offers, 5, 2, 0.8, RULES):
        joined = Market.from_offers([*offers, MarketOffer(window.start, window.end, 0.0, 0.8)], RULES)
        prices = np.array([o.price for o in offers] + [window.price])
        demand = joined.demand(3, prices)
        assert window.price == demand.best_response()
        assert math.isclose(window.expected_revenue, joined.revenues(prices)[3], rel_tol=1e-12)


@st.composite
def layer_markets(draw: st.DrawFn) -> tuple[list[MarketOffer], int, int]:
    n_layers = draw(st.integers(1, 8))
    offers = []
    for _ in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, n_layers - 1))
        end = draw(st.integers(start + 1, n_layers))
        offers.append(MarketOffer(start, end, draw(st.floats(0.0, 10.0)), draw(st.floats(0.0, 3.0))))
    return offers, n_layers, draw(st.integers(1, n_layers))


@settings(max_examples=60, deadline=None)
@given(layer_markets(), st.floats(0.0, 3.0), st.floats(0.05, 1.0), st.none() | st.floats(0.0, 10.0))
def test_choice_is_the_first_window_with_the_top_revenue(
    market: tuple[list[MarketOffer], int, int], cost: float, alpha: float, outside: float | None
) -> None:
    offers, n_layers, k = market
    rules = PricingRules(alpha=alpha, outside_weight=outside, price_ceiling=30.0)
    choice = choose_layers(offers, n_layers, k, cost, rules)
    revenues = [w.expected_revenue for w in choice.alternatives]
    assert len(revenues) == n_layers - k + 1
    assert [w.end - w.start for w in choice.alternatives] == [k] * len(revenues)
    best = max(revenues)
    assert choice.expected_revenue >= best - 1e-12 * max(1.0, best)
    assert all(r < best - 1e-12 * max(1.0, best) for r in revenues[: choice.start])
    assert choice.alternatives[choice.start].price == choice.price


def test_only_window_when_k_equals_the_model() -> None:
    choice = choose_layers(crowd(0, 3, 2), n_layers=3, n_served_layers=3, cost=1.0, rules=RULES)
    assert (choice.start, choice.end) == (0, 3) and len(choice.alternatives) == 1
    demand = NodeDemand(np.full(3, math.log(2.0) - 1.5), 1.0, RULES)  # two rivals of weight 1.5
    assert choice.price == demand.best_response()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_served_layers": 7}, "n_served_layers"),
        ({"n_served_layers": 0}, "n_served_layers"),
        ({"n_layers": 0}, "n_layers"),
        ({"cost": -1.0}, "cost"),
        ({"tie_tolerance": 1.0}, "tie_tolerance"),
        ({"offers": [MarketOffer(4, 9, 1.0, 1.0)]}, "range"),
    ],
)
def test_bad_input_raises_with_data(kwargs: dict[str, object], name: str) -> None:
    arguments: dict[str, object] = {
        "offers": [],
        "n_layers": 6,
        "n_served_layers": 2,
        "cost": 1.0,
        "rules": RULES,
    } | kwargs
    with pytest.raises(MarketInputError) as error:
        choose_layers(**arguments)  # type: ignore[arg-type]
    assert error.value.name == name
