"""Pure route finding over layer-range offers: the client's path finder (paper §3.1–3.2, Appendix A/B).

Boundary: plain numbers in, routes out. This module does no I/O and imports no torch, web3 or HTTP. It
does not read the registry, probe endpoints, filter offers by a maximum price or open sessions (the
client glue does that). The exact price/latency Pareto frontier lives in :mod:`client.frontier`.

Graph
    Vertices are the layer boundaries ``0..m`` (``m = num_layers``). An offer serving the half-open range
    ``[x, y)`` yields an edge ``i -> j`` for every sub-span ``x <= i < j <= y``: a route may use part of
    a node's range. A route is a path ``0 -> m``. Edges only go forward, so the graph is a DAG and the
    boundaries in increasing order are a topological order. A route exists iff every layer is covered.

Costs, per generated token
    * price of a hop = the offer's ``price_wei_per_token``, however many of its layers the hop uses;
    * latency of a hop = ``rtt_ms + compute_ms_per_layer * (j - i)``;
    * a route's price and latency are the sums over its hops (latency summed with ``math.fsum``).
    Consecutive hops on the same offer are merged into one hop: that edge always exists and costs one
    price and one round trip. Two different offers of one node stay two hops (two prices, two sessions).

Objective (the α of paper Eq. 1, with units made explicit)
    ``w(route) = α · P / P_unit + (1 − α) · L / L_unit``, dimensionless, where ``P``/``L`` are the route's
    price and latency, ``P_unit = P*`` is the price of the cheapest route and ``L_unit = L*`` the latency
    of the fastest route (:class:`ObjectiveUnits`). Each term reads "times the best achievable", so
    α = 1 picks the cheapest route, α = 0 the fastest, and one α means the same trade-off on every
    network and in every currency or time unit (scaling all prices, or all latencies, changes nothing).
    If ``P* = 0`` (a free route exists) the price unit falls back to the price of the fastest route, and
    to 1 wei if that is free too; likewise ``L_unit`` falls back to the latency of the cheapest route,
    then to 1 ms. ``P*`` and ``L*`` come from the same DP, minimizing (price, latency) and
    (latency, price) lexicographically.

Ties (deterministic)
    α = 1 minimizes (price, latency) lexicographically and α = 0 minimizes (latency, price). For
    0 < α < 1, routes with equal ``w`` are ordered by the objective with the smaller weight (latency
    when α >= ½, price when α < ½). Remaining exact ties go to the lowest offer id, then earliest entry.

Two implementations of one DP
    * reference (:func:`find_route_reference`): the explicit graph with every sub-span edge, Algorithm 1
      (:func:`topological_sort`) and Algorithm 2 (:func:`dag_shortest_path`); O(V + E) with
      E = Σ len²/2, for tests, small graphs and figures;
    * fast (:func:`find_route`): the same DP over boundaries without materializing edges. A sub-span
      weight is ``c_o + k_o · (j − i)``, so ``dist[j] = min_o (c_o + k_o·j + min_{x_o <= i < j}
      (dist[i] − k_o·i))``; the inner minimum is kept per offer as boundaries are swept, vectorized
      over the offers covering each layer. O(Σ len) numpy work.
    On inputs whose sums are exact in float64 (integers, binary fractions) both return equal costs;
    otherwise they agree up to rounding (the fast path reassociates the same sums).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Self, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "CycleError",
    "Hop",
    "LexCost",
    "NoRouteError",
    "ObjectiveUnits",
    "OfferTable",
    "Route",
    "RouteOffer",
    "UnreachableError",
    "build_route",
    "check_alpha",
    "dag_shortest_path",
    "explicit_graph",
    "find_route",
    "find_route_reference",
    "hop_latency_ms",
    "objective_units",
    "require_route",
    "route_key",
    "route_objective",
    "topological_sort",
    "uncovered_layers",
]

Array = npt.NDArray[Any]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Vertex = TypeVar("Vertex", bound=Hashable)
Weight = TypeVar("Weight")

# Prices are int64 while every route price fits with room to spare; otherwise Python ints (object arrays).
_INT64_PRICE_LIMIT = 2**62


# ----------------------------------------------------------------------------------------------- errors


class NoRouteError(Exception):
    """No route 0 -> m exists; ``missing`` holds the merged half-open layer ranges no offer covers."""

    def __init__(self, missing: tuple[tuple[int, int], ...]) -> None:
        self.missing = missing
        ranges = ", ".join(f"[{start}, {end})" for start, end in missing)
        super().__init__(f"no route: no offer covers layers {ranges}")


class CycleError(ValueError):
    """The graph given to :func:`topological_sort` is not acyclic; ``vertex`` lies on a cycle."""

    def __init__(self, vertex: Hashable) -> None:
        self.vertex = vertex
        super().__init__(f"graph has a cycle through {vertex!r}")


class UnreachableError(Exception):
    """:func:`dag_shortest_path` found no path from ``source`` to ``target``."""

    def __init__(self, source: Hashable, target: Hashable) -> None:
        self.source = source
        self.target = target
        super().__init__(f"no path from {source!r} to {target!r}")


# ------------------------------------------------------------------------------------------------ types


@dataclass(frozen=True, slots=True)
class RouteOffer:
    """One node's offer as the router sees it: layers ``[start, end)``, price and measured latencies."""

    offer_id: int
    node: str
    start: int
    end: int
    price_wei_per_token: int
    rtt_ms: float
    compute_ms_per_layer: float


@dataclass(frozen=True, slots=True)
class Hop:
    """Layers ``[start, end)`` of one offer on a route, with that hop's price and latency per token."""

    offer_id: int
    node: str
    start: int
    end: int
    price_wei_per_token: int
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Route:
    """Hops covering ``0..m`` in order, with the route's total price and latency per token."""

    hops: tuple[Hop, ...]
    price_wei_per_token: int
    latency_ms: float


@dataclass(frozen=True, slots=True)
class ObjectiveUnits:
    """The units α's two terms are measured in: the best achievable price and latency (see module doc)."""

    price_wei_per_token: int
    latency_ms: float

    @classmethod
    def from_extremes(cls, cheapest: Route, fastest: Route) -> Self:
        """Units from the lexicographically cheapest and fastest routes, with the documented fallbacks."""
        price = cheapest.price_wei_per_token or fastest.price_wei_per_token or 1
        latency_ms = fastest.latency_ms or cheapest.latency_ms or 1.0
        return cls(price_wei_per_token=price, latency_ms=latency_ms)


@dataclass(frozen=True, order=True, slots=True)
class LexCost:
    """A cost compared lexicographically (``primary`` first) that adds componentwise."""

    primary: float
    secondary: float

    def __add__(self, other: LexCost) -> LexCost:
        return LexCost(self.primary + other.primary, self.secondary + other.secondary)


# ------------------------------------------------------------------------------------- routes and costs


def hop_latency_ms(offer: RouteOffer, start: int, end: int) -> float:
    """Latency per token of using layers ``[start, end)`` of ``offer``."""
    return offer.rtt_ms + offer.compute_ms_per_layer * (end - start)


def build_route(segments: Iterable[tuple[RouteOffer, int, int]]) -> Route:
    """A route from ``(offer, start, end)`` segments in layer order, merging consecutive same-offer ones."""
    merged: list[tuple[RouteOffer, int, int]] = []
    for offer, start, end in segments:
        if merged and merged[-1][0].offer_id == offer.offer_id and merged[-1][2] == start:
            merged[-1] = (offer, merged[-1][1], end)
        else:
            merged.append((offer, start, end))
    hops = tuple(
        Hop(o.offer_id, o.node, start, end, o.price_wei_per_token, hop_latency_ms(o, start, end))
        for o, start, end in merged
    )
    return Route(
        hops=hops,
        price_wei_per_token=sum(hop.price_wei_per_token for hop in hops),
        latency_ms=math.fsum(hop.latency_ms for hop in hops),
    )


def check_alpha(alpha: float) -> None:
    """Raise ``ValueError`` unless ``0 <= alpha <= 1``."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


def route_objective(route: Route, alpha: float, units: ObjectiveUnits) -> float:
    """The dimensionless α-objective ``α·P/P_unit + (1−α)·L/L_unit`` of ``route``."""
    check_alpha(alpha)
    price_term = route.price_wei_per_token / units.price_wei_per_token
    return alpha * price_term + (1.0 - alpha) * route.latency_ms / units.latency_ms


def route_key(route: Route, alpha: float, units: ObjectiveUnits) -> tuple[float, float]:
    """The lexicographic key :func:`find_route` minimizes, evaluated on a finished route.

    For 0 < α < 1 the primary is the objective times ``P_unit · L_unit`` (same order, and exact on
    integer inputs with a binary-fraction α); the secondary is the tie-break of the module doc.
    """
    check_alpha(alpha)
    price, latency_ms = route.price_wei_per_token, route.latency_ms
    if alpha == 1.0:
        return price, latency_ms
    if alpha == 0.0:
        return latency_ms, price
    mixed = alpha * units.latency_ms * float(price) + (1.0 - alpha) * units.price_wei_per_token * latency_ms
    return mixed, (latency_ms if alpha >= 0.5 else price)


# ---------------------------------------------------------------------------------- offers as columns


def _int_column(values: list[Any], name: str) -> IntArray:
    column = np.array(values)
    if len(values) and column.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers")
    return column.astype(np.int64)


def _float_column(values: list[Any], name: str) -> FloatArray:
    column = np.array(values)
    if len(values) and column.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numbers")
    column = column.astype(np.float64)
    if not np.all(np.isfinite(column) & (column >= 0.0)):
        raise ValueError(f"{name} must be finite and >= 0")
    return column


def _price_column(values: list[Any], num_layers: int) -> Array:
    column = np.array(values)
    if column.dtype.kind == "O" and not all(type(v) is int for v in values):
        raise ValueError("price_wei_per_token must be integers")
    if len(values) and column.dtype.kind not in "iuO":
        raise ValueError("price_wei_per_token must be integers")
    if len(values) and min(values) < 0:
        raise ValueError("price_wei_per_token must be >= 0")
    if not len(values) or max(values) * (num_layers + 1) < _INT64_PRICE_LIMIT:
        return column.astype(np.int64)
    return np.array(values, dtype=object)


def _check_num_layers(num_layers: int) -> int:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int | np.integer) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    return int(num_layers)


def _check_ranges(ids: IntArray, start: IntArray, end: IntArray, num_layers: int) -> None:
    empty = ids[start >= end]
    if empty.size:
        raise ValueError(f"offers {empty[:5].tolist()} have start >= end")
    outside = ids[(start < 0) | (end > num_layers)]
    if outside.size:
        raise ValueError(f"offers {outside[:5].tolist()} have layers outside [0, {num_layers}]")
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"duplicate offer_id {unique[counts > 1][:5].tolist()}")


@dataclass(frozen=True, eq=False)
class OfferTable:
    """Validated offers as column arrays sorted by ``offer_id``; row ``r`` is ``offers[r]``.

    ``price`` is int64, or an object array of Python ints when route prices could overflow int64.
    """

    offers: tuple[RouteOffer, ...]
    num_layers: int
    start: IntArray
    end: IntArray
    price: Array
    rtt_ms: FloatArray
    compute_ms_per_layer: FloatArray

    @classmethod
    def build(cls, offers: Iterable[RouteOffer], num_layers: int) -> Self:
        """Validate ``offers`` against ``num_layers`` (``ValueError`` with the culprits) and tabulate them."""
        num_layers = _check_num_layers(num_layers)
        rows = list(offers)
        ids = _int_column([o.offer_id for o in rows], "offer_id")
        if np.any(ids[1:] < ids[:-1]):
            order = np.argsort(ids, kind="stable")
            rows, ids = [rows[r] for r in order.tolist()], ids[order]
        start = _int_column([o.start for o in rows], "start")
        end = _int_column([o.end for o in rows], "end")
        _check_ranges(ids, start, end, num_layers)
        return cls(
            offers=tuple(rows),
            num_layers=num_layers,
            start=start,
            end=end,
            price=_price_column([o.price_wei_per_token for o in rows], num_layers),
            rtt_ms=_float_column([o.rtt_ms for o in rows], "rtt_ms"),
            compute_ms_per_layer=_float_column(
                [o.compute_ms_per_layer for o in rows], "compute_ms_per_layer"
            ),
        )

    def subset(self, rows: IntArray) -> OfferTable:
        """The table restricted to ``rows`` (ascending), e.g. after pruning dominated offers."""
        return OfferTable(
            offers=tuple(self.offers[r] for r in rows.tolist()),
            num_layers=self.num_layers,
            start=self.start[rows],
            end=self.end[rows],
            price=self.price[rows],
            rtt_ms=self.rtt_ms[rows],
            compute_ms_per_layer=self.compute_ms_per_layer[rows],
        )

    def mirrored(self) -> OfferTable:
        """The same offers on reversed boundaries (``j -> m − j``): forward sweeps on it run backwards."""
        m = self.num_layers
        return OfferTable(self.offers, m, m - self.end, m - self.start, self.price, self.rtt_ms,
                          self.compute_ms_per_layer)

    @cached_property
    def layer_pairs(self) -> tuple[IntArray, IntArray, IntArray]:
        """``(row, layer, offsets)``: every (offer row, covered layer) pair, grouped by layer.

        The rows covering layer ``l`` (ascending) are ``row[offsets[l]:offsets[l + 1]]``.
        """
        lengths = self.end - self.start
        rows = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        layer = self.start[rows] + (np.arange(rows.size, dtype=np.int64) - first)
        order = np.argsort(layer.astype(np.int16) if self.num_layers < 2**15 else layer, kind="stable")
        rows, layer = rows[order], layer[order]
        offsets = np.searchsorted(layer, np.arange(self.num_layers + 1)).astype(np.int64)
        return rows, layer, offsets

    def segments(self, steps: Iterable[tuple[int, int, int]]) -> list[tuple[RouteOffer, int, int]]:
        """``(row, start, end)`` triples as ``(offer, start, end)`` segments."""
        return [(self.offers[row], start, end) for row, start, end in steps]


def uncovered_layers(offers: Iterable[RouteOffer], num_layers: int) -> tuple[tuple[int, int], ...]:
    """Merged half-open ranges of layers in ``[0, num_layers)`` that no offer covers."""
    return _uncovered(OfferTable.build(offers, num_layers))


def _uncovered(table: OfferTable) -> tuple[tuple[int, int], ...]:
    m = table.num_layers
    depth = np.zeros(m + 1, dtype=np.int64)
    np.add.at(depth, table.start, 1)
    np.add.at(depth, table.end, -1)
    bare = np.concatenate(([False], np.cumsum(depth)[:m] == 0, [False]))
    edges = np.flatnonzero(bare[1:] != bare[:-1])
    return tuple((int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True))


def require_route(table: OfferTable) -> None:
    """Raise :class:`NoRouteError` with the uncovered ranges unless every layer is covered."""
    missing = _uncovered(table)
    if missing:
        raise NoRouteError(missing=missing)


# ----------------------------------------------------------------------------- costs as linear weights


@dataclass(frozen=True, slots=True)
class LinearWeight:
    """Per-offer edge weight ``const[r] + per_layer[r] · (j − i)`` for sub-span ``[i, j)`` of row ``r``."""

    const: Array
    per_layer: Array

    def at(self, row: int, start: int, end: int) -> Any:
        """The weight of sub-span ``[start, end)`` of row ``row``."""
        return self.const[row] + self.per_layer[row] * (end - start)


@dataclass(frozen=True, slots=True)
class LexWeight:
    """A lexicographic pair of linear weights: ``primary`` decides, ``secondary`` breaks ties."""

    primary: LinearWeight
    secondary: LinearWeight


def price_weight(table: OfferTable) -> LinearWeight:
    """A hop's price: the offer's, whatever the span."""
    return LinearWeight(table.price, np.zeros_like(table.price))


def latency_weight(table: OfferTable) -> LinearWeight:
    """A hop's latency: round trip plus compute per layer used."""
    return LinearWeight(table.rtt_ms, table.compute_ms_per_layer)


def objective_weight(table: OfferTable, alpha: float, units: ObjectiveUnits) -> LexWeight:
    """The lexicographic edge weight whose shortest path is the α-optimal route (ties as documented)."""
    if alpha == 1.0:
        return LexWeight(price_weight(table), latency_weight(table))
    if alpha == 0.0:
        return LexWeight(latency_weight(table), price_weight(table))
    # w · P_unit · L_unit: same argmin as w, and exact on integer inputs with a binary-fraction α.
    price_scale = alpha * units.latency_ms
    latency_scale = (1.0 - alpha) * units.price_wei_per_token
    price = table.price.astype(np.float64)
    mixed = LinearWeight(
        price_scale * price + latency_scale * table.rtt_ms,
        latency_scale * table.compute_ms_per_layer,
    )
    secondary = latency_weight(table) if alpha >= 0.5 else price_weight(table)
    return LexWeight(mixed, secondary)


# ------------------------------------------------------------------------ fast path: the boundary sweep


@dataclass(frozen=True, slots=True)
class SweepResult:
    """Lexicographic distances from boundary 0 and the last hop into each boundary."""

    primary: Array
    secondary: Array
    via_row: IntArray
    via_start: IntArray

    def steps_to(self, target: int) -> list[tuple[int, int, int]]:
        """``(row, start, end)`` hops of the best path ``0 -> target``, in layer order."""
        steps: list[tuple[int, int, int]] = []
        end = target
        while end > 0:
            start = int(self.via_start[end])
            steps.append((int(self.via_row[end]), start, end))
            end = start
        return steps[::-1]


def _pair_weight(weight: LinearWeight, rows: IntArray, layer: IntArray) -> tuple[Array, Array]:
    """Per (row, layer) pair: the term added when a hop leaves at ``layer + 1`` and when it enters at
    ``layer``, so that ``w = (dist[i] + enter) + leave`` for a hop ``[i, j)``."""
    if not np.any(weight.per_layer):  # a flat weight (price): nothing depends on the layer
        leave = weight.const[rows]
        return leave, np.broadcast_to(np.zeros(1, dtype=leave.dtype), leave.shape)
    per_layer = weight.per_layer[rows]
    leave = weight.const[rows] + per_layer * (layer + 1)
    enter = -(per_layer * layer)
    return leave, enter


def _lex_argmin(primary: Array, secondary: Array) -> int:
    """Position of the lexicographic minimum; the first one on exact ties."""
    ties = np.flatnonzero(primary == primary.min())
    return int(ties[np.argmin(secondary[ties])])


def sweep(table: OfferTable, weight: LexWeight) -> SweepResult:
    """Lexicographic shortest paths from boundary 0 to every boundary (needs every layer covered)."""
    m, n = table.num_layers, len(table.offers)
    rows, layer, offsets = table.layer_pairs
    leave1, enter1 = _pair_weight(weight.primary, rows, layer)
    leave2, enter2 = _pair_weight(weight.secondary, rows, layer)
    dist1 = np.zeros(m + 1, dtype=leave1.dtype)
    dist2 = np.zeros(m + 1, dtype=leave2.dtype)
    via_row = np.full(m + 1, -1, dtype=np.int64)
    via_start = np.full(m + 1, -1, dtype=np.int64)
    best1, best2 = np.zeros(n, dtype=enter1.dtype), np.zeros(n, dtype=enter2.dtype)
    best_start = np.full(n, -1, dtype=np.int64)
    for j in range(m + 1):
        if j > 0:  # leave: the best hop ending at j among offers covering layer j - 1
            span = slice(offsets[j - 1], offsets[j])
            at = rows[span]
            k = _lex_argmin(best1[at] + leave1[span], best2[at] + leave2[span])
            dist1[j] = best1[at[k]] + leave1[span][k]
            dist2[j] = best2[at[k]] + leave2[span][k]
            via_row[j], via_start[j] = at[k], best_start[at[k]]
        if j < m:  # enter: offers covering layer j may start a hop at j
            span = slice(offsets[j], offsets[j + 1])
            at = rows[span]
            cand1, cand2 = dist1[j] + enter1[span], dist2[j] + enter2[span]
            old1, old2 = best1[at], best2[at]
            better = (best_start[at] < 0) | (cand1 < old1) | ((cand1 == old1) & (cand2 < old2))
            chosen = at[better]
            best1[chosen], best2[chosen], best_start[chosen] = cand1[better], cand2[better], j
    return SweepResult(dist1, dist2, via_row, via_start)


def best_route(table: OfferTable, weight: LexWeight) -> Route:
    """The lexicographically best route 0 -> m under ``weight`` (fast path)."""
    result = sweep(table, weight)
    return build_route(table.segments(result.steps_to(table.num_layers)))


def table_units(table: OfferTable) -> ObjectiveUnits:
    """:class:`ObjectiveUnits` of a validated, fully covered table (fast path)."""
    cheapest = best_route(table, LexWeight(price_weight(table), latency_weight(table)))
    fastest = best_route(table, LexWeight(latency_weight(table), price_weight(table)))
    return ObjectiveUnits.from_extremes(cheapest, fastest)


def objective_units(offers: Iterable[RouteOffer], num_layers: int) -> ObjectiveUnits:
    """The units of the α-objective on this network: best achievable price and latency per token."""
    table = OfferTable.build(offers, num_layers)
    require_route(table)
    return table_units(table)


def find_route(offers: Iterable[RouteOffer], num_layers: int, alpha: float) -> Route:
    """The α-optimal route ``0 -> num_layers`` (fast path).

    Raises ``ValueError`` for α outside [0, 1], ``num_layers < 1`` or malformed offers, and
    :class:`NoRouteError` (with the uncovered layer ranges) when no route exists.
    """
    check_alpha(alpha)
    table = OfferTable.build(offers, num_layers)
    require_route(table)
    units = table_units(table) if 0.0 < alpha < 1.0 else ObjectiveUnits(1, 1.0)
    return best_route(table, objective_weight(table, alpha, units))


# ------------------------------------------------------------- reference path: Algorithms 1 and 2


def topological_sort(adjacency: Mapping[Vertex, Iterable[Vertex]]) -> list[Vertex]:
    """Algorithm 1: depth-first topological order of a DAG, iteratively (no recursion limit).

    Vertices are the keys of ``adjacency`` and every successor named in it; each is visited once, so
    the cost is O(V + E). Raises :class:`CycleError` on a back edge.
    """
    vertices = dict.fromkeys(adjacency)
    for successors in adjacency.values():
        vertices.update(dict.fromkeys(successors))
    visited: set[Vertex] = set()
    in_progress: set[Vertex] = set()
    finished: list[Vertex] = []
    for root in vertices:
        if root not in visited:
            _dfs_visit(adjacency, root, visited, in_progress, finished)
    return finished[::-1]


def _dfs_visit(
    adjacency: Mapping[Vertex, Iterable[Vertex]],
    root: Vertex,
    visited: set[Vertex],
    in_progress: set[Vertex],
    finished: list[Vertex],
) -> None:
    """DFS-Visit of Algorithm 1 with an explicit stack of successor iterators."""
    in_progress.add(root)
    stack = [(root, iter(adjacency.get(root, ())))]
    while stack:
        vertex, successors = stack[-1]
        child = next((v for v in successors if v not in visited), None)
        if child is None:
            stack.pop()
            in_progress.discard(vertex)
            visited.add(vertex)
            finished.append(vertex)
        elif child in in_progress:
            raise CycleError(child)
        else:
            in_progress.add(child)
            stack.append((child, iter(adjacency.get(child, ()))))


def dag_shortest_path(
    adjacency: Mapping[Vertex, Sequence[tuple[Vertex, Weight]]],
    source: Vertex,
    target: Vertex,
    zero: Weight,
    order: Sequence[Vertex] | None = None,
) -> tuple[Weight, list[Vertex]]:
    """Algorithm 2: shortest ``source -> target`` path in a DAG by DP over a topological order.

    ``adjacency[u]`` lists ``(v, weight)`` edges; weights need ``+`` and ``<`` (numbers, :class:`LexCost`)
    and ``zero`` is their identity. ``order`` defaults to :func:`topological_sort`. O(V + E). Returns
    ``(distance, vertices)``; raises :class:`UnreachableError` when ``target`` cannot be reached. Of
    equally short paths the first relaxed wins (strict improvement only, as in the paper).
    """
    topo = topological_sort({u: [v for v, _ in edges] for u, edges in adjacency.items()}) if order is None \
        else order
    dist: dict[Vertex, Weight] = {source: zero}
    prev: dict[Vertex, Vertex] = {}
    for u in topo:
        if u not in dist:
            continue
        for v, weight in adjacency.get(u, ()):
            candidate = dist[u] + weight  # type: ignore[operator]
            if v not in dist or candidate < dist[v]:  # type: ignore[operator]
                dist[v], prev[v] = candidate, u
    if target not in dist:
        raise UnreachableError(source, target)
    path = [target]
    while path[-1] != source:
        path.append(prev[path[-1]])
    return dist[target], path[::-1]


def _scalar(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (Python ints from object arrays pass through)."""
    return value.item() if isinstance(value, np.generic) else value


def explicit_graph(
    table: OfferTable, weight: LexWeight
) -> tuple[dict[int, list[tuple[int, LexCost]]], dict[tuple[int, int], int]]:
    """Every sub-span edge ``i -> j`` of every offer, parallel edges collapsed to the cheapest.

    Returns ``(adjacency, row_of_edge)``; on equal weights the lowest row (offer id) keeps the edge.
    """
    best: dict[tuple[int, int], tuple[LexCost, int]] = {}
    for row in range(len(table.offers)):
        for i in range(int(table.start[row]), int(table.end[row])):
            for j in range(i + 1, int(table.end[row]) + 1):
                cost = LexCost(_scalar(weight.primary.at(row, i, j)), _scalar(weight.secondary.at(row, i, j)))
                if (i, j) not in best or cost < best[(i, j)][0]:
                    best[(i, j)] = (cost, row)
    adjacency: dict[int, list[tuple[int, LexCost]]] = {b: [] for b in range(table.num_layers + 1)}
    for (i, j), (cost, _) in sorted(best.items()):
        adjacency[i].append((j, cost))
    return adjacency, {edge: row for edge, (_, row) in best.items()}


def _reference_best_route(table: OfferTable, weight: LexWeight) -> Route:
    adjacency, row_of_edge = explicit_graph(table, weight)
    order = topological_sort({u: [v for v, _ in edges] for u, edges in adjacency.items()})
    _, path = dag_shortest_path(adjacency, 0, table.num_layers, LexCost(0, 0), order)
    steps = [(row_of_edge[(i, j)], i, j) for i, j in itertools.pairwise(path)]
    return build_route(table.segments(steps))


def find_route_reference(offers: Iterable[RouteOffer], num_layers: int, alpha: float) -> Route:
    """:func:`find_route` on the explicit sub-span graph with Algorithms 1 and 2 (small networks only)."""
    check_alpha(alpha)
    table = OfferTable.build(offers, num_layers)
    require_route(table)
    units = ObjectiveUnits(1, 1.0)
    if 0.0 < alpha < 1.0:
        cheapest = _reference_best_route(table, LexWeight(price_weight(table), latency_weight(table)))
        fastest = _reference_best_route(table, LexWeight(latency_weight(table), price_weight(table)))
        units = ObjectiveUnits.from_extremes(cheapest, fastest)
    return _reference_best_route(table, objective_weight(table, alpha, units))
