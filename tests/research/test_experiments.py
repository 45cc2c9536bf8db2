"""The figure data and tables of research.experiments: conversions and route counts with literals, the
figures' claims as properties (cheaper nodes price higher, α = 1 cheapest, α = 0 fastest, residuals reach
tolerance), and reproducibility (same seed, same data and report)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from client.frontier import alpha_optimal
from client.routing import RouteOffer, build_route
from p2pllm.equilibrium import gradient_equilibrium, simulate_network
from p2pllm.pricing import Market, MarketOffer, PricingRules
from research.experiments import (
    FIGURE_FILES,
    ExperimentConfig,
    Experiments,
    count_routes,
    foc_error,
    gradient_trajectory,
    markdown_table,
    median_cost_node,
    render_report,
    revenue_curves,
    route_cloud,
    run_experiments,
    to_route_offers,
)


def tiny(seed: int = 0) -> ExperimentConfig:
    """Smaller still than `small()`: about a second."""
    return replace(
        ExperimentConfig.small(seed),
        max_routes=300,
        network_nodes=10,
        network_layers=8,
        network_max_span=5,
        convergence_alphas=(0.5, 1.0),
        gain_grid=501,
        sweep_costs=(0.5, 1.0, 2.0),
        revenue_grid=101,
    )


@pytest.fixture(scope="module")
def run() -> Experiments:
    return run_experiments(tiny())


# ------------------------------------------------------------------------------ conversions, literals


def test_market_offer_becomes_route_offer() -> None:
    offers = [MarketOffer(2, 5, 1.5, 0.8), MarketOffer(0, 2, 0.25, 1.0)]
    assert to_route_offers(offers) == (
        RouteOffer(0, "n0", 2, 5, 1_500_000_000_000, 20.0, 8.0),
        RouteOffer(1, "n1", 0, 2, 250_000_000_000, 20.0, 10.0),
    )
    replaced = to_route_offers(offers, [2.0, 3.0])
    assert [o.price_wei_per_token for o in replaced] == [2 * 10**12, 3 * 10**12]
    with pytest.raises(ValueError, match="one price per offer"):
        to_route_offers(offers, [1.0])


def test_markdown_table_aligns_numbers_right() -> None:
    table = markdown_table(["name", "x"], [["a", 1.5], ["b", "—"]])
    assert table == "| name | x |\n|:---|---:|\n| a | 1.5 |\n| b | — |"
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [[1]])


def test_median_cost_node() -> None:
    assert median_cost_node([3.0, 1.0, 2.0]) == 2
    assert median_cost_node([1.0, 2.0, 3.0, 4.0]) == 1  # median 2.5: nodes 1 and 2 tie, lowest index


def test_foc_error_literal() -> None:
    market = Market([(0, 2), (0, 2)], [1.0, 1.0], PricingRules(alpha=1.0))
    assert foc_error(market, [2.0, 2.0]) == pytest.approx(0.0, abs=1e-15)  # p = T/(α(1 − ½)) = 2
    assert foc_error(market, [3.0, 3.0]) == pytest.approx(0.5)
    assert np.isnan(foc_error(market, [0.0, 0.0]))  # both at the floor: no interior node


# ------------------------------------------------------------------------------------- route counts


def _brute_force_routes(offers: list[RouteOffer], num_layers: int) -> set[tuple[object, ...]]:
    """Every path over every sub-span edge, merged by build_route, as distinct hop tuples."""
    found: set[tuple[object, ...]] = set()

    def extend(j: int, segments: list[tuple[RouteOffer, int, int]]) -> None:
        if j == num_layers:
            found.add(build_route(segments).hops)
            return
        for offer in offers:
            if offer.start <= j < offer.end:
                for k in range(j + 1, offer.end + 1):
                    extend(k, [*segments, (offer, j, k)])

    extend(0, [])
    return found


def test_count_routes_literals() -> None:
    a = RouteOffer(0, "a", 0, 2, 1, 1.0, 1.0)
    b = RouteOffer(1, "b", 0, 2, 2, 1.0, 1.0)
    # a, b, a[0,1)+b[1,2), b[0,1)+a[1,2): splitting one offer merges back into it.
    assert count_routes([a, b], 2)[0][2] == 4
    assert count_routes([RouteOffer(0, "a", 0, 3, 1, 1.0, 1.0)], 3)[0][1] == 1
    assert count_routes([a], 3)[0][1] == 0


@pytest.mark.parametrize("seed", range(4))
def test_count_routes_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_layers = 5
    offers = []
    for i in range(5):
        start = int(rng.integers(0, num_layers))
        offers.append(RouteOffer(i, f"n{i}", start, int(rng.integers(start + 1, num_layers + 1)),
                                 int(rng.integers(1, 9)), float(rng.integers(1, 5)), float(rng.integers(1, 5))))
    offers.append(RouteOffer(5, "n5", 0, num_layers, 10, 1.0, 3.0))  # some route always exists
    routes = _brute_force_routes(offers, num_layers)
    assert count_routes(offers, num_layers)[0][len(offers)] == len(routes)
    cloud = route_cloud(offers, num_layers, max_routes=10**6, rng=np.random.default_rng(0))
    assert cloud.enumerated and cloud.total_routes == cloud.price_wei_per_token.size == len(routes)


def test_route_cloud_samples_when_there_are_too_many() -> None:
    offers = to_route_offers(simulate_network(8, 12, seed=0, min_span=2, max_span=6))
    first = route_cloud(offers, 12, max_routes=50, rng=np.random.default_rng(7))
    again = route_cloud(offers, 12, max_routes=50, rng=np.random.default_rng(7))
    assert not first.enumerated and first.total_routes > 50
    assert 0 < first.price_wei_per_token.size <= 50
    assert np.array_equal(first.price_wei_per_token, again.price_wei_per_token)
    assert np.array_equal(first.latency_ms, again.latency_ms)
    with pytest.raises(ValueError, match="max_routes"):
        route_cloud(offers, 12, max_routes=0, rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------- Figures 1–2 (routing)


def test_no_route_beats_the_frontier(run: Experiments) -> None:
    routing = run.routing
    front_price = np.array([r.price_wei_per_token for r in routing.frontier])
    front_latency = np.array([r.latency_ms for r in routing.frontier])
    for price, latency in zip(routing.cloud.price_wei_per_token, routing.cloud.latency_ms, strict=True):
        assert np.any((front_price <= price) & (front_latency <= latency + 1e-9))
    assert np.all(np.diff(front_price) > 0) and np.all(np.diff(front_latency) < 0)


def test_alpha_routes_are_hull_points_from_fastest_to_cheapest(run: Experiments) -> None:
    routing = run.routing
    routes = dict(routing.alpha_routes)
    assert routes[1.0].price_wei_per_token == routing.frontier[0].price_wei_per_token
    assert routes[0.0].latency_ms == routing.frontier[-1].latency_ms
    hull = {(r.price_wei_per_token, r.latency_ms) for r in routing.hull}
    assert all((r.price_wei_per_token, r.latency_ms) in hull for r in routes.values())
    ordered = [routes[a] for a in sorted(routes)]
    assert all(x.price_wei_per_token >= y.price_wei_per_token for x, y in itertools.pairwise(ordered))
    assert routing.figure_route is routes[run.config.figure_alpha]
    for alpha, route in routes.items():  # the frontier's α-selection agrees with the router
        chosen = alpha_optimal(routing.frontier, alpha)
        assert chosen.price_wei_per_token == route.price_wei_per_token
        assert chosen.latency_ms == pytest.approx(route.latency_ms, rel=1e-12)


# ------------------------------------------------------------------------------- Figure 3 (revenue)


def test_two_identical_nodes_revenue_peak_literal() -> None:
    # Symmetric equilibrium of two nodes at α = 1: p = 2, P = ½, R = 1; the rival stays at 2.
    curves = revenue_curves(PricingRules(alpha=1.0), [1.0], [1.0], n_grid=401)
    assert curves.rival_prices == pytest.approx([2.0])
    assert curves.best_prices == pytest.approx([2.0])
    assert curves.best_shares == pytest.approx([0.5])
    assert curves.best_revenues == pytest.approx([1.0])


def test_lower_cost_means_higher_optimal_price_and_revenue(run: Experiments) -> None:
    curves = run.revenue
    assert np.all(np.diff(curves.costs) > 0)
    assert np.all(np.diff(curves.best_prices) < 0)
    assert np.all(np.diff(curves.best_revenues) < 0)
    # The marked maxima are the curves' maxima (the grid cannot beat them, and gets close).
    grid_best = curves.revenues.max(axis=1)
    assert np.all(grid_best <= curves.best_revenues + 1e-12)
    assert np.all(grid_best >= curves.best_revenues - 1e-3)


# -------------------------------------------------------------------------- network: Figure 4, tables


def test_convergence_rows_reach_tolerance(run: Experiments) -> None:
    config = run.config
    rows = run.network.convergence
    assert [(r.alpha, r.method) for r in rows] == [
        (a, m) for a in config.convergence_alphas
        for m in ("gradient", "best_response/gauss_seidel", "best_response/jacobi")
    ]
    for row in rows:
        assert row.converged, row
        tol = config.gradient_tol if row.method == "gradient" else config.best_response_tol
        assert row.residual <= tol
        assert row.foc_error <= 1e-6
        assert row.max_gain <= 1e-9


def test_trajectory_is_the_gradient_dynamic(run: Experiments) -> None:
    trace, market, config = run.network.trace, run.network.market, run.config
    result = gradient_equilibrium(market, learning_rate=config.learning_rate, max_step=config.max_step,
                                  tol=config.gradient_tol)
    assert trace.prices.shape == (result.iterations + 1, market.n_nodes)
    assert np.array_equal(trace.prices[-1], result.prices)
    assert np.array_equal(trace.residuals, np.array(result.residuals))
    assert trace.residuals[-1] <= config.gradient_tol < trace.residuals[0]
    assert np.allclose(trace.prices[-1], trace.equilibrium.prices, atol=1e-6)
    assert np.array_equal(trace.prices[0], np.ones(market.n_nodes))


def test_gradient_trajectory_respects_iteration_limit() -> None:
    market = Market([(0, 3), (1, 4)], [0.5, 1.0], PricingRules(alpha=0.5))
    assert gradient_trajectory(market, learning_rate=0.01, max_iterations=5).shape == (6, 2)


def test_route_table_alpha_one_cheapest_alpha_zero_fastest(run: Experiments) -> None:
    rows = {row.alpha: row.route for row in run.network.routes}
    assert set(rows) == set(run.config.route_alphas)
    assert rows[1.0].price_wei_per_token == min(r.price_wei_per_token for r in rows.values())
    assert rows[0.0].latency_ms == min(r.latency_ms for r in rows.values())
    ordered = [rows[a] for a in sorted(rows)]
    assert all(x.latency_ms <= y.latency_ms for x, y in itertools.pairwise(ordered))
    # Routes are priced at the equilibrium: each hop's price is its node's equilibrium price in wei.
    prices = run.network.equilibrium.prices
    for hop in rows[0.5].hops:
        assert hop.price_wei_per_token == round(prices[hop.offer_id] * 10**12)


def test_equilibrium_price_and_revenue_fall_with_cost(run: Experiments) -> None:
    sweep = run.network.sweep
    assert sweep.converged
    assert sweep.node == median_cost_node(run.network.market.costs)
    assert np.all(np.diff(sweep.prices) < 0) and np.all(np.diff(sweep.revenues) < 0)


# --------------------------------------------------------------------------------- report, seeds


def test_report_has_every_table_and_figure(run: Experiments) -> None:
    report = render_report(run, "python scripts/figures.py --out x --small")
    for file in FIGURE_FILES.values():
        assert f"]({file})" in report
    for header in ("| α | method | iterations | residual | FOC max error | max unilateral gain | converged |",
                   "| client α | price (ref./token)", "| cost c | equilibrium price p |",
                   "| cost c | optimal price p* |", "| quantity | min | median |", "| # | price (ref.) |"):
        assert header in report
    assert "python scripts/figures.py --out x --small" in report and "seed 0" in report
    assert "nan" not in report.lower()


def test_same_seed_same_data_other_seed_other_data(run: Experiments) -> None:
    again = run_experiments(tiny())
    assert render_report(again, "cmd") == render_report(run, "cmd")
    assert np.array_equal(again.network.trace.prices, run.network.trace.prices)
    assert np.array_equal(again.routing.cloud.latency_ms, run.routing.cloud.latency_ms)
    assert np.array_equal(again.revenue.revenues, run.revenue.revenues)
    other = run_experiments(tiny(seed=1))
    assert not np.array_equal(other.network.market.costs, run.network.market.costs)
    assert render_report(other, "cmd") != render_report(run, "cmd")
