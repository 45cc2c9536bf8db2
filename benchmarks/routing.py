"""Routing speed: α-route over 100k offers, exact Pareto frontier over 10k, α-route vs networkx.

    python benchmarks/routing.py [--seed 2026] [--repeats 5]      # prints one JSON line

Offers (seeded, reproducible) for an 80-layer model: each starts at a uniform layer and serves 1–16
layers (clipped at 80); compute ms/layer is lognormal around 2 ms (σ = 0.6); the price is anti-correlated
with speed, 1 gwei × (2 ms / compute) × lognormal (σ = 0.5), so fast nodes tend to be dear and the frontier
is rich; rtt is uniform in 5–150 ms. Every time is the median of ``repeats`` wall-clock runs, end to end
(validation and tabulation of the offers included), on offer sets built beforehand.

* ``route_s_100k``: ``find_route(offers, 80, α=0.5)`` over 100,000 offers (three sweeps: P*, L*, the α-route).
* ``frontier_s_10k``: ``pareto_frontier(offers, 80)`` over 10,000 offers.
* ``vs_networkx``: ``find_route`` over ``vs_networkx_offers`` offers ÷ the faster of networkx's
  ``dijkstra_path`` and ``bellman_ford_path`` on the explicit graph (a MultiDiGraph with one edge per
  offer sub-span, weighted by the same normalized α-objective, built beforehand and not timed). Our side
  also computes the units P*, L*; networkx is handed them. The two optima are checked to agree.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import networkx as nx
import numpy as np

from client.frontier import pareto_frontier
from client.routing import ObjectiveUnits, RouteOffer, find_route, objective_units, route_objective

NUM_LAYERS = 80
ALPHA = 0.5
TARGETS = {"route_s_100k": 0.5, "frontier_s_10k": 2.0, "vs_networkx": 1.0}


def random_offers(count: int, num_layers: int, seed: int, max_span: int = 16) -> list[RouteOffer]:
    """The benchmark's offer distribution (see the module docstring)."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, num_layers, count)
    end = np.minimum(start + rng.integers(1, max_span + 1, count), num_layers)
    compute_ms = rng.lognormal(math.log(2.0), 0.6, count)
    price = np.maximum(1, 1e9 * (2.0 / compute_ms) * rng.lognormal(0.0, 0.5, count)).astype(np.int64)
    rtt_ms = rng.uniform(5.0, 150.0, count)
    columns = (start, end, price, rtt_ms, compute_ms)
    rows = zip(*(column.tolist() for column in columns), strict=True)
    return [RouteOffer(i, f"node-{i}", s, e, p, r, c) for i, (s, e, p, r, c) in enumerate(rows)]


def median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall-clock seconds of ``repeats`` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def explicit_graph(offers: Sequence[RouteOffer], alpha: float, units: ObjectiveUnits) -> nx.MultiDiGraph:
    """Every sub-span edge of every offer, weighted by the normalized α-objective."""
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(range(NUM_LAYERS + 1))
    for o in offers:
        for i in range(o.start, o.end):
            for j in range(i + 1, o.end + 1):
                latency_ms = o.rtt_ms + o.compute_ms_per_layer * (j - i)
                weight = (alpha * o.price_wei_per_token / units.price_wei_per_token
                          + (1 - alpha) * latency_ms / units.latency_ms)
                graph.add_edge(i, j, weight=weight)
    return graph


def path_weight(graph: nx.MultiDiGraph, path: Sequence[int]) -> float:
    return sum(min(d["weight"] for d in graph[u][v].values()) for u, v in itertools.pairwise(path))


def versus_networkx(count: int, seed: int, repeats: int) -> dict[str, Any]:
    offers = random_offers(count, NUM_LAYERS, seed)
    units = objective_units(offers, NUM_LAYERS)
    graph = explicit_graph(offers, ALPHA, units)
    ours_s, route = median_seconds(lambda: find_route(offers, NUM_LAYERS, ALPHA), repeats)
    methods: dict[str, Callable[..., list[int]]] = {"dijkstra_path": nx.dijkstra_path,
                                                     "bellman_ford_path": nx.bellman_ford_path}
    timed = {name: median_seconds(partial(method, graph, 0, NUM_LAYERS, weight="weight"), repeats)
             for name, method in methods.items()}
    fastest = min(timed, key=lambda name: timed[name][0])
    baseline_s, path = timed[fastest]
    agree = math.isclose(route_objective(route, ALPHA, units), path_weight(graph, path), rel_tol=1e-9)
    return {"vs_networkx": ours_s / baseline_s, "vs_networkx_offers": count, "vs_networkx_edges":
            graph.number_of_edges(), "route_s_2k": ours_s, "networkx_s_2k": baseline_s,
            "networkx_method": fastest, "networkx_agrees": agree}


def route_seconds(count: int, seed: int, repeats: int) -> float:
    offers = random_offers(count, NUM_LAYERS, seed)
    seconds, _ = median_seconds(lambda: find_route(offers, NUM_LAYERS, ALPHA), repeats)
    return seconds


def frontier_seconds(count: int, seed: int, repeats: int) -> tuple[float, int]:
    offers = random_offers(count, NUM_LAYERS, seed)
    seconds, frontier = median_seconds(lambda: pareto_frontier(offers, NUM_LAYERS), repeats)
    return seconds, len(frontier)


def measure(seed: int, repeats: int) -> dict[str, Any]:
    route_s = route_seconds(100_000, seed, repeats)
    frontier_s, frontier_points = frontier_seconds(10_000, seed, repeats)
    return {"route_s_100k": route_s, "frontier_s_10k": frontier_s, "frontier_points_10k": frontier_points,
            **versus_networkx(2_000, seed, repeats), "num_layers": NUM_LAYERS, "alpha": ALPHA,
            "seed": seed, "repeats": repeats, "statistic": "median", "targets": TARGETS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    figures = measure(args.seed, args.repeats)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
