"""Regenerate the paper's Figures 1–3, our equilibrium figures and the experiment report, from one seed.

    python scripts/figures.py --out figures/ [--seed 0] [--small]

Writes fig1_network_dag.png … fig5_equilibrium_vs_cost.png and report.md into --out. The numbers come from
`research.experiments` (pure, seeded); this script only draws them with matplotlib (Agg backend) and writes
the files. Stage times go to stderr, never into the report, so one seed gives the same report.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from client.routing import Route
from research.experiments import (
    FIGURE_FILES,
    ConvergenceTrace,
    ExperimentConfig,
    NetworkExperiment,
    RevenueCurves,
    RoutingScenario,
    reference_price,
    render_report,
    run_experiments,
)

ROUTE_COLOUR = "tab:red"
METHOD_NAMES = {"best_response/gauss_seidel": "best responses (Gauss–Seidel sweeps)",
                "best_response/jacobi": "best responses (Jacobi sweeps)"}
EXTRA_ROUTE_STYLES = {0.0: ("tab:blue", "α = 0 (fastest)"), 1.0: ("tab:green", "α = 1 (cheapest)")}


# --------------------------------------------------------------------------------------------------
# Figure 1: the network DAG


def _route_arcs(ax: Axes, route: Route, colour: str, rad: float, width: float, label: str) -> None:
    """One arrow per hop between its boundary vertices, bulging below the vertex line by `rad`."""
    for hop in route.hops:
        ax.add_patch(FancyArrowPatch(
            (hop.start, 0.0), (hop.end, 0.0), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
            mutation_scale=14, color=colour, lw=width, shrinkA=8, shrinkB=8, zorder=3,
        ))
    ax.plot([], [], color=colour, lw=width, label=label)  # legend proxy


def _route_label(name: str, route: Route) -> str:
    return f"{name}: price {reference_price(route.price_wei_per_token):.2f}, {route.latency_ms:.0f} ms/token"


def draw_dag(routing: RoutingScenario) -> Figure:
    """Boundaries as vertices, offers as boxes over their layers, the α-route highlighted."""
    offers, m = routing.offers, routing.num_layers
    n = len(offers)
    fig, ax = plt.subplots(figsize=(11.5, 7.0))
    colours = plt.get_cmap("tab10")
    row_of = {o.offer_id: n - k + 0.6 for k, o in enumerate(offers)}
    for k, offer in enumerate(offers):
        y = row_of[offer.offer_id]
        ax.add_patch(Rectangle((offer.start, y - 0.34), offer.end - offer.start, 0.68, facecolor=colours(k % 10),
                               alpha=0.25, edgecolor=colours(k % 10), lw=1.2))
        label = (f"{offer.node}: p = {reference_price(offer.price_wei_per_token):.2f}, "
                 f"{offer.compute_ms_per_layer:.1f} ms/layer")
        ax.text((offer.start + offer.end) / 2, y, label, ha="center", va="center", fontsize=8.5)
    route = routing.figure_route
    for hop in route.hops:
        y = row_of[hop.offer_id]
        ax.add_patch(Rectangle((hop.start, y - 0.34), hop.end - hop.start, 0.68, facecolor="none",
                               edgecolor=ROUTE_COLOUR, lw=2.8, zorder=4))
    for before, after in zip(route.hops, route.hops[1:], strict=False):  # the path passes from box to box
        ax.annotate("", (after.start, row_of[after.offer_id]), (before.end, row_of[before.offer_id]),
                    arrowprops={"arrowstyle": "-|>", "color": ROUTE_COLOUR, "lw": 1.6, "ls": "--"}, zorder=4)
    for b in range(m + 1):
        ax.axvline(b, color="0.88", lw=0.8, zorder=0)
        ax.plot(b, 0.0, "o", ms=15, mfc="white", mec="0.2", zorder=5)
        ax.text(b, 0.0, str(b), ha="center", va="center", fontsize=8, zorder=6)
    _route_arcs(ax, route, ROUTE_COLOUR, 0.25, 2.8, _route_label(f"α = {routing.figure_alpha:g} route", route))
    bulge = 0.45
    for alpha, other in routing.alpha_routes:
        if alpha in EXTRA_ROUTE_STYLES and alpha != routing.figure_alpha:
            colour, name = EXTRA_ROUTE_STYLES[alpha]
            _route_arcs(ax, other, colour, bulge, 1.3, _route_label(name, other))
            bulge += 0.2
    ax.set_xlim(-0.6, m + 0.6)
    ax.set_ylim(-2.6, n + 1.3)
    ax.set_yticks([0.0, *(row_of[o.offer_id] for o in offers)], ["vertices", *(o.node for o in offers)])
    ax.set_xticks(range(m + 1))
    ax.set_xlabel("layer boundary; an offer's box spans the half-open layer range [start, end) it serves; "
                  "a hop i → j uses layers [i, j) of one offer")
    ax.set_title(f"Figure 1: network DAG, {n} offers over {m} layers (prices in reference prices, 1e12 wei/token)",
                 fontsize=11)
    ax.legend(loc="lower left", fontsize=8.5, framealpha=0.95, ncols=3, bbox_to_anchor=(0.0, -0.01))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Figure 2: the Pareto frontier


def draw_frontier(routing: RoutingScenario) -> Figure:
    """The route cloud, the exact frontier as a staircase, its convex hull and the α-optimal points."""
    fig, ax = plt.subplots(figsize=(9.5, 6.5))
    cloud = routing.cloud
    what = "all routes" if cloud.enumerated else f"{cloud.price_wei_per_token.size} sampled routes"
    ax.scatter(cloud.price_wei_per_token / 1e12, cloud.latency_ms, s=5, color="0.6", alpha=0.35, lw=0,
               label=f"{what} (of {cloud.total_routes})")
    price = np.array([reference_price(r.price_wei_per_token) for r in routing.frontier])
    latency = np.array([r.latency_ms for r in routing.frontier])
    ax.step(price, latency, where="post", color="tab:blue", lw=2, label=f"Pareto frontier ({price.size} points)")
    ax.plot(price, latency, "o", color="tab:blue", ms=5)
    hull_price = [reference_price(r.price_wei_per_token) for r in routing.hull]
    hull_latency = [r.latency_ms for r in routing.hull]
    ax.plot(hull_price, hull_latency, "--", color="tab:orange", lw=1.6,
            label=f"convex hull ({len(hull_price)} vertices)")
    groups: dict[tuple[int, float], list[float]] = {}
    for alpha, route in routing.alpha_routes:
        groups.setdefault((route.price_wei_per_token, route.latency_ms), []).append(alpha)
    for k, ((p_wei, lat), alphas) in enumerate(sorted(groups.items())):
        x = reference_price(p_wei)
        ax.plot(x, lat, "*", color=ROUTE_COLOUR, ms=16, mec="black", zorder=5,
                label="α-optimal routes (find_route)" if k == 0 else None)
        # Nothing lies below-left of the frontier, so the labels go there.
        ax.annotate("α = " + ", ".join(f"{a:g}" for a in alphas), (x, lat), xytext=(-14, -26),
                    textcoords="offset points", ha="right", fontsize=10, zorder=6,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.6", "alpha": 0.9},
                    arrowprops={"arrowstyle": "-", "color": "0.3"})
    ax.margins(x=0.12, y=0.12)
    ax.set_xlabel("route price per token (reference prices, 1e12 wei)")
    ax.set_ylabel("route latency per token (ms)")
    ax.set_title("Figure 2: routes' price vs latency, the exact Pareto frontier and its convex hull", fontsize=11)
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Figure 3: revenue versus price


def draw_revenue(revenue: RevenueCurves) -> Figure:
    """One curve R(p) per compute cost, maxima marked."""
    fig, ax = plt.subplots(figsize=(9.5, 6.0))
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, revenue.costs.size))
    for cost, curve, p_star, r_star, colour in zip(revenue.costs, revenue.revenues, revenue.best_prices,
                                                   revenue.best_revenues, colours, strict=True):
        ax.plot(revenue.price_grid, curve, color=colour, lw=2,
                label=f"c = {cost:g}: p* = {p_star:.3f}, R* = {r_star:.3f}")
        ax.plot(p_star, r_star, "o", color=colour, mec="black", ms=8, zorder=5)
        ax.vlines(p_star, 0.0, r_star, color=colour, ls=":", lw=1)
    ax.plot(revenue.best_prices, revenue.best_revenues, "--", color="0.3", lw=1, label="maxima")
    rules = revenue.rules
    ax.set_xlabel("price p (reference prices)")
    ax.set_ylabel("expected revenue R(p) = p·P(w) (reference prices per request)")
    ax.set_title(f"Figure 3: effect of compute cost on expected revenue — one node vs {revenue.rival_costs.size} "
                 f"rivals, α = {rules.alpha:g}, T = {rules.temperature:g}", fontsize=11)
    ax.set_xlim(revenue.price_grid[0], revenue.price_grid[-1])
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Figure 4: convergence to the network equilibrium


def draw_convergence(trace: ConvergenceTrace, tol: float) -> Figure:
    """Price trajectories coloured by cost, and the residual on a log axis."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1.35, 1]})
    steps = np.arange(trace.prices.shape[0])
    norm = Normalize(vmin=float(trace.costs.min()), vmax=float(trace.costs.max()))
    lines = LineCollection([np.column_stack([steps, trace.prices[:, i]]) for i in range(trace.prices.shape[1])],
                           cmap="viridis", norm=norm, lw=1.0, alpha=0.8)
    lines.set_array(trace.costs)
    left.add_collection(lines)
    eq = trace.equilibrium
    end = steps[-1] * 1.03 + 1
    left.scatter(np.full(eq.prices.size, end), eq.prices, marker="_", s=120, c=trace.costs, cmap="viridis", norm=norm,
                 label="best-response equilibrium")
    left.set_xscale("symlog", linthresh=1.0)
    left.set_xlim(0, end * 1.15)
    low, high = float(trace.prices.min()), float(max(trace.prices.max(), eq.prices.max()))
    left.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    left.set_xlabel("gradient-ascent step, all nodes at once (Eq. 5); symlog axis")
    left.set_ylabel("price p (reference prices)")
    left.set_title(f"prices of {trace.prices.shape[1]} nodes, α = {trace.alpha:g}", fontsize=10)
    left.legend(loc="lower right", fontsize=9)
    fig.colorbar(lines, ax=left, label="compute cost c")
    right.semilogy(steps, trace.residuals, color="tab:blue", lw=1.8, label="gradient ascent")
    sweeps = np.arange(len(eq.residuals))
    positive = np.maximum(np.asarray(eq.residuals), np.finfo(float).tiny)
    right.semilogy(sweeps, positive, "o-", color="tab:red", ms=4, lw=1.2, label=METHOD_NAMES.get(eq.method, eq.method))
    right.axhline(tol, color="0.4", ls="--", lw=1, label=f"tolerance {tol:g}")
    right.set_xscale("symlog", linthresh=1.0)
    right.set_xlabel("iteration: gradient step / best-response sweep; symlog axis")
    right.set_ylabel("KKT residual max_i |p_i − clip(T/(α(1 − P̂_i)))|")
    right.set_title("residual", fontsize=10)
    right.set_xlim(0, max(float(steps[-1]), float(sweeps[-1])) * 1.3)
    right.set_ylim(bottom=float(min(positive.min(), trace.residuals.min())) * 1e-4)  # room for the legend
    right.legend(loc="lower left", fontsize=9)
    right.grid(alpha=0.3, which="both")
    fig.suptitle(f"Figure 4: simultaneous gradient ascent converges to the network equilibrium "
                 f"({trace.prices.shape[0] - 1} steps)", fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Figure 5: equilibrium versus cost


def draw_sweep(network: NetworkExperiment) -> Figure:
    """Equilibrium price, share and revenue of one node as its cost varies."""
    sweep = network.sweep
    own_cost = float(network.market.costs[sweep.node])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    left.plot(sweep.costs, sweep.prices, "o-", color="tab:purple", lw=2)
    left.set_ylabel("equilibrium price p (reference prices)")
    left.set_title("price", fontsize=10)
    right.plot(sweep.costs, sweep.revenues, "o-", color="tab:green", lw=2, label="revenue R")
    right.set_ylabel("expected revenue R (reference prices per request)")
    share_axis = right.twinx()
    share_axis.plot(sweep.costs, sweep.shares, "s--", color="tab:orange", lw=1.2, ms=4, label="share S")
    share_axis.set_ylabel("share S")
    right.set_title("revenue and share", fontsize=10)
    handles = right.get_legend_handles_labels()[0] + share_axis.get_legend_handles_labels()[0]
    right.legend(handles, [h.get_label() for h in handles], fontsize=9)
    for ax in (left, right):
        ax.axvline(own_cost, color="0.4", ls=":", lw=1)
        ax.set_xlabel(f"compute cost c of node n{sweep.node} (all others re-price; dotted: its simulated cost)")
        ax.grid(alpha=0.3)
    offer = network.offers[sweep.node]
    fig.suptitle(f"Figure 5: equilibrium of node n{sweep.node} (layers [{offer.start},{offer.end})) vs its compute "
                 f"cost, α = {network.market.rules.alpha:g}, every node re-pricing", fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="figures.py", description="Regenerate the figures and report.md.")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every scenario (default 0)")
    parser.add_argument("--small", action="store_true", help="a small, quick scenario (for tests)")
    return parser


def _timed(name: str, make: Callable[[], object]) -> object:
    started = time.perf_counter()
    result = make()
    print(f"{name}: {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return result


def _save(fig: Figure, path: Path, dpi: int) -> None:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(args_list)
    started = time.perf_counter()
    config = ExperimentConfig.small(args.seed) if args.small else ExperimentConfig.full(args.seed)
    experiments = run_experiments(config)
    print(f"experiments: {time.perf_counter() - started:.2f} s", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    dpi = 100 if args.small else 150
    drawings = {
        "dag": lambda: draw_dag(experiments.routing),
        "frontier": lambda: draw_frontier(experiments.routing),
        "revenue": lambda: draw_revenue(experiments.revenue),
        "convergence": lambda: draw_convergence(experiments.network.trace, config.gradient_tol),
        "sweep": lambda: draw_sweep(experiments.network),
    }
    for key, draw in drawings.items():
        path = args.out / FIGURE_FILES[key]
        _timed(str(path), lambda draw=draw, path=path: _save(draw(), path, dpi))
    command = shlex.join(["python", "scripts/figures.py", *args_list])
    report = args.out / "report.md"
    report.write_text(render_report(experiments, command), encoding="utf-8")
    print(f"{report}; total {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
