"""The picture behind `p2pclient routes --plot`: the exact price/latency Pareto frontier of routes, its lower
convex hull, the α-optimal route and the line of equal α-objective through it.

Boundary: draws the routes it is given. It computes no routes, hulls or α choices (that is
:mod:`client.frontier`); it only reads the α units from there to draw the equal-objective line. It draws on a
private matplotlib ``Figure`` with the Agg canvas (no pyplot, no global backend), so it runs headless and
inside other programs. Knows nothing about the chain, HTTP or sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from client.frontier import frontier_units
from client.routing import Route

WEI_PER_GWEI = 10**9


def _gwei(route: Route) -> float:
    return route.price_wei_per_token / WEI_PER_GWEI


def plot_frontier(path: Path, frontier: Sequence[Route], hull: Sequence[Route], chosen: Route, alpha: float,
                  title: str) -> None:
    """Write a PNG of `frontier` (sorted by price, as `pareto_frontier` returns it) to `path`.

    Points are numbered as in the `routes` table (#1 is the cheapest). `hull` is drawn as a dashed line,
    `chosen` as a star, and the dotted line is ``α·P/P* + (1−α)·L/L* = const`` through `chosen`.
    """
    if not frontier:
        raise ValueError("empty frontier: nothing to plot")
    figure = Figure(figsize=(7.5, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    prices = [_gwei(r) for r in frontier]
    latencies = [r.latency_ms for r in frontier]
    ax.plot(prices, latencies, drawstyle="steps-post", color="tab:blue", alpha=0.35, linewidth=1)
    ax.scatter(prices, latencies, color="tab:blue", zorder=3, label=f"Pareto frontier ({len(frontier)} routes)")
    for number, route in enumerate(frontier, start=1):
        ax.annotate(f"#{number} ({len(route.hops)} hop{'s' if len(route.hops) != 1 else ''})",
                    (_gwei(route), route.latency_ms), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if len(hull) > 1:
        ax.plot([_gwei(r) for r in hull], [r.latency_ms for r in hull], linestyle="--", color="tab:orange",
                label="lower convex hull (α-optimal for some α)")
    ax.scatter([_gwei(chosen)], [chosen.latency_ms], marker="*", s=260, color="tab:red", zorder=4,
               label=f"α = {alpha:g} choice")
    _equal_objective_line(ax, frontier, chosen, alpha)
    pad_x = max(prices) - min(prices) or max(abs(prices[0]), 1.0)
    pad_y = max(latencies) - min(latencies) or max(abs(latencies[0]), 1.0)
    ax.set_xlim(min(prices) - 0.15 * pad_x, max(prices) + 0.25 * pad_x)
    ax.set_ylim(min(latencies) - 0.15 * pad_y, max(latencies) + 0.25 * pad_y)
    ax.set_xlabel("price (gwei per token)")
    ax.set_ylabel("latency (ms per token, estimated)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    figure.savefig(path, dpi=120)


def _equal_objective_line(ax: Axes, frontier: Sequence[Route], chosen: Route, alpha: float) -> None:
    """The routes with the chosen route's α-objective lie on a line; every frontier point is on or above it."""
    units = frontier_units(frontier)
    span = max(_gwei(frontier[-1]) - _gwei(frontier[0]), abs(_gwei(chosen)), 1e-9)
    x0 = _gwei(chosen)
    if alpha == 1:  # only price counts: a vertical line
        ax.axvline(x0, linestyle=":", color="grey", label="equal objective at α")
        return
    # α·P/P* + (1−α)·L/L* = w  ⇒  dL/dP = −α·L*/((1−α)·P*), with P in gwei.
    slope = -alpha * units.latency_ms / ((1 - alpha) * (units.price_wei_per_token / WEI_PER_GWEI))
    xs = [x0 - 2 * span, x0 + 2 * span]
    ys = [chosen.latency_ms + slope * (x - x0) for x in xs]
    ax.plot(xs, ys, linestyle=":", color="grey", label="equal objective at α")
