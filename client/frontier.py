"""The exact price/latency Pareto frontier of routes, its lower convex hull and α-selection (paper §3.2).

Boundary: pure math over :class:`client.routing.RouteOffer`; no I/O, no torch, web3 or HTTP. It reuses
the graph model, costs, units and validation of :mod:`client.routing` and knows nothing of sessions.

Frontier
    A route is Pareto-optimal when no other route is at most as expensive and at most as slow and
    better in one of the two (price per token, latency per token). :func:`pareto_frontier` returns one
    route per Pareto-optimal (price, latency) point, sorted by price, so the first point is the cheapest
    route and the last the fastest.

Algorithm: bi-objective label setting over the boundaries 0..m in topological order
    The labels at boundary ``j`` are the non-dominated (price, latency) pairs of paths ``0 -> j``. A
    sub-span ``[i, j)`` of offer ``o`` adds ``(p_o, r_o + k_o·(j − i))``, so, as in the fast α-path, each
    offer keeps the non-dominated set of ``(P_i, L_i − k_o·i)`` over the boundaries ``i`` it has covered
    so far (its *pending* entries); leaving at ``j`` adds ``(p_o, r_o + k_o·j)``. Shifts preserve
    dominance, so this is exact and never builds the O(Σ len²) edges. Each step is vectorized over
    (offer, label) pairs: dominance between an offer's pending entries and the labels just made is
    settled by binary search and a running minimum over an (offer, label) grid, without sorting.

    Pruning, all exact (it only drops what is strictly dominated):
    * offers dominated on a sub-range by another offer (:func:`nondominated_offer_rows`);
    * labels and pending entries whose lower bound — cheapest and fastest completion to ``m`` from
      backward sweeps, and for an entry the best exit from its offer — is strictly dominated by an
      *incumbent*: a real route already known, namely the cheapest and the fastest completion of every
      label kept so far. Latency bounds get a relative 1e-9 margin so rounding cannot prune a Pareto
      point.

    Returned prices and latencies are recomputed from the hops (:func:`client.routing.build_route`);
    a final filter keeps the output free of dominated and duplicate points even under rounding. The
    points are exact whenever the latency sums are (integers, binary fractions); with arbitrary floats
    they are exact up to the rounding of those sums.

Convex hull and α
    The α-optimal routes are exactly the points of the lower convex hull (:func:`convex_hull_points`);
    :func:`hull_alpha_ranges` gives each hull point the α interval for which it is optimal, and
    :func:`alpha_optimal` picks the α-optimal point of a frontier with the ties of :func:`find_route`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from client.routing import (
    LexWeight,
    ObjectiveUnits,
    OfferTable,
    Route,
    RouteOffer,
    build_route,
    check_alpha,
    latency_weight,
    price_weight,
    require_route,
    route_key,
    sweep,
)

__all__ = [
    "alpha_optimal",
    "convex_hull_points",
    "frontier_units",
    "hull_alpha_ranges",
    "nondominated_offer_rows",
    "pareto_frontier",
]

Array = npt.NDArray[Any]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Latency bounds are compared with this relative slack so rounding can only keep labels, never lose one.
_LATENCY_SLACK = 1e-9
_PRUNE_CHUNK = 512


# ------------------------------------------------------------------------------------ offer pruning


def nondominated_offer_rows(table: OfferTable) -> IntArray:
    """Rows of the offers no other offer dominates on a sub-range (ascending).

    Offer ``a`` dominates ``b`` when ``a`` covers ``b``'s layers and is no dearer, no slower per round
    trip and no slower per layer: any route using ``b`` on a sub-span is matched by ``a`` on it. Among
    identical offers the lowest id stays. Sorted by (price, rtt, ms/layer, start, −end, row), a dominator
    comes first, so each offer is checked against the kept ones before it, a chunk at a time.
    """
    price_rank = np.unique(table.price, return_inverse=True)[1].reshape(-1)  # exact, fits float64
    order = np.lexsort((np.arange(price_rank.size), -table.end, table.start, table.compute_ms_per_layer,
                        table.rtt_ms, price_rank))
    columns = np.stack([table.start, -table.end, price_rank, table.rtt_ms, table.compute_ms_per_layer])
    columns = columns.astype(np.float64)
    kept: list[IntArray] = []
    kept_columns = np.empty((5, 0))
    for first in range(0, order.size, _PRUNE_CHUNK):
        chunk = order[first:first + _PRUNE_CHUNK]
        survivors = chunk[_undominated(columns[:, chunk], kept_columns)]
        kept.append(survivors)
        kept_columns = np.concatenate([kept_columns, columns[:, survivors]], axis=1)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def _undominated(chunk: FloatArray, kept: FloatArray) -> npt.NDArray[np.bool_]:
    """Which chunk columns no kept column, and no earlier chunk column, weakly dominates."""
    by_kept = np.logical_or.reduce(_weakly_dominates(kept, chunk), axis=0)
    by_earlier = np.logical_or.reduce(np.triu(_weakly_dominates(chunk, chunk), k=1), axis=0)
    return np.asarray(~(by_kept | by_earlier), dtype=bool)


def _weakly_dominates(a: FloatArray, b: FloatArray) -> npt.NDArray[np.bool_]:
    """``out[p, q]``: column ``p`` of ``a`` is <= column ``q`` of ``b`` in every row."""
    out = a[0][:, None] <= b[0][None, :]
    for dim in range(1, a.shape[0]):
        out &= a[dim][:, None] <= b[dim][None, :]
    return out


def _order_key(price: Array) -> Array:
    """Prices as an array numpy can sort and compare exactly: int64 as is, big ints as dense ranks."""
    if price.dtype != object:
        return price
    return np.unique(price, return_inverse=True)[1].astype(np.int64)


# --------------------------------------------------------------------------------------- label sets


@dataclass(frozen=True, slots=True)
class Labels:
    """Non-dominated (price, latency) labels of paths ending at one boundary, with their last hop."""

    price: Array
    latency_ms: FloatArray
    row: IntArray
    start: IntArray
    parent: IntArray

    @classmethod
    def origin(cls, price_dtype: np.dtype[Any]) -> Labels:
        """The single label at boundary 0: the empty path."""
        none = np.full(1, -1, dtype=np.int64)
        return cls(np.zeros(1, dtype=price_dtype), np.zeros(1), none, none, none)

    def take(self, index: IntArray | npt.NDArray[np.bool_]) -> Labels:
        """The labels at ``index`` (positions or a mask)."""
        return Labels(self.price[index], self.latency_ms[index], self.row[index], self.start[index],
                      self.parent[index])


@dataclass(frozen=True, slots=True)
class Pending:
    """Per offer, the non-dominated ``(P_i, L_i − k·i)`` of labels at boundaries ``i`` it covers."""

    row: IntArray
    price: Array
    shifted_ms: FloatArray
    start: IntArray
    parent: IntArray

    @classmethod
    def empty(cls, price_dtype: np.dtype[Any]) -> Pending:
        """No entries."""
        none = np.zeros(0, dtype=np.int64)
        return cls(none, np.zeros(0, dtype=price_dtype), np.zeros(0), none, none)

    def take(self, index: IntArray | npt.NDArray[np.bool_]) -> Pending:
        """The entries at ``index`` (positions or a mask)."""
        return Pending(self.row[index], self.price[index], self.shifted_ms[index], self.start[index],
                       self.parent[index])

    def concat(self, other: Pending) -> Pending:
        """These entries followed by ``other``'s."""
        return Pending(*(np.concatenate([a, b]) for a, b in zip(self._columns(), other._columns(),
                                                                 strict=True)))

    def _columns(self) -> tuple[Array, ...]:
        return self.row, self.price, self.shifted_ms, self.start, self.parent


@dataclass(frozen=True, slots=True)
class Completions:
    """Best ways from each boundary ``j`` to ``m``: the cheapest (price, and that path's latency) and the
    fastest (latency, and that path's price), from backward lexicographic sweeps."""

    cheapest_price: Array
    cheapest_latency_ms: FloatArray
    fastest_latency_ms: FloatArray
    fastest_price: Array

    @classmethod
    def of(cls, table: OfferTable) -> Completions:
        """Two sweeps over the mirrored table (boundary ``j`` becomes ``m − j``)."""
        mirror = table.mirrored()
        by_price = sweep(mirror, LexWeight(price_weight(mirror), latency_weight(mirror)))
        by_latency = sweep(mirror, LexWeight(latency_weight(mirror), price_weight(mirror)))
        return cls(by_price.primary[::-1].copy(), by_price.secondary[::-1].astype(np.float64),
                   by_latency.primary[::-1].astype(np.float64), by_latency.secondary[::-1].copy())

    def of_labels(self, labels: Labels, boundary: int) -> tuple[Array, FloatArray]:
        """Price and latency of the two completions of every label: achievable routes."""
        price = np.concatenate([labels.price + self.cheapest_price[boundary],
                                labels.price + self.fastest_price[boundary]])
        latency_ms = np.concatenate([labels.latency_ms + self.cheapest_latency_ms[boundary],
                                     labels.latency_ms + self.fastest_latency_ms[boundary]])
        return price, latency_ms


@dataclass(frozen=True, slots=True)
class Bounds:
    """Lower bounds on the price and latency of any route through a label or a pending entry.

    ``exit_ms[first_pair[r] + j − start[r]]`` is ``min over j' in (j, end] of k·j' + fastest(j')`` for
    offer row ``r``: the best an entry still inside the offer at ``j`` can do on latency.
    """

    completions: Completions
    first_pair: IntArray
    exit_ms: FloatArray

    @classmethod
    def of(cls, table: OfferTable) -> Bounds:
        """Completions, then ``exit_ms`` as a suffix minimum over each offer's (offer, layer) pairs."""
        completions = Completions.of(table)
        lengths = table.end - table.start
        first = np.cumsum(lengths) - lengths
        rows = np.repeat(np.arange(lengths.size), lengths)
        offset = np.arange(rows.size) - first[rows]
        exit_at = table.start[rows] + offset + 1
        exit_ms = table.compute_ms_per_layer[rows] * exit_at + completions.fastest_latency_ms[exit_at]
        by_offset = np.argsort(offset, kind="stable")
        bounds = np.searchsorted(offset[by_offset], np.arange(int(lengths.max(initial=0)) + 1))
        for d in range(bounds.size - 3, -1, -1):  # suffix minimum within each offer, last layer first
            at = by_offset[bounds[d]:bounds[d + 1]]
            at = at[offset[at] + 1 < lengths[rows[at]]]
            exit_ms[at] = np.minimum(exit_ms[at], exit_ms[at + 1])
        return cls(completions, first.astype(np.int64), exit_ms)

    def of_labels(self, labels: Labels, boundary: int) -> tuple[Array, FloatArray]:
        """Lower bounds (price, latency) on any route through each label at ``boundary``."""
        return (labels.price + self.completions.cheapest_price[boundary],
                labels.latency_ms + self.completions.fastest_latency_ms[boundary])

    def of_entries(self, table: OfferTable, entries: Pending, boundary: int) -> tuple[Array, FloatArray]:
        """Lower bounds on any route through each pending entry still inside its offer at ``boundary``."""
        rows = entries.row
        price = entries.price + table.price[rows] + self.completions.cheapest_price[table.end[rows]]
        exit_ms = self.exit_ms[self.first_pair[rows] + boundary - table.start[rows]]
        return price, entries.shifted_ms + table.rtt_ms[rows] + exit_ms


class Incumbents:
    """Achievable (price, latency) points found so far, as a staircase; prunes what they dominate."""

    def __init__(self) -> None:
        self.price: Array = np.zeros(0, dtype=np.int64)
        self.latency_ms: FloatArray = np.zeros(0)

    def add(self, price: Array, latency_ms: FloatArray) -> None:
        """Merge achievable points into the staircase."""
        price = np.concatenate([self.price, price])
        latency_ms = np.concatenate([self.latency_ms, latency_ms])
        keep = _staircase(price, latency_ms)
        self.price, self.latency_ms = price[keep], latency_ms[keep]

    def beaten(self, price: Array, latency_ms: FloatArray) -> npt.NDArray[np.bool_]:
        """Whether an incumbent strictly dominates every point at or above ``(price, latency_ms)``.

        The latency bound is first lowered by a relative 1e-9 so rounding never prunes a Pareto point.
        """
        at = np.searchsorted(self.price, price, side="right") - 1
        clipped = np.maximum(at, 0)
        lowered = latency_ms * (1.0 - _LATENCY_SLACK)
        best_price, best_ms = self.price[clipped], self.latency_ms[clipped]
        return (at >= 0) & (best_ms <= lowered) & ((best_price < price) | (best_ms < lowered))


def _staircase(price: Array, latency_ms: FloatArray) -> IntArray:
    """Indices of the non-dominated, duplicate-free (price, latency) pairs, sorted by price.

    One stable sort by price (fast when the input is a few sorted runs); of equal pairs the first wins.
    """
    if price.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(_order_key(price), kind="stable")
    sorted_price, sorted_latency = price[order], latency_ms[order]
    new_price = np.concatenate(([True], sorted_price[1:] != sorted_price[:-1]))
    group = np.cumsum(new_price) - 1
    group_min = np.minimum.reduceat(sorted_latency, np.flatnonzero(new_price))
    before = np.concatenate(([np.inf], np.minimum.accumulate(group_min)[:-1]))
    candidate = np.flatnonzero((sorted_latency == group_min[group]) & (group_min < before)[group])
    first = np.concatenate(([True], group[candidate][1:] != group[candidate][:-1]))
    return order[candidate[first]]


# --------------------------------------------------------------------------------------- the sweep


@dataclass(slots=True)
class Search:
    """The state of one label sweep: table, bounds and incumbents."""

    table: OfferTable
    bounds: Bounds
    incumbents: Incumbents

    def leave(self, pending: Pending, boundary: int) -> Labels:
        """Labels at ``boundary``: every pending entry leaving its offer here, filtered to the frontier."""
        table, rows = self.table, pending.row
        price = pending.price + table.price[rows]
        latency_ms = pending.shifted_ms + table.rtt_ms[rows] + table.compute_ms_per_layer[rows] * boundary
        labels = Labels(price, latency_ms, rows, pending.start, pending.parent)
        labels = self.promising(labels, boundary)
        labels = labels.take(_staircase(labels.price, labels.latency_ms))
        self.incumbents.add(*self.bounds.completions.of_labels(labels, boundary))
        return self.promising(labels, boundary)

    def promising(self, labels: Labels, boundary: int) -> Labels:
        """Labels at ``boundary`` that may still lead to a Pareto-optimal route."""
        return labels.take(~self.incumbents.beaten(*self.bounds.of_labels(labels, boundary)))

    def prune(self, entries: Pending, boundary: int) -> Pending:
        """Entries that may still lead to a Pareto-optimal route."""
        return entries.take(~self.incumbents.beaten(*self.bounds.of_entries(self.table, entries, boundary)))

    def enter(self, pending: Pending, rows: IntArray, labels: Labels, boundary: int) -> Pending:
        """Pending entries after the offers covering layer ``boundary`` may start a hop there.

        ``pending`` holds only offers covering that layer, sorted by (offer, price), each offer's
        entries mutually non-dominated; so is the result. Cross-dominance is settled both ways without
        sorting, and the two sorted runs are merged by one stable sort.
        """
        if labels.price.size == 0:  # every path to this boundary was pruned
            return pending
        position = np.zeros(len(self.table.offers), dtype=np.int64)
        position[rows] = np.arange(rows.size)
        slot = np.searchsorted(labels.price, pending.price, side="left")
        shift_ms = -self.table.compute_ms_per_layer[pending.row] * boundary
        current = ~_outdated(pending, slot, labels, shift_ms)
        pending, slot = pending.take(current), slot[current]
        fresh, fresh_slot = self.fresh(pending, position[pending.row], slot, rows, labels, boundary)
        # A pending entry in slot s sorts before label s of the same offer.
        width = 2 * labels.price.size + 2
        merged_key = np.concatenate([position[pending.row] * width + 2 * slot,
                                     position[fresh.row] * width + 2 * fresh_slot + 1])
        return pending.concat(fresh).take(np.argsort(merged_key, kind="stable"))

    def fresh(self, pending: Pending, position: IntArray, slot: IntArray, rows: IntArray, labels: Labels,
              boundary: int) -> tuple[Pending, IntArray]:
        """Entries for the offers in ``rows`` starting a hop at ``boundary`` from the labels there that
        no pending entry of the same offer weakly dominates and the incumbents do not beat.

        ``best[p, s]`` is the lowest shifted latency of offer ``rows[p]``'s pending entries in label
        slots ``<= s`` (no dearer than label ``s``): a running minimum over an (offer, slot) grid.
        """
        count = labels.price.size
        best = np.full((rows.size, count + 1), np.inf)
        last = np.ones(slot.size, dtype=bool)
        last[:-1] = (position[1:] != position[:-1]) | (slot[1:] != slot[:-1])
        best[position[last], slot[last]] = pending.shifted_ms[last]
        best = np.minimum.accumulate(best, axis=1)[:, :count]
        shifted = labels.latency_ms[None, :] - (self.table.compute_ms_per_layer[rows] * boundary)[:, None]
        at, fresh_slot = np.nonzero(shifted < best)
        entries = Pending(rows[at], labels.price[fresh_slot], shifted[at, fresh_slot],
                          np.full(at.size, boundary, dtype=np.int64), fresh_slot)
        kept = ~self.incumbents.beaten(*self.bounds.of_entries(self.table, entries, boundary))
        return entries.take(kept), fresh_slot[kept]

    def run(self) -> list[Labels]:
        """Labels at every boundary 0..m."""
        table = self.table
        m = table.num_layers
        rows, _, offsets = table.layer_pairs
        labels = [Labels.origin(table.price.dtype)]
        self.incumbents.add(*self.bounds.completions.of_labels(labels[0], 0))
        pending = Pending.empty(table.price.dtype)
        for j in range(m + 1):
            if j > 0:
                labels.append(self.leave(pending, j))
                pending = pending.take(table.end[pending.row] > j)
            if j < m:
                pending = self.prune(pending, j)
                pending = self.enter(pending, rows[offsets[j]:offsets[j + 1]], labels[j], j)
        return labels


def _outdated(
    pending: Pending, slot: IntArray, labels: Labels, shift_ms: FloatArray
) -> npt.NDArray[np.bool_]:
    """Which pending entries an entry of the same offer from ``labels`` now dominates.

    ``slot`` counts the labels cheaper than each entry and ``shift_ms`` is its ``−k·j``. The label with
    the largest price not above the entry's has the lowest latency of those that could dominate it;
    equal points keep the pending entry.
    """
    same_price = slot < labels.price.size
    same_price[same_price] = labels.price[slot[same_price]] == pending.price[same_price]
    at = slot - 1 + same_price
    clipped = np.maximum(at, 0)
    fresh_ms = labels.latency_ms[clipped] + shift_ms
    better = (fresh_ms < pending.shifted_ms) | (
        (fresh_ms == pending.shifted_ms) & (labels.price[clipped] < pending.price))
    return (at >= 0) & better


def _route_of(table: OfferTable, labels: list[Labels], index: int) -> Route:
    """The route of label ``index`` at boundary ``m``, followed back through its parents."""
    steps: list[tuple[int, int, int]] = []
    end = table.num_layers
    while end > 0:
        label = labels[end]
        start = int(label.start[index])
        steps.append((int(label.row[index]), start, end))
        index, end = int(label.parent[index]), start
    return build_route(table.segments(steps[::-1]))


def _nondominated_routes(routes: Iterable[Route]) -> list[Route]:
    """Routes with non-dominated, distinct (price, latency), sorted by price."""
    frontier: list[Route] = []
    for route in sorted(routes, key=lambda r: (r.price_wei_per_token, r.latency_ms)):
        if not frontier or route.latency_ms < frontier[-1].latency_ms:
            frontier.append(route)
    return frontier


def pareto_frontier(offers: Iterable[RouteOffer], num_layers: int) -> list[Route]:
    """The exact price/latency Pareto frontier: one route per point, sorted by price ascending.

    Raises ``ValueError`` for malformed input and :class:`client.routing.NoRouteError` when no route exists.
    """
    table = OfferTable.build(offers, num_layers)
    require_route(table)
    table = table.subset(nondominated_offer_rows(table))
    labels = Search(table, Bounds.of(table), Incumbents()).run()
    return _nondominated_routes(_route_of(table, labels, i) for i in range(labels[-1].price.size))


# ---------------------------------------------------------------------------------- hull and alpha


def frontier_units(frontier: Sequence[Route]) -> ObjectiveUnits:
    """The α units of the network a frontier came from: its first point is the cheapest route, its last
    the fastest (the same values :func:`client.routing.objective_units` computes from the offers)."""
    if not frontier:
        raise ValueError("empty frontier")
    return ObjectiveUnits.from_extremes(frontier[0], frontier[-1])


def alpha_optimal(frontier: Sequence[Route], alpha: float) -> Route:
    """The α-optimal point of ``frontier``, with the tie-breaking of :func:`client.routing.find_route`."""
    check_alpha(alpha)
    units = frontier_units(frontier)
    return min(frontier, key=lambda route: route_key(route, alpha, units))


Point = tuple[Fraction, Fraction]


def _cross(o: Point, a: Point, b: Point) -> Fraction:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def convex_hull_points(frontier: Sequence[Route]) -> list[Route]:
    """The frontier's points on its lower-left convex hull (vertices only), sorted by price.

    These are the routes that minimize ``α·price + (1−α)·latency`` for some α, in any positive units.
    Computed exactly (prices and latencies as fractions); collinear points are left out.
    """
    hull: list[tuple[Point, Route]] = []
    for route in sorted(frontier, key=lambda r: (r.price_wei_per_token, r.latency_ms)):
        point = (Fraction(route.price_wei_per_token), Fraction(route.latency_ms))
        while len(hull) >= 2 and _cross(hull[-2][0], hull[-1][0], point) <= 0:
            hull.pop()
        hull.append((point, route))
    return [route for _, route in hull]


def hull_alpha_ranges(hull: Sequence[Route]) -> list[tuple[float, float]]:
    """For each hull point (from :func:`convex_hull_points`), the α range ``[lo, hi]`` where it is
    α-optimal in the units of :func:`frontier_units`; neighbouring ranges share their endpoints."""
    units = frontier_units(hull)
    scaled = [(Fraction(r.price_wei_per_token, units.price_wei_per_token),
               Fraction(r.latency_ms) / Fraction(units.latency_ms)) for r in hull]
    # Between points a and b, α·Δprice + (1−α)·Δlatency = 0 at α = Δlat / (Δlat − Δprice).
    switch = [float((a[1] - b[1]) / ((a[1] - b[1]) + (b[0] - a[0]))) for a, b in itertools.pairwise(scaled)]
    return list(zip([*switch, 0.0], [1.0, *switch], strict=True))
