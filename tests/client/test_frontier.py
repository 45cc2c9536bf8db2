"""Pareto frontier (client.frontier): literals, brute force on small networks, a plain label DP on larger
ones, and the link between the frontier's convex hull and the α-routes of client.routing."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from client.frontier import (
    alpha_optimal,
    convex_hull_points,
    frontier_units,
    hull_alpha_ranges,
    nondominated_offer_rows,
    pareto_frontier,
)
from client.routing import (
    NoRouteError,
    OfferTable,
    Route,
    RouteOffer,
    find_route,
    objective_units,
    route_key,
    route_objective,
)
from tests.client.test_routing import FIGURE_1, all_route_points, assert_valid, covered, networks, offer

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Point = tuple[int, Fraction]


def points(frontier: list[Route]) -> list[Point]:
    return [(r.price_wei_per_token, Fraction(r.latency_ms)) for r in frontier]


def nondominated(candidates: set[Point] | list[Point]) -> list[Point]:
    """Non-dominated, distinct points sorted by price (a plain sort and scan)."""
    best: list[Point] = []
    for price, latency in sorted(set(candidates)):
        if not best or latency < best[-1][1]:
            best.append((price, latency))
    return best


def label_dp_frontier(offers: list[RouteOffer], num_layers: int) -> list[Point]:
    """Reference: Pareto labels over the explicit sub-span graph, no pruning beyond dominance."""
    labels: list[list[Point]] = [[(0, Fraction(0))]]
    for j in range(1, num_layers + 1):
        reach: list[Point] = []
        for o in offers:
            for i in range(o.start, j):
                if j <= o.end:
                    hop = Fraction(o.rtt_ms) + Fraction(o.compute_ms_per_layer) * (j - i)
                    reach.extend((p + o.price_wei_per_token, t + hop) for p, t in labels[i])
        labels.append(nondominated(reach))
    return labels[num_layers]


def assert_frontier_shape(frontier: list[Route], offers: list[RouteOffer], num_layers: int) -> None:
    for route in frontier:
        assert_valid(route, offers, num_layers)
    for a, b in itertools.pairwise(frontier):
        assert a.price_wei_per_token < b.price_wei_per_token and a.latency_ms > b.latency_ms


# ------------------------------------------------------------------------------------------- literals

# Two stages, a slow cheap and a fast dear node each: (2, 40), (4, 23) twice over, (6, 6) — collinear.
TWO_STAGES = [offer(1, 0, 2, 1, 10.0, 5.0), offer(2, 0, 2, 3, 1.0, 1.0),
              offer(3, 2, 4, 1, 10.0, 5.0), offer(4, 2, 4, 3, 1.0, 1.0)]


def test_two_stage_frontier_hull_and_alpha_ranges() -> None:
    frontier = pareto_frontier(TWO_STAGES, 4)
    assert points(frontier) == [(2, 40), (4, 23), (6, 6)]
    assert [h.offer_id for h in frontier[0].hops] == [1, 3]
    assert [h.offer_id for h in frontier[-1].hops] == [2, 4]
    hull = convex_hull_points(frontier)
    assert points(hull) == [(2, 40), (6, 6)]  # (4, 23) lies on the segment between them
    # Units P* = 2 wei, L* = 6 ms: scaled points (1, 20/3) and (3, 1) tie at α = 17/23.
    assert hull_alpha_ranges(hull) == [(pytest.approx(17 / 23), 1.0), (0.0, pytest.approx(17 / 23))]
    assert alpha_optimal(frontier, 0.9) is frontier[0]
    assert alpha_optimal(frontier, 0.5) is frontier[-1]


def test_figure_1_frontier() -> None:
    frontier = pareto_frontier(FIGURE_1, 6)
    assert points(frontier) == [(30, 21), (40, 18), (50, 10), (80, 9)]
    assert points(frontier) == nondominated(all_route_points(FIGURE_1, 6))
    assert points(convex_hull_points(frontier)) == [(30, 21), (50, 10), (80, 9)]
    assert frontier_units(frontier) == objective_units(FIGURE_1, 6)


def test_single_route_network_and_errors() -> None:
    only = [offer(1, 0, 3, 7, 2.0, 1.0)]
    frontier = pareto_frontier(only, 3)
    assert points(frontier) == [(7, 5)]
    assert convex_hull_points(frontier) == frontier and hull_alpha_ranges(frontier) == [(0.0, 1.0)]
    with pytest.raises(NoRouteError) as caught:
        pareto_frontier(only, 5)
    assert caught.value.missing == ((3, 5),)
    with pytest.raises(ValueError, match="start >= end"):
        pareto_frontier([offer(1, 2, 2, 1, 1.0, 1.0)], 3)
    with pytest.raises(ValueError, match="empty frontier"):
        alpha_optimal([], 0.5)
    with pytest.raises(ValueError, match="alpha"):
        alpha_optimal(frontier, 2.0)


def test_dominated_offers_are_pruned_first() -> None:
    offers = [offer(1, 0, 4, 5, 2.0, 1.0),
              offer(2, 1, 3, 5, 2.0, 1.0),   # inside 1 and no better: pruned
              offer(3, 1, 3, 4, 2.0, 1.0),   # cheaper than 1: kept
              offer(5, 0, 4, 5, 2.0, 0.5),   # faster per layer than 1, so 1 goes
              offer(6, 2, 4, 5, 1.0, 1.0),   # shorter round trip than 5: kept
              offer(7, 2, 4, 5, 1.0, 1.0)]   # identical to 6: the lower id stays
    table = OfferTable.build(offers, 4)
    assert [table.offers[r].offer_id for r in nondominated_offer_rows(table)] == [3, 5, 6]
    assert points(pareto_frontier(offers, 4)) == nondominated(all_route_points(offers, 4))


# --------------------------------------------------------------------------------------- properties


@PROPERTY
@given(networks())
def test_frontier_equals_brute_force(network: tuple[list[RouteOffer], int]) -> None:
    offers, num_layers = network
    assume(covered(offers, num_layers))
    frontier = pareto_frontier(offers, num_layers)
    assert_frontier_shape(frontier, offers, num_layers)
    assert points(frontier) == nondominated(all_route_points(offers, num_layers))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks(huge=True))
def test_frontier_equals_brute_force_past_int64(network: tuple[list[RouteOffer], int]) -> None:
    offers, num_layers = network
    assume(covered(offers, num_layers))
    frontier = pareto_frontier(offers, num_layers)
    assert_frontier_shape(frontier, offers, num_layers)
    assert points(frontier) == nondominated(all_route_points(offers, num_layers))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_frontier_equals_plain_label_dp_on_larger_networks(seed: int) -> None:
    """Dozens of offers over 24 layers: enough labels and pending entries for every pruning rule to act."""
    rng = np.random.default_rng(seed)
    num_layers, count = 24, int(rng.integers(20, 60))
    offers = [offer(i, int(s), int(min(s + length, num_layers)), int(rng.integers(1, 40)),
                    int(rng.integers(0, 200)) / 8, int(rng.integers(0, 40)) / 8)
              for i, (s, length) in enumerate(zip(rng.integers(0, num_layers, count),
                                                  rng.integers(1, 9, count), strict=True))]
    assume(covered(offers, num_layers))
    frontier = pareto_frontier(offers, num_layers)
    assert_frontier_shape(frontier, offers, num_layers)
    assert points(frontier) == label_dp_frontier(offers, num_layers)


@PROPERTY
@given(networks(exact=False))
def test_frontier_shape_with_arbitrary_floats(network: tuple[list[RouteOffer], int]) -> None:
    offers, num_layers = network
    assume(covered(offers, num_layers))
    frontier = pareto_frontier(offers, num_layers)
    assert_frontier_shape(frontier, offers, num_layers)
    cheapest, fastest = find_route(offers, num_layers, 1.0), find_route(offers, num_layers, 0.0)
    assert frontier[0].price_wei_per_token == cheapest.price_wei_per_token
    assert frontier[-1].latency_ms == pytest.approx(fastest.latency_ms, rel=1e-12)


@PROPERTY
@given(networks(), st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0]) | st.floats(0.0, 1.0))
def test_alpha_routes_lie_on_the_frontier(network: tuple[list[RouteOffer], int], alpha: float) -> None:
    offers, num_layers = network
    assume(covered(offers, num_layers))
    frontier = pareto_frontier(offers, num_layers)
    units = frontier_units(frontier)
    assert units == objective_units(offers, num_layers)
    route = find_route(offers, num_layers, alpha)
    best = min(route_objective(r, alpha, units) for r in frontier)
    assert route_objective(route, alpha, units) == pytest.approx(best, rel=1e-12, abs=1e-15)
    assert route_objective(alpha_optimal(frontier, alpha), alpha, units) == pytest.approx(best, rel=1e-12)
    if alpha * 8 == int(alpha * 8):  # binary fractions: every objective is exact, so is the point
        assert (route.price_wei_per_token, Fraction(route.latency_ms)) in points(frontier)
        assert route_key(route, alpha, units) == route_key(alpha_optimal(frontier, alpha), alpha, units)


@PROPERTY
@given(networks())
def test_every_hull_point_is_alpha_optimal_for_some_alpha(network: tuple[list[RouteOffer], int]) -> None:
    offers, num_layers = network
    assume(covered(offers, num_layers))
    frontier = pareto_frontier(offers, num_layers)
    hull = convex_hull_points(frontier)
    assert hull[0] is frontier[0] and hull[-1] is frontier[-1]
    assert set(points(hull)) <= set(points(frontier))
    ranges = hull_alpha_ranges(hull)
    assert ranges[0][1] == 1.0 and ranges[-1][0] == 0.0
    assert all(lo < hi for lo, hi in ranges)
    assert all(a[0] == b[1] for a, b in itertools.pairwise(ranges))  # neighbours share an endpoint
    units = frontier_units(frontier)
    for route, (lo, hi) in zip(hull, ranges, strict=True):
        alpha = 1.0 if hi == 1.0 else 0.0 if lo == 0.0 else (lo + hi) / 2
        chosen = find_route(offers, num_layers, alpha)
        expected = route_objective(route, alpha, units)
        assert route_objective(chosen, alpha, units) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        # Strictly inside its range the hull point is the unique optimum.
        if lo > 0.0 and hi < 1.0:
            assert (chosen.price_wei_per_token, chosen.latency_ms) == (route.price_wei_per_token,
                                                                       route.latency_ms)


@PROPERTY
@given(networks(max_layers=6, max_offers=10))
def test_pruned_offers_are_dominated_by_kept_ones(network: tuple[list[RouteOffer], int]) -> None:
    offers, num_layers = network
    table = OfferTable.build(offers, num_layers)
    kept = {table.offers[r] for r in nondominated_offer_rows(table)}

    def dominates(a: RouteOffer, b: RouteOffer) -> bool:
        return (a.start <= b.start and b.end <= a.end and a.price_wei_per_token <= b.price_wei_per_token
                and a.rtt_ms <= b.rtt_ms and a.compute_ms_per_layer <= b.compute_ms_per_layer)

    for o in offers:
        beaters = [k for k in offers if k != o and dominates(k, o)
                   and (not dominates(o, k) or k.offer_id < o.offer_id)]
        if o in kept:
            assert not beaters
        else:
            assert any(dominates(k, o) for k in kept)
