"""Pricing math: Eq. 1–5 literals, gradient vs finite differences, the overlap rule, best responses."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm.pricing import (
    Market,
    MarketInputError,
    MarketOffer,
    NodeDemand,
    PricingRules,
    ascent_step,
    choice_probabilities,
    competitors,
    cost_from_ms,
    cost_to_ms,
    expected_revenues,
    foc_price,
    layer_shares,
    node_shares,
    node_weight,
    node_weights,
    offer_prices,
    price_from_wei,
    price_to_wei,
    revenue_gradient,
    revenue_gradients,
)

OMEGA = 0.5671432904097838  # W(1), the omega constant

alphas = st.floats(0.05, 1.0)
temperatures = st.floats(0.2, 5.0)
prices = st.floats(0.0, 20.0)
costs = st.floats(0.0, 5.0)


@st.composite
def competing_sets(draw: st.DrawFn, min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(min_size, 6))
    return (
        np.array(draw(st.lists(prices, min_size=n, max_size=n))),
        np.array(draw(st.lists(costs, min_size=n, max_size=n))),
    )


@st.composite
def overlapping_markets(draw: st.DrawFn) -> tuple[Market, np.ndarray]:
    n_layers = draw(st.integers(1, 6))
    n = draw(st.integers(1, 5))
    ranges = []
    for _ in range(n):
        start = draw(st.integers(0, n_layers - 1))
        ranges.append((start, draw(st.integers(start + 1, n_layers))))
    outside = draw(st.none() | st.floats(-2.0, 10.0))
    rules = PricingRules(alpha=draw(alphas), temperature=draw(temperatures), outside_weight=outside)
    market = Market(ranges, draw(st.lists(costs, min_size=n, max_size=n)), rules, n_layers)
    return market, np.array(draw(st.lists(prices, min_size=n, max_size=n)))


# -- units -----------------------------------------------------------------------------------------


def test_unit_conversions_literal() -> None:
    assert price_from_wei(3, 2) == 1.5
    assert price_to_wei(1.5, 10**9) == 1_500_000_000
    assert price_to_wei(0.1, 10**18) == 100_000_000_000_000_006  # exact binary value of 0.1, rounded
    assert cost_from_ms(50.0, 25.0) == 2.0
    assert cost_to_ms(2.0, 25.0) == 50.0


@given(st.integers(0, 10**24), st.integers(1, 10**12))
def test_price_round_trip_within_half_wei(price_wei: int, reference: int) -> None:
    back = price_to_wei(price_from_wei(price_wei, reference), reference)
    assert abs(back - price_wei) <= max(1, price_wei * 2**-52)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: price_from_wei(1, 0), "reference_price_wei_per_token"),
        (lambda: price_from_wei(-1, 5), "price_wei_per_token"),
        (lambda: price_to_wei(-0.5, 5), "price"),
        (lambda: cost_from_ms(1.0, 0.0), "reference_latency_ms"),
        (lambda: cost_to_ms(math.nan, 1.0), "cost"),
    ],
)
def test_unit_conversions_reject_bad_input(call: Callable[[], object], name: str) -> None:
    with pytest.raises(MarketInputError) as error:
        call()
    assert error.value.name == name


# -- Eq. 1 and Eq. 3 -------------------------------------------------------------------------------


def test_weight_literal() -> None:
    assert node_weight(2.0, 4.0, 0.25) == 3.5
    assert node_weight(2.0, 4.0, 1.0) == 2.0
    assert node_weight(2.0, 4.0, 0.0) == 4.0
    assert node_weights([2.0, 0.0], [4.0, 1.0], 0.5).tolist() == [3.0, 0.5]


def test_choice_probabilities_literal() -> None:
    assert np.allclose(choice_probabilities([0.0, math.log(2.0)]), [2 / 3, 1 / 3], rtol=1e-15)
    assert np.allclose(choice_probabilities([0.0, 2 * math.log(2.0)], temperature=2.0), [2 / 3, 1 / 3])
    with_outside = choice_probabilities([0.0], outside_weight=0.0)
    assert with_outside.tolist() == [0.5]


@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8), temperatures, st.floats(-1e3, 1e3))
def test_probabilities_sum_to_one_and_ignore_shifts(weights: list[float], t: float, shift: float) -> None:
    p = choice_probabilities(weights, t)
    assert np.all(np.isfinite(p))
    assert math.isclose(p.sum(), 1.0, rel_tol=1e-12)
    assert np.allclose(choice_probabilities(np.array(weights) + shift, t), p, rtol=1e-6, atol=1e-12)


@given(st.lists(st.floats(-50, 50), min_size=1, max_size=8), temperatures, st.floats(-50, 50))
def test_outside_option_takes_the_rest(weights: list[float], t: float, outside: float) -> None:
    p = choice_probabilities(weights, t, outside_weight=outside)
    p_outside = choice_probabilities([*weights, outside], t)[-1]
    assert math.isclose(p.sum() + p_outside, 1.0, rel_tol=1e-12)


def test_huge_weights_stay_finite() -> None:
    p = choice_probabilities([1e6, 1e6 + 1.0, 2e6], temperature=1e-3)
    assert p.tolist()[0] == 1.0 and p[1] >= 0.0 and p[2] == 0.0


# -- Eq. 2, 4, 5 -----------------------------------------------------------------------------------


@settings(max_examples=200)
@given(competing_sets(), alphas, temperatures, st.none() | st.floats(-5, 25), st.data())
def test_gradient_matches_central_differences(
    market: tuple[np.ndarray, np.ndarray], alpha: float, t: float, outside: float | None, data: st.DataObject
) -> None:
    p, c = market
    i = data.draw(st.integers(0, p.size - 1))
    h = 1e-5

    def revenue_of_i(price: float) -> float:
        moved = p.copy()
        moved[i] = price
        return float(expected_revenues(moved, c, alpha, t, outside)[i])

    numeric = (revenue_of_i(p[i] + h) - revenue_of_i(p[i] - h)) / (2 * h)
    analytic = revenue_gradients(p, c, alpha, t, outside)[i]
    assert math.isclose(analytic, numeric, rel_tol=1e-6, abs_tol=1e-8)


@given(st.floats(0.0, 50.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_gradient_at_unit_temperature_is_the_papers_formula(p: float, share: float, alpha: float) -> None:
    paper = share * (1 + alpha * p * (share - 1))  # dR/dp = P(w)(1 + αp·(P(w) − 1))
    assert math.isclose(revenue_gradient(p, share, alpha), paper, rel_tol=1e-12, abs_tol=1e-12)


def test_gradient_literal() -> None:
    assert revenue_gradient(2.0, 0.5, 1.0) == 0.0  # the FOC p = T/(α(1 − P)) = 2
    assert revenue_gradient(1.0, 0.5, 1.0, temperature=2.0) == 0.375
    assert foc_price(0.5, 1.0) == 2.0
    assert foc_price(0.5, 0.5, temperature=3.0) == 12.0
    assert foc_price(0.3, 0.0) == math.inf
    assert foc_price(1.0, 0.7) == math.inf


def test_ascent_step_literal() -> None:
    assert ascent_step(1.0, 0.05, learning_rate=2.0, max_step=1.0, floor=0.0, ceiling=10.0) == 1.1
    assert ascent_step(1.0, 3.0, learning_rate=1.0, max_step=0.25, floor=0.0, ceiling=10.0) == 1.25
    assert ascent_step(1.0, -9.0, learning_rate=1.0, max_step=5.0, floor=0.5, ceiling=10.0) == 0.5
    assert ascent_step(9.9, 9.0, learning_rate=1.0, max_step=5.0, floor=0.5, ceiling=10.0) == 10.0


@given(
    st.floats(0.0, 100.0),
    st.floats(-1e6, 1e6),
    st.floats(1e-3, 1e3),
    st.floats(1e-3, 10.0),
    st.floats(0.0, 50.0),
    st.floats(0.0, 50.0),
)
def test_ascent_step_respects_bounds(
    p: float, g: float, eta: float, max_step: float, floor: float, span: float
) -> None:
    ceiling = floor + span
    updated = ascent_step(p, g, eta, max_step, floor, ceiling)
    assert floor <= updated <= ceiling
    if floor <= p <= ceiling:
        assert abs(updated - p) <= max_step + 4 * np.finfo(float).eps * max(1.0, p)
        assert (updated - p) * g >= 0.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"max_step": -1.0}, "max_step"),
        ({"floor": -1.0}, "floor"),
        ({"ceiling": 0.1, "floor": 0.2}, "ceiling"),
    ],
)
def test_ascent_step_rejects_bad_parameters(kwargs: dict[str, float], name: str) -> None:
    arguments = {"learning_rate": 1.0, "max_step": 1.0, "floor": 0.0, "ceiling": 10.0} | kwargs
    with pytest.raises(MarketInputError) as error:
        ascent_step(1.0, 1.0, **arguments)
    assert error.value.name == name


@pytest.mark.parametrize(
    ("kwargs", "name", "value"),
    [
        ({"alpha": 1.5}, "alpha", 1.5),
        ({"alpha": 0.5, "temperature": 0.0}, "temperature", 0.0),
        ({"alpha": 0.5, "outside_weight": math.inf}, "outside_weight", math.inf),
        ({"alpha": 0.5, "price_ceiling": math.inf}, "ceiling", math.inf),
        ({"alpha": 0.5, "price_floor": 2.0, "price_ceiling": 1.0}, "ceiling", 1.0),
    ],
)
def test_rules_reject_bad_parameters(kwargs: dict[str, float], name: str, value: float) -> None:
    with pytest.raises(MarketInputError) as error:
        PricingRules(**kwargs)  # type: ignore[arg-type]
    assert (error.value.name, error.value.value) == (name, value)
    assert name in str(error.value)


def test_offers_and_markets_reject_bad_input() -> None:
    with pytest.raises(MarketInputError, match="start < end"):
        MarketOffer(3, 3, 1.0, 1.0)
    with pytest.raises(MarketInputError, match="n_layers=4"):
        Market([(0, 5)], [1.0], PricingRules(alpha=0.5), n_layers=4)
    with pytest.raises(MarketInputError, match="one cost per range"):
        Market([(0, 2)], [1.0, 2.0], PricingRules(alpha=0.5))
    with pytest.raises(MarketInputError, match="one price per node"):
        Market([(0, 2)], [1.0], PricingRules(alpha=0.5)).shares([1.0, 2.0])


# -- competitor rule for partly overlapping ranges ---------------------------------------------------


def test_competitors_literal() -> None:
    offers = [
        MarketOffer(0, 10, 1.0, 1.0),
        MarketOffer(5, 15, 1.0, 1.0),
        MarketOffer(10, 20, 1.0, 1.0),
        MarketOffer(0, 30, 1.0, 1.0),
        MarketOffer(20, 30, 1.0, 1.0),
    ]
    assert competitors(offers, 0) == (1, 3)
    assert competitors(offers, 1) == (0, 2, 3)
    assert competitors(offers, 2) == (1, 3)
    assert competitors(offers, 3) == (0, 1, 2, 4)
    assert competitors(offers, 4) == (3,)


def test_layer_shares_literal() -> None:
    offers = [MarketOffer(0, 2, 1.0, 1.0), MarketOffer(1, 3, 1.0, 1.0)]
    rules = PricingRules(alpha=0.5)
    assert layer_shares(offers, rules).tolist() == [[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]
    assert node_shares(offers, rules).tolist() == [0.75, 0.75]
    market = Market.from_offers(offers, rules)
    assert market.effective_shares(offer_prices(offers)).tolist() == [1.25 / 1.5, 1.25 / 1.5]


@settings(max_examples=100)
@given(competing_sets(), alphas, temperatures, st.none() | st.floats(-5, 25), st.integers(1, 5))
def test_coinciding_ranges_reduce_to_the_paper(
    market_data: tuple[np.ndarray, np.ndarray], alpha: float, t: float, outside: float | None, span: int
) -> None:
    p, c = market_data
    rules = PricingRules(alpha=alpha, temperature=t, outside_weight=outside)
    market = Market([(2, 2 + span)] * p.size, c, rules)
    paper_shares = choice_probabilities(node_weights(p, c, alpha), t, outside)
    assert np.allclose(market.shares(p), paper_shares, rtol=1e-12, atol=1e-300)
    assert np.allclose(market.revenues(p), expected_revenues(p, c, alpha, t, outside), rtol=1e-12)
    assert np.allclose(market.gradients(p), revenue_gradients(p, c, alpha, t, outside), rtol=1e-9, atol=1e-12)
    assert np.allclose(market.effective_shares(p), paper_shares, rtol=1e-9, atol=1e-12)
    # 1 − P_i as the others' (and the outside option's) probability mass, free of cancellation near P = 1
    everyone = choice_probabilities([*node_weights(p, c, alpha), *([] if outside is None else [outside])], t)
    others = np.array([np.delete(everyone, i).sum() for i in range(p.size)])
    with np.errstate(divide="ignore"):
        foc = t / (alpha * others)
    assert np.allclose(market.foc_prices(p), foc, rtol=1e-9)
    # foc_price(P) takes P itself, so its 1 − P carries P's rounding error divided by 1 − P. P = e^{−w/T}/Z
    # is off by a few eps times the largest |w|/T (exp turns the logit's rounding into a relative error); where
    # 1 − P is below 1e-12 (P rounds to, or next to, 1.0) only the Market's own form is meaningful
    resolvable = others > 1e-12
    paper_foc = np.array([foc_price(s, alpha, t) for s in paper_shares])
    weights = np.abs([*node_weights(p, c, alpha), *([] if outside is None else [outside])])
    p_error = 16 * np.finfo(float).eps * (1.0 + weights.max() / t)
    cancellation = p_error / np.where(resolvable, others, 1.0)
    assert np.allclose(paper_foc[resolvable], foc[resolvable], rtol=1e-9 + cancellation[resolvable])


@settings(max_examples=150)
@given(overlapping_markets(), st.data())
def test_overlap_gradient_matches_central_differences(
    market_and_prices: tuple[Market, np.ndarray], data: st.DataObject
) -> None:
    market, p = market_and_prices
    i = data.draw(st.integers(0, market.n_nodes - 1))
    h = 1e-5
    p = np.maximum(p, 2 * h)
    up, down = p.copy(), p.copy()
    up[i] += h
    down[i] -= h
    numeric = (market.revenues(up)[i] - market.revenues(down)[i]) / (2 * h)
    assert math.isclose(market.gradients(p)[i], numeric, rel_tol=1e-5, abs_tol=1e-8)
    demand = market.demand(i, p)
    assert math.isclose(float(demand.revenue(p[i])), market.revenues(p)[i], rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(float(demand.gradient(p[i])), market.gradients(p)[i], rel_tol=1e-9, abs_tol=1e-12)


@given(overlapping_markets())
def test_layer_shares_sum_to_one_on_every_covered_layer(market_and_prices: tuple[Market, np.ndarray]) -> None:
    market, p = market_and_prices
    column_sums = market.layer_shares(p).sum(axis=0)
    covered = market.serves.any(axis=0)
    if market.rules.outside_weight is None:
        assert np.allclose(column_sums[covered], 1.0, rtol=1e-12)
    else:
        outside_mass = np.exp(market.rules.outside_logit - market.layer_log_partition(p))
        assert np.allclose(column_sums[covered] + outside_mass[covered], 1.0, rtol=1e-12)
    assert np.all(column_sums[~covered] == 0.0)


# -- one node's best response ----------------------------------------------------------------------


def test_best_response_against_one_rival_is_one_plus_omega() -> None:
    # Rival weight 1 ⇒ log Z = −1; c = 0, α = T = 1: the FOC gives p = 1 + W(1).
    demand = NodeDemand(np.array([-1.0]), cost=0.0, rules=PricingRules(alpha=1.0))
    assert math.isclose(demand.best_response(), 1.0 + OMEGA, rel_tol=1e-14)
    market = Market([(0, 1), (0, 1)], [0.0, 0.0], PricingRules(alpha=1.0))
    assert math.isclose(market.demand(0, [5.0, 1.0]).best_response(), 1.0 + OMEGA, rel_tol=1e-14)


def test_best_response_with_zero_alpha_or_monopoly_is_the_ceiling() -> None:
    alone = NodeDemand(np.array([-np.inf, -np.inf]), cost=1.0, rules=PricingRules(alpha=0.5, price_ceiling=7.0))
    assert alone.best_response() == 7.0
    indifferent = NodeDemand(np.array([0.0]), cost=1.0, rules=PricingRules(alpha=0.0, price_ceiling=7.0))
    assert indifferent.best_response() == 7.0


def test_monopolist_against_outside_option_solves_its_foc() -> None:
    rules = PricingRules(alpha=0.5, temperature=1.0, outside_weight=2.0)
    price = Market([(0, 3)], [1.0], rules).demand(0, [0.0]).best_response()
    share = float(Market([(0, 3)], [1.0], rules).shares([price])[0])
    assert 0.0 < price < rules.price_ceiling
    assert math.isclose(price, foc_price(share, 0.5), rel_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(overlapping_markets(), st.data())
def test_best_response_beats_every_grid_price(
    market_and_prices: tuple[Market, np.ndarray], data: st.DataObject
) -> None:
    market, p = market_and_prices
    market = market.with_rules(
        PricingRules(
            alpha=market.rules.alpha,
            temperature=market.rules.temperature,
            outside_weight=market.rules.outside_weight,
            price_ceiling=data.draw(st.floats(1.0, 60.0)),
        )
    )
    i = data.draw(st.integers(0, market.n_nodes - 1))
    demand = market.demand(i, p)
    best = demand.best_response()
    grid = np.linspace(0.0, market.rules.price_ceiling, 10_001)
    assert 0.0 <= best <= market.rules.price_ceiling
    assert float(demand.revenue(best)) >= float(demand.revenue(grid).max()) - 1e-12


def test_bimodal_revenue_finds_the_global_maximum() -> None:
    # Alone on 1 of 50 layers, against a weak rival (log Z = −2) on the other 49: a competitive peak
    # near p = 2 (the single-layer optimum 1 + W(e) = 2, nudged right by the monopoly layer) with
    # revenue ≈ 1.02, and revenue p/50 rising again towards the ceiling.
    log_z = np.array([-np.inf] + [-2.0] * 49)
    low_ceiling = NodeDemand(log_z, cost=0.0, rules=PricingRules(alpha=1.0, price_ceiling=40.0))
    high_ceiling = NodeDemand(log_z, cost=0.0, rules=PricingRules(alpha=1.0, price_ceiling=100.0))
    inner = low_ceiling.best_response()
    assert 2.0 < inner < 2.1
    assert math.isclose(float(low_ceiling.gradient(inner)), 0.0, abs_tol=1e-12)
    assert float(low_ceiling.revenue(inner)) > float(low_ceiling.revenue(40.0))  # 1.02 > 0.8
    assert high_ceiling.best_response() == 100.0  # 2.0 > 1.02: the monopoly layer wins
    assert float(high_ceiling.gradient(inner)) == float(low_ceiling.gradient(inner))
