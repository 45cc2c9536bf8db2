"""Routing (client.routing): literals for the paper's model, then properties against networkx and Alg. 1/2."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import networkx as nx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from client.routing import (
    CycleError,
    Hop,
    NoRouteError,
    ObjectiveUnits,
    Route,
    RouteOffer,
    UnreachableError,
    build_route,
    dag_shortest_path,
    find_route,
    find_route_reference,
    objective_units,
    route_key,
    route_objective,
    topological_sort,
    uncovered_layers,
)

PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def offer(offer_id: int, start: int, end: int, price: int, rtt_ms: float, ms_per_layer: float) -> RouteOffer:
    return RouteOffer(offer_id, f"node-{offer_id}", start, end, price, rtt_ms, ms_per_layer)


def spans(route: Route) -> list[tuple[int, int, int]]:
    return [(hop.offer_id, hop.start, hop.end) for hop in route.hops]


def point(route: Route) -> tuple[int, float]:
    return route.price_wei_per_token, route.latency_ms


def assert_valid(route: Route, offers: list[RouteOffer], num_layers: int) -> None:
    """Hops chain 0 -> m inside their offers, never repeat an offer back to back, and add up."""
    by_id = {o.offer_id: o for o in offers}
    assert route.hops[0].start == 0 and route.hops[-1].end == num_layers
    for before, after in zip(route.hops, route.hops[1:], strict=False):
        assert before.end == after.start and before.offer_id != after.offer_id
    for hop in route.hops:
        source = by_id[hop.offer_id]
        assert source.start <= hop.start < hop.end <= source.end and hop.node == source.node
        assert hop.price_wei_per_token == source.price_wei_per_token
        assert hop.latency_ms == source.rtt_ms + source.compute_ms_per_layer * (hop.end - hop.start)
    assert route.price_wei_per_token == sum(h.price_wei_per_token for h in route.hops)
    assert route.latency_ms == math.fsum(h.latency_ms for h in route.hops)


# A Figure-1-like network: 6 layers, 7 nodes whose ranges chain in several ways (ints, so sums are exact).
FIGURE_1 = [
    offer(1, 0, 2, 10, 5.0, 1.0),
    offer(2, 0, 3, 30, 2.0, 1.0),
    offer(3, 2, 4, 10, 5.0, 1.0),
    offer(4, 3, 6, 20, 2.0, 1.0),
    offer(5, 4, 6, 10, 5.0, 1.0),
    offer(6, 2, 6, 50, 1.0, 1.0),
    offer(7, 0, 6, 200, 4.0, 1.0),
]


# ------------------------------------------------------------------------------------------- literals


def test_figure_1_cheapest_and_fastest() -> None:
    cheapest = find_route(FIGURE_1, 6, 1.0)
    assert spans(cheapest) == [(1, 0, 2), (3, 2, 4), (5, 4, 6)]
    assert point(cheapest) == (30, 21.0)
    fastest = find_route(FIGURE_1, 6, 0.0)
    # B then F from layer 3 (9 ms, 80 wei) ties B[0,2) then F (9 ms, 80 wei) and the single node 7
    # (10 ms); among equal latency the cheaper wins, and the first tie by offer id.
    assert point(fastest) == (80, 9.0)
    assert_valid(cheapest, FIGURE_1, 6)
    assert_valid(fastest, FIGURE_1, 6)


def test_figure_1_middle_alpha_and_units() -> None:
    units = objective_units(FIGURE_1, 6)
    assert units == ObjectiveUnits(price_wei_per_token=30, latency_ms=9.0)
    # B then D: 50 wei, 10 ms -> 0.5·50/30 + 0.5·10/9 ≈ 1.389, the best at α = ½ (A C E scores 1.667).
    route = find_route(FIGURE_1, 6, 0.5)
    assert spans(route) == [(2, 0, 3), (4, 3, 6)]
    assert route_objective(route, 0.5, units) == pytest.approx(0.5 * 50 / 30 + 0.5 * 10 / 9)


def test_route_may_use_part_of_a_range() -> None:
    # Both routes cost 10 wei; the slow-per-layer node 2 should do as few layers as possible.
    offers = [offer(1, 0, 3, 5, 1.0, 1.0), offer(2, 2, 4, 5, 1.0, 10.0)]
    route = find_route(offers, 4, 1.0)
    assert route.hops == (Hop(1, "node-1", 0, 3, 5, 4.0), Hop(2, "node-2", 3, 4, 5, 11.0))
    assert point(route) == (10, 15.0)


def test_alpha_extremes_pick_cheapest_and_fastest() -> None:
    offers = [offer(1, 0, 2, 1, 10.0, 5.0), offer(2, 0, 2, 3, 1.0, 1.0),
              offer(3, 2, 4, 1, 10.0, 5.0), offer(4, 2, 4, 3, 1.0, 1.0)]
    assert spans(find_route(offers, 4, 1.0)) == [(1, 0, 2), (3, 2, 4)]
    assert spans(find_route(offers, 4, 0.0)) == [(2, 0, 2), (4, 2, 4)]


def test_ties_at_alpha_1_prefer_lower_latency_and_at_alpha_0_lower_price() -> None:
    offers = [offer(1, 0, 1, 5, 9.0, 1.0), offer(2, 0, 1, 5, 3.0, 1.0), offer(3, 0, 1, 7, 3.0, 1.0)]
    assert spans(find_route(offers, 1, 1.0)) == [(2, 0, 1)]
    assert spans(find_route(offers, 1, 0.0)) == [(2, 0, 1)]
    # Exactly equal routes: the lowest offer id wins, whatever order the offers come in.
    twins = [offer(9, 0, 1, 5, 3.0, 1.0), offer(4, 0, 1, 5, 3.0, 1.0)]
    for alpha in (0.0, 0.5, 1.0):
        assert spans(find_route(twins, 1, alpha)) == [(4, 0, 1)]


def test_interior_ties_go_to_the_objective_with_the_smaller_weight() -> None:
    # Units: P* = 2 (route a), L* = 2 ms (route b). a = (2 wei, 4 ms), b = (4 wei, 2 ms): at α = ½ both
    # score 1.5; α >= ½ breaks the tie on latency (b), α < ½ would break it on price.
    offers = [offer(1, 0, 1, 2, 4.0, 0.0), offer(2, 0, 1, 4, 2.0, 0.0)]
    assert spans(find_route(offers, 1, 0.5)) == [(2, 0, 1)]


def test_consecutive_hops_on_one_offer_merge() -> None:
    free = offer(1, 0, 4, 0, 0.0, 0.5)
    route = build_route([(free, 0, 2), (free, 2, 4)])
    assert route == Route((Hop(1, "node-1", 0, 4, 0, 2.0),), 0, 2.0)
    assert spans(find_route([free], 4, 0.5)) == [(1, 0, 4)]


def test_no_route_names_the_uncovered_layers() -> None:
    offers = [offer(1, 0, 3, 1, 1.0, 1.0), offer(2, 2, 4, 1, 1.0, 1.0), offer(3, 6, 7, 1, 1.0, 1.0),
              offer(4, 8, 9, 1, 1.0, 1.0)]
    with pytest.raises(NoRouteError) as caught:
        find_route(offers, 10, 0.5)
    assert caught.value.missing == ((4, 6), (7, 8), (9, 10))
    assert "[4, 6)" in str(caught.value)
    with pytest.raises(NoRouteError) as caught:
        find_route([], 3, 1.0)
    assert caught.value.missing == ((0, 3),)
    assert uncovered_layers(offers[:2], 4) == ()


def test_units_fall_back_when_routes_are_free_or_instant() -> None:
    free_slow = offer(1, 0, 2, 0, 10.0, 5.0)
    paid_fast = offer(2, 0, 2, 8, 1.0, 1.0)
    assert objective_units([free_slow, paid_fast], 2) == ObjectiveUnits(8, 3.0)
    assert objective_units([free_slow], 2) == ObjectiveUnits(1, 20.0)
    assert objective_units([offer(1, 0, 2, 0, 0.0, 0.0)], 2) == ObjectiveUnits(1, 1.0)
    instant_but_dear = [offer(1, 0, 2, 6, 0.0, 0.0), offer(2, 0, 2, 2, 4.0, 0.0)]
    assert objective_units(instant_but_dear, 2) == ObjectiveUnits(2, 4.0)
    # With a free route, α = 1 still returns it and α = ½ weighs its latency against the paid one's price.
    assert spans(find_route([free_slow, paid_fast], 2, 1.0)) == [(1, 0, 2)]
    assert spans(find_route([free_slow, paid_fast], 2, 0.5)) == [(2, 0, 2)]


def test_huge_prices_stay_exact() -> None:
    big = 2**70
    offers = [offer(1, 0, 2, big + 1, 1.0, 1.0), offer(2, 0, 2, big, 5.0, 1.0), offer(3, 2, 3, big, 1.0, 1.0)]
    route = find_route(offers, 3, 1.0)
    assert spans(route) == [(2, 0, 2), (3, 2, 3)] and route.price_wei_per_token == 2 * big
    assert spans(find_route(offers, 3, 0.0)) == [(1, 0, 2), (3, 2, 3)]
    assert point(find_route_reference(offers, 3, 1.0)) == point(route)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_bad_alpha(alpha: object) -> None:
    with pytest.raises(ValueError, match="alpha"):
        find_route(FIGURE_1, 6, alpha)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_layers", [0, -3, 2.5, True, "6"])
def test_bad_num_layers(num_layers: object) -> None:
    with pytest.raises(ValueError, match="num_layers"):
        find_route(FIGURE_1, num_layers, 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (offer(99, 3, 3, 1, 1.0, 1.0), r"offers \[99\] have start >= end"),
        (offer(99, 4, 2, 1, 1.0, 1.0), r"offers \[99\] have start >= end"),
        (offer(99, -1, 2, 1, 1.0, 1.0), r"offers \[99\] have layers outside \[0, 6\]"),
        (offer(99, 2, 7, 1, 1.0, 1.0), r"offers \[99\] have layers outside \[0, 6\]"),
        (offer(99, 0, 1, -1, 1.0, 1.0), "price_wei_per_token must be >= 0"),
        (offer(99, 0, 1, 1.5, 1.0, 1.0), "price_wei_per_token must be integers"),  # type: ignore[arg-type]
        (offer(99, 0.0, 1, 1, 1.0, 1.0), "start must be integers"),  # type: ignore[arg-type]
        (offer(99, 0, 1, 1, -1.0, 1.0), "rtt_ms must be finite and >= 0"),
        (offer(99, 0, 1, 1, 1.0, math.nan), "compute_ms_per_layer must be finite and >= 0"),
        (offer(1, 0, 1, 1, 1.0, 1.0), r"duplicate offer_id \[1\]"),
    ],
)
def test_bad_offers(bad: RouteOffer, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        find_route([*FIGURE_1, bad], 6, 0.5)


# --------------------------------------------------------------------------------- Algorithms 1 and 2


def test_topological_sort_literal_and_cycle() -> None:
    graph = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    assert topological_sort(graph) == ["a", "c", "b", "d"]
    with pytest.raises(CycleError) as caught:
        topological_sort({1: [2], 2: [3], 3: [1]})
    assert caught.value.vertex in {1, 2, 3}


def test_topological_sort_handles_long_chains_without_recursion() -> None:
    chain = {i: [i + 1] for i in range(20_000)}
    assert topological_sort(chain) == list(range(20_001))


def test_dag_shortest_path_literal_and_unreachable() -> None:
    graph = {0: [(1, 4.0), (2, 1.0)], 2: [(1, 2.0), (3, 7.0)], 1: [(3, 1.0)], 3: []}
    assert dag_shortest_path(graph, 0, 3, 0.0) == (4.0, [0, 2, 1, 3])
    with pytest.raises(UnreachableError) as caught:
        dag_shortest_path(graph, 3, 0, 0.0)
    assert (caught.value.source, caught.value.target) == (3, 0)


@st.composite
def dags(draw: st.DrawFn) -> tuple[dict[int, list[tuple[int, float]]], list[tuple[int, int]]]:
    """A random DAG on shuffled labels (so label order is not a topological order), with weights."""
    size = draw(st.integers(1, 12))
    labels = draw(st.permutations(range(size)))
    edges = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, size - 1)), max_size=40))
    weighted = {(labels[min(a, b)], labels[max(a, b)]) for a, b in edges if a != b}
    graph: dict[int, list[tuple[int, float]]] = {v: [] for v in labels}
    for u, v in sorted(weighted):
        graph[u].append((v, float(draw(st.integers(0, 9)))))
    return graph, sorted(weighted)


@PROPERTY
@given(dags())
def test_topological_sort_is_a_valid_order(dag: tuple[dict[int, list[tuple[int, float]]], list]) -> None:
    graph, edges = dag
    order = topological_sort({u: [v for v, _ in out] for u, out in graph.items()})
    assert sorted(order) == sorted(graph)
    where = {v: i for i, v in enumerate(order)}
    assert all(where[u] < where[v] for u, v in edges)


@PROPERTY
@given(dags(), st.data())
def test_dag_shortest_path_matches_networkx(dag: tuple[dict[int, list[tuple[int, float]]], list],
                                            data: st.DataObject) -> None:
    graph, _ = dag
    source, target = data.draw(st.sampled_from(sorted(graph))), data.draw(st.sampled_from(sorted(graph)))
    reference = nx.DiGraph()
    reference.add_nodes_from(graph)
    reference.add_weighted_edges_from((u, v, w) for u, out in graph.items() for v, w in out)
    if not nx.has_path(reference, source, target):
        with pytest.raises(UnreachableError):
            dag_shortest_path(graph, source, target, 0.0)
        return
    distance, path = dag_shortest_path(graph, source, target, 0.0)
    assert distance == nx.shortest_path_length(reference, source, target, weight="weight")
    assert path[0] == source and path[-1] == target
    assert distance == sum(reference[u][v]["weight"] for u, v in itertools.pairwise(path))


# --------------------------------------------------------------------------------- properties on offers


@st.composite
def networks(draw: st.DrawFn, max_layers: int = 8, max_offers: int = 8, exact: bool = True,
             huge: bool = False) -> tuple[list[RouteOffer], int]:
    """Random offer sets. ``exact`` draws small integers and eighths, so every sum is exact in float64;
    otherwise any floats. ``huge`` draws prices past int64 (exact Python-int arithmetic)."""
    num_layers = draw(st.integers(1, max_layers))
    count = draw(st.integers(0, max_offers))
    prices = st.sampled_from([0, 3, 2**64, 2**64 + 1, 2**64 + 7]) if huge else st.integers(0, 20)
    times = st.integers(0, 80).map(lambda t: t / 8) if exact else st.floats(0.0, 50.0)
    offers = []
    for offer_id in range(count):
        start = draw(st.integers(0, num_layers - 1))
        end = draw(st.integers(start + 1, num_layers))
        offers.append(RouteOffer(offer_id, f"n{offer_id % 3}", start, end, draw(prices), draw(times),
                                 draw(times)))
    return offers, num_layers


def covered(offers: list[RouteOffer], num_layers: int) -> bool:
    return all(any(o.start <= layer < o.end for o in offers) for layer in range(num_layers))


def explicit_multigraph(offers: list[RouteOffer], num_layers: int, alpha: float,
                        units: ObjectiveUnits) -> nx.MultiDiGraph:
    """Every sub-span edge of every offer, weighted by the normalized α-objective."""
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(range(num_layers + 1))
    for o in offers:
        for i in range(o.start, o.end):
            for j in range(i + 1, o.end + 1):
                latency_ms = o.rtt_ms + o.compute_ms_per_layer * (j - i)
                weight = (alpha * o.price_wei_per_token / units.price_wei_per_token
                          + (1 - alpha) * latency_ms / units.latency_ms)
                graph.add_edge(i, j, weight=weight)
    return graph


def brute_force_units(offers: list[RouteOffer], num_layers: int) -> ObjectiveUnits:
    """P*, L* and their fallbacks from every route's (price, latency), enumerated exactly."""
    points = all_route_points(offers, num_layers)
    cheapest = min(points)
    fastest = min(points, key=lambda p: (p[1], p[0]))
    return ObjectiveUnits(cheapest[0] or fastest[0] or 1, float(fastest[1] or cheapest[1] or 1))


def all_route_points(offers: list[RouteOffer], num_layers: int) -> set[tuple[int, Fraction]]:
    """The exact (price, latency) of every path 0 -> m over every sub-span edge (no pruning at all)."""
    reach: list[set[tuple[int, Fraction]]] = [set() for _ in range(num_layers + 1)]
    reach[0].add((0, Fraction(0)))
    for j in range(1, num_layers + 1):
        for o in offers:
            for i in range(o.start, min(j, o.end)):
                if j <= o.end:
                    hop = Fraction(o.rtt_ms) + Fraction(o.compute_ms_per_layer) * (j - i)
                    reach[j].update((p + o.price_wei_per_token, t + hop) for p, t in reach[i])
    return reach[num_layers]


@PROPERTY
@given(networks(), st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0]))
def test_fast_path_equals_explicit_algorithm_2(network: tuple[list[RouteOffer], int], alpha: float) -> None:
    offers, num_layers = network
    assume(covered(offers, num_layers))
    fast, reference = find_route(offers, num_layers, alpha), find_route_reference(offers, num_layers, alpha)
    assert_valid(fast, offers, num_layers)
    assert_valid(reference, offers, num_layers)
    units = objective_units(offers, num_layers)
    assert route_key(fast, alpha, units) == route_key(reference, alpha, units)


@PROPERTY
@given(networks(huge=True), st.sampled_from([0.0, 1.0]))
def test_fast_path_equals_explicit_algorithm_2_past_int64(network: tuple[list[RouteOffer], int],
                                                         alpha: float) -> None:
    offers, num_layers = network
    assume(covered(offers, num_layers))
    fast, reference = find_route(offers, num_layers, alpha), find_route_reference(offers, num_layers, alpha)
    assert_valid(fast, offers, num_layers)
    units = objective_units(offers, num_layers)
    assert units == brute_force_units(offers, num_layers)
    assert route_key(fast, alpha, units) == route_key(reference, alpha, units)


@PROPERTY
@given(networks(exact=False), st.floats(0.0, 1.0))
def test_alpha_route_cost_equals_networkx_shortest_path(network: tuple[list[RouteOffer], int],
                                                        alpha: float) -> None:
    offers, num_layers = network
    assume(covered(offers, num_layers))
    route = find_route(offers, num_layers, alpha)
    assert_valid(route, offers, num_layers)
    units = objective_units(offers, num_layers)
    graph = explicit_multigraph(offers, num_layers, alpha, units)
    expected = nx.shortest_path_length(graph, 0, num_layers, weight="weight")
    assert route_objective(route, alpha, units) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@PROPERTY
@given(networks())
def test_units_are_the_best_achievable_price_and_latency(network: tuple[list[RouteOffer], int]) -> None:
    offers, num_layers = network
    assume(covered(offers, num_layers))
    assert objective_units(offers, num_layers) == brute_force_units(offers, num_layers)
    cheapest, fastest = find_route(offers, num_layers, 1.0), find_route(offers, num_layers, 0.0)
    points = all_route_points(offers, num_layers)
    assert (cheapest.price_wei_per_token, Fraction(cheapest.latency_ms)) == min(points)
    assert (Fraction(fastest.latency_ms), fastest.price_wei_per_token) == min((t, p) for p, t in points)


@PROPERTY
@given(networks(max_layers=12, max_offers=6))
def test_no_route_exactly_when_a_layer_is_uncovered(network: tuple[list[RouteOffer], int]) -> None:
    offers, num_layers = network
    bare = [layer for layer in range(num_layers) if not any(o.start <= layer < o.end for o in offers)]
    if not bare:
        assert_valid(find_route(offers, num_layers, 0.5), offers, num_layers)
        return
    with pytest.raises(NoRouteError) as caught:
        find_route(offers, num_layers, 0.5)
    ranges = caught.value.missing
    assert [layer for a, b in ranges for layer in range(a, b)] == bare
    assert all(b < c for (_, b), (c, _) in itertools.pairwise(ranges))  # merged, disjoint
