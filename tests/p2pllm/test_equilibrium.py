"""Network equilibrium: FOC and no-profitable-deviation at the fixed point, α = 0, cost sweeps, simulator."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm.equilibrium import (
    best_response_equilibrium,
    equilibrium_vs_cost,
    gradient_equilibrium,
    kkt_residual,
    max_unilateral_gain,
    simulate_network,
    solve_equilibrium,
    unilateral_gains,
)
from p2pllm.pricing import (
    Market,
    MarketInputError,
    PricingRules,
    choice_probabilities,
    node_weights,
)


def random_range(draw: st.DrawFn, n_layers: int) -> tuple[int, int]:
    start = draw(st.integers(0, n_layers - 1))
    return start, draw(st.integers(start + 1, n_layers))


@st.composite
def small_markets(draw: st.DrawFn, coinciding: bool = False, monopolies: bool = False) -> Market:
    """Coinciding ranges (the paper), or two full-range nodes plus partial ones (every layer has >= 2
    servers), or, with `monopolies`, any ranges (a node may be alone on a layer)."""
    n_layers = draw(st.integers(1, 5))
    if coinciding:
        ranges = [random_range(draw, n_layers)] * draw(st.integers(2, 5))
    elif monopolies:
        ranges = [random_range(draw, n_layers) for _ in range(draw(st.integers(2, 5)))]
    else:
        ranges = [(0, n_layers)] * 2 + [random_range(draw, n_layers) for _ in range(draw(st.integers(0, 3)))]
    n = len(ranges)
    rules = PricingRules(
        alpha=draw(st.floats(0.1, 1.0)),
        temperature=draw(st.floats(0.3, 3.0)),
        outside_weight=draw(st.none() | st.floats(0.0, 8.0)),
        price_ceiling=draw(st.floats(10.0, 60.0)),
    )
    return Market(ranges, draw(st.lists(st.floats(0.0, 3.0), min_size=n, max_size=n)), rules, n_layers)


def test_two_identical_nodes_split_the_market_at_p_equal_2() -> None:
    # Symmetric equilibrium: P = 1/n and p = T/(α(1 − 1/n)) = nT/(α(n − 1)).
    market = Market([(0, 4), (0, 4)], [1.0, 1.0], PricingRules(alpha=1.0))
    result = solve_equilibrium(market)
    assert result.converged
    assert np.allclose(result.prices, 2.0, rtol=1e-12)
    assert np.allclose(result.shares, 0.5, rtol=1e-12)
    assert np.allclose(result.revenues, 1.0, rtol=1e-12)


@pytest.mark.parametrize(("n", "alpha", "t"), [(3, 0.5, 1.0), (5, 0.25, 2.0), (10, 1.0, 0.5)])
def test_symmetric_equilibrium_literal(n: int, alpha: float, t: float) -> None:
    market = Market([(3, 7)] * n, [0.7] * n, PricingRules(alpha=alpha, temperature=t))
    for result in (
        best_response_equilibrium(market),
        best_response_equilibrium(market, scheme="jacobi"),
        gradient_equilibrium(market),
    ):
        assert result.converged, result.method
        assert np.allclose(result.prices, n * t / (alpha * (n - 1)), rtol=1e-8), result.method


@settings(max_examples=40, deadline=None)
@given(small_markets(coinciding=True))
def test_paper_foc_holds_at_equilibrium(market: Market) -> None:
    result = solve_equilibrium(market)
    assert result.converged
    rules = market.rules
    weights = node_weights(result.prices, market.costs, rules.alpha)
    everyone = choice_probabilities(
        [*weights, *([] if rules.outside_weight is None else [rules.outside_weight])], rules.temperature
    )
    for i, price in enumerate(result.prices):
        one_minus_p = np.delete(everyone, i).sum()  # 1 − P_i without cancellation
        foc = rules.temperature / (rules.alpha * one_minus_p)  # p = T/(α(1 − P))
        assert abs(price - min(max(foc, rules.price_floor), rules.price_ceiling)) <= 1e-6
    assert max_unilateral_gain(market, result.prices) <= 1e-9


@settings(max_examples=40, deadline=None)
@given(small_markets())
def test_overlapping_equilibrium_has_no_profitable_deviation(market: Market) -> None:
    result = solve_equilibrium(market)
    assert result.converged
    assert np.all(market.foc_residuals(result.prices) <= 1e-6)
    assert result.residuals[-1] == kkt_residual(market, result.prices)
    assert max_unilateral_gain(market, result.prices) <= 1e-9


def test_simulated_network_equilibrium_for_every_alpha() -> None:
    offers = simulate_network(n_nodes=20, n_layers=12, seed=3)
    for alpha in (0.25, 0.5, 0.75, 1.0):
        market = Market.from_offers(offers, PricingRules(alpha=alpha), n_layers=12)
        result = solve_equilibrium(market)
        assert result.converged and result.method == "best_response/gauss_seidel"
        assert result.iterations <= 20
        assert result.residual <= 1e-10
        assert max_unilateral_gain(market, result.prices) <= 1e-9
        gradient = gradient_equilibrium(market, learning_rate=2.0, max_step=1.0)
        assert gradient.converged
        assert np.allclose(gradient.prices, result.prices, atol=1e-6)


def test_result_history_is_consistent() -> None:
    market = Market([(0, 3), (1, 4), (2, 4)], [0.5, 1.0, 1.5], PricingRules(alpha=0.5))
    result = gradient_equilibrium(market, tol=1e-9)
    assert result.converged
    assert len(result.residuals) == result.iterations + 1
    assert len(result.price_changes) == result.iterations
    assert result.residuals[0] == kkt_residual(market, np.ones(3))
    assert result.residual <= 1e-9 < max(result.residuals)
    assert np.array_equal(result.revenues, market.revenues(result.prices))


def test_iteration_limit_reports_not_converged() -> None:
    market = Market([(0, 3), (1, 4)], [0.5, 1.0], PricingRules(alpha=0.5))
    result = gradient_equilibrium(market, learning_rate=0.01, max_iterations=5)
    assert not result.converged
    assert result.iterations == 5


def test_zero_alpha_sends_every_price_to_the_ceiling() -> None:
    rules = PricingRules(alpha=0.0, price_ceiling=12.5)
    market = Market([(0, 3), (1, 4), (0, 4)], [0.5, 1.0, 2.0], rules)
    for result in (solve_equilibrium(market), gradient_equilibrium(market)):
        assert result.converged
        assert result.prices.tolist() == [12.5, 12.5, 12.5]
    assert max_unilateral_gain(market, [12.5, 12.5, 12.5]) <= 0.0


def test_deviation_check_flags_a_non_equilibrium() -> None:
    market = Market([(0, 2), (0, 2)], [1.0, 1.0], PricingRules(alpha=1.0))
    gains = unilateral_gains(market, [1.0, 1.0])
    assert np.all(gains > 0.01)  # both gain by moving towards p = 2
    assert max_unilateral_gain(market, [2.0, 2.0]) <= 0.0  # 2.0 lies on the grid


@settings(max_examples=15, deadline=None)
@given(small_markets(), st.data())
def test_lower_cost_means_higher_equilibrium_price_and_revenue(market: Market, data: st.DataObject) -> None:
    alpha = data.draw(st.floats(0.1, 0.9))  # at α = 1 cost leaves the weight and nothing moves
    market = market.with_rules(replace(market.rules, alpha=alpha))
    node = data.draw(st.integers(0, market.n_nodes - 1))
    sweep = equilibrium_vs_cost(market, node, np.linspace(3.0, 0.0, 7).tolist())
    assert sweep.converged
    interior = sweep.prices < market.rules.price_ceiling
    assert np.all(np.diff(sweep.prices[interior]) > 0.0)  # cost falls along the sweep, price rises
    assert np.all(np.diff(sweep.revenues) > 0.0)
    assert np.all(np.diff(sweep.shares) > 0.0)


def test_cost_sweep_on_the_simulated_network() -> None:
    offers = simulate_network(n_nodes=15, n_layers=10, seed=11, max_span=6)
    market = Market.from_offers(offers, PricingRules(alpha=0.5), n_layers=10)
    costs = [2.0, 1.5, 1.0, 0.5, 0.25]
    sweep = equilibrium_vs_cost(market, 4, costs)
    assert sweep.converged and sweep.costs.tolist() == costs
    assert np.all(np.diff(sweep.prices) > 0.0) and np.all(np.diff(sweep.revenues) > 0.0)


def test_simulated_network_is_reproducible_and_covered() -> None:
    offers = simulate_network(seed=7)
    assert offers == simulate_network(seed=7)
    assert offers != simulate_network(seed=8)
    assert len(offers) == 50
    coverage = np.zeros(30, dtype=int)
    for offer in offers:
        assert 0 <= offer.start < offer.end <= 30 and offer.end - offer.start <= 12
        coverage[offer.start : offer.end] += 1
    assert coverage.min() >= 2
    costs = [offer.cost for offer in offers]
    assert min(costs) > 0.0 and max(costs) / min(costs) > 2.0  # heterogeneous
    assert len({(offer.start, offer.end) for offer in offers}) > 25


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: simulate_network(n_nodes=0), "n_nodes"),
        (lambda: simulate_network(min_span=5, max_span=4), "max_span"),
        (lambda: simulate_network(n_nodes=2, min_coverage=3), "min_coverage"),
        (lambda: simulate_network(n_nodes=1, n_layers=30, max_span=3, min_coverage=1), "min_coverage"),
        (lambda: gradient_equilibrium(Market([(0, 1)], [1.0], PricingRules(alpha=1.0)), tol=0.0), "tol"),
        (
            lambda: solve_equilibrium(Market([(0, 1)], [1.0], PricingRules(alpha=1.0)), [1.0, 2.0]),
            "initial_prices",
        ),
        (lambda: equilibrium_vs_cost(Market([(0, 1)], [1.0], PricingRules(alpha=1.0)), 3, [1.0]), "i"),
    ],
)
def test_bad_input_raises_with_data(call: Callable[[], object], name: str) -> None:
    with pytest.raises(MarketInputError) as error:
        call()
    assert error.value.name == name


def test_single_node_monopoly_against_outside_option() -> None:
    rules = PricingRules(alpha=0.5, outside_weight=1.0)
    market = Market([(0, 2)], [0.0], rules)
    result = solve_equilibrium(market)
    share = float(result.shares[0])
    assert result.converged
    assert math.isclose(float(result.prices[0]), rules.temperature / (rules.alpha * (1 - share)), rel_tol=1e-9)


@settings(max_examples=30, deadline=None)
@given(small_markets(monopolies=True))
def test_with_monopoly_layers_best_responses_settle_or_report_a_cycle(market: Market) -> None:
    result = best_response_equilibrium(market, max_iterations=200)
    if result.converged:
        assert result.cycle_period is None
        assert max_unilateral_gain(market, result.prices) <= 1e-9
    else:
        assert result.cycle_period is not None or result.iterations == 200


def test_edgeworth_cycle_literal() -> None:
    # Node 0 serves layer 1; node 1 serves layers 0–1 and is alone on layer 0. Node 1 undercuts node 0
    # on layer 1 until pricing for its monopoly layer at the ceiling pays more; node 0 follows it up.
    market = Market([(1, 2), (0, 2)], [0.0, 0.0], PricingRules(alpha=1.0, price_ceiling=20.0))
    result = best_response_equilibrium(market)
    assert not result.converged
    assert result.cycle_period == 3
    assert result.iterations == 5
    local = gradient_equilibrium(market, learning_rate=2.0)  # the gradient dynamic settles locally ...
    assert local.converged
    assert max_unilateral_gain(market, local.prices) > 0.1  # ... where a jump would still pay


def test_flat_revenue_best_response_is_the_stationary_point_not_a_bracket_end() -> None:
    # Found by hypothesis: node 1's revenue is so flat near its optimum that the bracket end 8.6e-8 below the
    # root rounds to the same (or an ulp more) revenue. Taking it stalled Gauss–Seidel 8.6e-8 off the KKT point.
    rules = PricingRules(alpha=0.125, temperature=0.3125, outside_weight=0.0, price_ceiling=10.0)
    market = Market([(0, 2), (0, 2), (1, 2)], [0.0, 2.0, 3.0], rules, 2)
    result = solve_equilibrium(market)
    assert result.converged
    assert np.all(market.foc_residuals(result.prices) <= 1e-12)
    demand = market.demand(1, result.prices)
    assert abs(float(demand.gradient(demand.best_response()))) <= 1e-14
