"""The experiments behind the paper's Figures 1–3 and our report: seeded scenarios in, figure data and tables out.

Boundary: pure computation over `client.routing`, `client.frontier`, `p2pllm.pricing` and
`p2pllm.equilibrium`. No plotting, no files, no clocks, no global random state: every random draw comes
from `numpy.random.default_rng` seeded by `ExperimentConfig.seed`, so one seed gives the same data and
the same report text, byte for byte. `render_report` turns the data into the Markdown report (a string);
`scripts/figures.py` draws the figures and writes the files.
(Layering: this is the one `p2pllm` module that imports `client`; the route table needs `find_route`.)

Units and conversions (market units are dimensionless, see `p2pllm.pricing`)
    price p  = price_wei_per_token / REFERENCE_PRICE_WEI_PER_TOKEN          (1e12 wei per token)
    cost  c  = compute ms per layer per token / REFERENCE_LATENCY_MS          (10 ms per layer)
  A node's cost c is its hardware speed: the market compares nodes on a shared layer, where the time
  per layer is what differs, so a `MarketOffer(start, end, p, c)` becomes the router's
  `RouteOffer(price_wei_per_token = round(p · 1e12), compute_ms_per_layer = c · 10 ms,
  rtt_ms = HOP_RTT_MS)` with one round trip of 20 ms per hop for every node (`to_route_offers`).
  Revenue is in reference prices per client request. The client's α (route objective, normalized by
  the cheapest price and the fastest latency, see `client.routing`) is not the market's α (weight
  α·p + (1−α)·c in reference units); the route table routes clients of every α over the prices of the
  market at `ExperimentConfig.market_alpha`.

Scenarios
    * routing scenario (Figures 1–2): ranges and costs from `simulate_network(scenario_nodes,
      scenario_layers)`; posted prices (not an equilibrium) p_i = c_i^(−1.5) · lognormal(0, 0.2), so fast
      nodes are dear and the price/latency trade-off is visible. Its routes are enumerated when there are
      at most `max_routes`, otherwise `max_routes` are drawn uniformly at random (counting DP).
    * revenue curves (Figure 3): one node among `revenue_rivals` rivals serving the same layers (the
      paper's setting). Rivals have lognormal costs and the prices of the equilibrium with the node at
      cost 1; the node's revenue R(p) = p·P(w) is traced for each cost in `revenue_costs`, rivals fixed.
    * simulated network (Figures 4–5, tables): `simulate_network(network_nodes, network_layers, seed)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from client.frontier import convex_hull_points, hull_alpha_ranges, pareto_frontier
from client.routing import Route, RouteOffer, build_route, find_route
from p2pllm.equilibrium import (
    CostSweep,
    EquilibriumResult,
    best_response_equilibrium,
    equilibrium_vs_cost,
    gradient_equilibrium,
    kkt_residual,
    max_unilateral_gain,
    simulate_network,
    solve_equilibrium,
)
from p2pllm.pricing import (
    Market,
    MarketOffer,
    PricingRules,
    cost_to_ms,
    price_to_wei,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

REFERENCE_PRICE_WEI_PER_TOKEN = 10**12
REFERENCE_LATENCY_MS = 10.0
HOP_RTT_MS = 20.0
SCENARIO_PRICE_EXPONENT = 1.5
SCENARIO_PRICE_NOISE = 0.2
FIGURE_ALPHA = 0.5

FIGURE_FILES: dict[str, str] = {
    "dag": "fig1_network_dag.png",
    "frontier": "fig2_pareto_frontier.png",
    "revenue": "fig3_revenue_vs_price.png",
    "convergence": "fig4_equilibrium_convergence.png",
    "sweep": "fig5_equilibrium_vs_cost.png",
}

# Independent random streams per scenario: default_rng((seed, stream)).
_SCENARIO_PRICE_STREAM = 1
_REVENUE_STREAM = 2
_ROUTE_SAMPLE_STREAM = 3


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ExperimentConfig:
    """Every input of a run. `full()` is the report's run, `small()` a quick one for the test suite."""

    seed: int = 0
    # routing scenario (Figures 1–2)
    scenario_nodes: int = 8
    scenario_layers: int = 12
    scenario_min_span: int = 2
    scenario_max_span: int = 6
    max_routes: int = 30_000
    figure_alpha: float = FIGURE_ALPHA
    route_alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    # market
    market_alpha: float = 0.5
    temperature: float = 1.0
    price_floor: float = 0.0
    price_ceiling: float = 100.0
    # revenue curves (Figure 3)
    revenue_rivals: int = 4
    revenue_costs: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    revenue_grid: int = 801
    # simulated network (Figures 4–5, tables)
    network_nodes: int = 50
    network_layers: int = 30
    network_min_span: int = 3
    network_max_span: int = 12
    convergence_alphas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    learning_rate: float = 1.0
    max_step: float = 0.5
    gradient_tol: float = 1e-9
    best_response_tol: float = 1e-10
    gain_grid: int = 10_001
    sweep_costs: tuple[float, ...] = field(
        default_factory=lambda: tuple(float(c) for c in np.round(np.linspace(0.25, 3.0, 12), 6))
    )
    top_nodes: int = 5

    @classmethod
    def full(cls, seed: int = 0) -> ExperimentConfig:
        """The report's run: 50 nodes over 30 layers."""
        return cls(seed=seed)

    @classmethod
    def small(cls, seed: int = 0) -> ExperimentConfig:
        """A quick run (a few seconds): 20 nodes over 12 layers, coarser grids, fewer sampled routes."""
        return cls(
            seed=seed,
            max_routes=800,
            revenue_grid=201,
            network_nodes=20,
            network_layers=12,
            network_max_span=8,
            gain_grid=2_001,
            sweep_costs=(0.25, 0.75, 1.5, 3.0),
            top_nodes=3,
        )

    def rules(self, alpha: float | None = None) -> PricingRules:
        """The pricing rules of the market (at `market_alpha` unless another α is given)."""
        return PricingRules(
            alpha=self.market_alpha if alpha is None else alpha,
            temperature=self.temperature,
            price_floor=self.price_floor,
            price_ceiling=self.price_ceiling,
        )


# --------------------------------------------------------------------------------------------------
# unit conversions


def to_route_offers(offers: Sequence[MarketOffer], prices: npt.ArrayLike | None = None) -> tuple[RouteOffer, ...]:
    """Market offers as the router sees them (see the module doc); offer i becomes id i, node ``n<i>``.

    `prices` (dimensionless) replaces the offers' own prices, e.g. with equilibrium prices.
    """
    values = [o.price for o in offers] if prices is None else np.asarray(prices, dtype=np.float64).tolist()
    if len(values) != len(offers):
        raise ValueError(f"need one price per offer ({len(offers)}), got {len(values)}")
    return tuple(
        RouteOffer(
            offer_id=i,
            node=f"n{i}",
            start=o.start,
            end=o.end,
            price_wei_per_token=price_to_wei(float(p), REFERENCE_PRICE_WEI_PER_TOKEN),
            rtt_ms=HOP_RTT_MS,
            compute_ms_per_layer=cost_to_ms(o.cost, REFERENCE_LATENCY_MS),
        )
        for i, (o, p) in enumerate(zip(offers, values, strict=True))
    )


def reference_price(price_wei_per_token: int) -> float:
    """Wei per token in reference prices (1e12 wei)."""
    return price_wei_per_token / REFERENCE_PRICE_WEI_PER_TOKEN


# --------------------------------------------------------------------------------------------------
# Figures 1–2: the routing scenario, its route cloud, frontier, hull and α-routes


@dataclass(frozen=True, eq=False)
class RouteCloud:
    """(price, latency) per token of distinct routes: all of them, or a uniform sample."""

    price_wei_per_token: IntArray
    latency_ms: FloatArray
    total_routes: int
    enumerated: bool


@dataclass(frozen=True, eq=False)
class RoutingScenario:
    """Figures 1 and 2: the offers, every route's point, the exact frontier and hull, the α-optimal routes."""

    market_offers: tuple[MarketOffer, ...]
    offers: tuple[RouteOffer, ...]
    num_layers: int
    cloud: RouteCloud
    frontier: tuple[Route, ...]
    hull: tuple[Route, ...]
    hull_alpha_ranges: tuple[tuple[float, float], ...]
    alpha_routes: tuple[tuple[float, Route], ...]
    figure_alpha: float

    @property
    def figure_route(self) -> Route:
        """The route highlighted in Figure 1."""
        return dict(self.alpha_routes)[self.figure_alpha]


def routing_scenario_offers(config: ExperimentConfig) -> tuple[MarketOffer, ...]:
    """The routing scenario's offers with their posted prices p_i = c_i^(−1.5)·lognormal(0, 0.2)."""
    base = simulate_network(
        config.scenario_nodes,
        config.scenario_layers,
        config.seed,
        min_span=config.scenario_min_span,
        max_span=config.scenario_max_span,
    )
    rng = np.random.default_rng((config.seed, _SCENARIO_PRICE_STREAM))
    noise = np.exp(rng.normal(0.0, SCENARIO_PRICE_NOISE, size=len(base)))
    return tuple(
        MarketOffer(o.start, o.end, float(o.cost**-SCENARIO_PRICE_EXPONENT * n), o.cost)
        for o, n in zip(base, noise, strict=True)
    )


def count_routes(offers: Sequence[RouteOffer], num_layers: int) -> list[list[int]]:
    """``counts[j][k]``: distinct routes from boundary ``j`` to ``num_layers`` whose hop before ``j`` used
    offer position ``k`` (``k = len(offers)``: none). A distinct route never uses one offer in two
    consecutive hops (`build_route` would merge them), so those are not counted."""
    n = len(offers)
    counts = [[0] * (n + 1) for _ in range(num_layers + 1)]
    counts[num_layers] = [1] * (n + 1)
    for j in range(num_layers - 1, -1, -1):
        from_here = [
            sum(counts[k][o] for k in range(j + 1, offer.end + 1)) if offer.start <= j < offer.end else 0
            for o, offer in enumerate(offers)
        ]
        total = sum(from_here)
        counts[j] = [total - (from_here[last] if last < n else 0) for last in range(n + 1)]
    return counts


def _hop_choices(
    offers: Sequence[RouteOffer], counts: list[list[int]], j: int, last: int
) -> list[tuple[int, int, int]]:
    """``(offer position, end, routes onward)`` for every next hop from boundary ``j`` after ``last``."""
    return [
        (o, k, counts[k][o])
        for o, offer in enumerate(offers)
        if o != last and offer.start <= j < offer.end
        for k in range(j + 1, offer.end + 1)
    ]


def _all_routes(offers: Sequence[RouteOffer], counts: list[list[int]], num_layers: int) -> list[Route]:
    routes: list[Route] = []
    stack: list[tuple[int, int, tuple[tuple[int, int, int], ...]]] = [(0, len(offers), ())]
    while stack:
        j, last, steps = stack.pop()
        if j == num_layers:
            routes.append(build_route((offers[o], a, b) for o, a, b in steps))
            continue
        for o, k, _ in reversed(_hop_choices(offers, counts, j, last)):
            stack.append((k, o, (*steps, (o, j, k))))
    return routes


def _sampled_routes(
    offers: Sequence[RouteOffer], counts: list[list[int]], num_layers: int, draws: int, rng: np.random.Generator
) -> list[Route]:
    """Distinct routes among `draws` uniform draws (each hop chosen in proportion to routes onward)."""
    seen: dict[tuple[tuple[int, int, int], ...], Route] = {}
    for _ in range(draws):
        j, last, steps = 0, len(offers), []
        while j < num_layers:
            choices = _hop_choices(offers, counts, j, last)
            weights = np.array([float(c) for _, _, c in choices])
            o, k, _ = choices[int(rng.choice(len(choices), p=weights / weights.sum()))]
            steps.append((o, j, k))
            j, last = k, o
        key = tuple(steps)
        if key not in seen:
            seen[key] = build_route((offers[o], a, b) for o, a, b in steps)
    return list(seen.values())


def route_cloud(
    offers: Sequence[RouteOffer], num_layers: int, max_routes: int, rng: np.random.Generator
) -> RouteCloud:
    """Every distinct route's (price, latency) when there are at most `max_routes`, else a uniform sample
    (distinct routes among `max_routes` draws). Raises ``ValueError`` when no route exists."""
    if max_routes < 1:
        raise ValueError(f"max_routes must be >= 1, got {max_routes}")
    counts = count_routes(offers, num_layers)
    total = counts[0][len(offers)]
    if total == 0:
        raise ValueError("no route covers every layer")
    enumerated = total <= max_routes
    routes = (
        _all_routes(offers, counts, num_layers)
        if enumerated
        else _sampled_routes(offers, counts, num_layers, max_routes, rng)
    )
    return RouteCloud(
        price_wei_per_token=np.array([r.price_wei_per_token for r in routes], dtype=np.int64),
        latency_ms=np.array([r.latency_ms for r in routes], dtype=np.float64),
        total_routes=total,
        enumerated=enumerated,
    )


def routing_scenario(config: ExperimentConfig) -> RoutingScenario:
    """Figures 1–2: the seeded routing scenario and everything plotted about its routes."""
    market_offers = routing_scenario_offers(config)
    offers = to_route_offers(market_offers)
    m = config.scenario_layers
    frontier = tuple(pareto_frontier(offers, m))
    hull = tuple(convex_hull_points(frontier))
    alphas = tuple(sorted({*config.route_alphas, config.figure_alpha}))
    alpha_routes = tuple((a, find_route(offers, m, a)) for a in alphas)
    rng = np.random.default_rng((config.seed, _ROUTE_SAMPLE_STREAM))
    return RoutingScenario(
        market_offers=market_offers,
        offers=offers,
        num_layers=m,
        cloud=route_cloud(offers, m, config.max_routes, rng),
        frontier=frontier,
        hull=hull,
        hull_alpha_ranges=tuple(hull_alpha_ranges(hull)),
        alpha_routes=alpha_routes,
        figure_alpha=config.figure_alpha,
    )


# --------------------------------------------------------------------------------------------------
# Figure 3: one node's revenue curve for several compute costs, rivals fixed


@dataclass(frozen=True, eq=False)
class RevenueCurves:
    """R(p) = p·P(w) of node 0 among rivals on the same layers, one curve per cost of node 0."""

    rules: PricingRules
    rival_costs: FloatArray
    rival_prices: FloatArray
    costs: FloatArray
    price_grid: FloatArray
    revenues: FloatArray  # (len(costs), len(price_grid))
    best_prices: FloatArray
    best_shares: FloatArray
    best_revenues: FloatArray


def revenue_curves(
    rules: PricingRules, rival_costs: Sequence[float], costs: Sequence[float], n_grid: int
) -> RevenueCurves:
    """Node 0 (cost 1 while rivals settle) and its rivals serve the same layer; the rivals' prices are
    the equilibrium's and stay fixed while node 0's cost takes each value of `costs`. The price grid
    runs from the floor to 2.5 times the largest optimal price (capped by the ceiling)."""
    if n_grid < 2:
        raise ValueError(f"n_grid must be >= 2, got {n_grid}")
    n = len(rival_costs) + 1
    market = Market([(0, 1)] * n, [1.0, *rival_costs], rules, n_layers=1)
    settled = solve_equilibrium(market)
    demands = [market.with_cost(0, c).demand(0, settled.prices) for c in costs]
    best = np.array([d.best_response() for d in demands])
    top = min(rules.price_ceiling, max(rules.price_floor + 1.0, 2.5 * float(best.max())))
    grid = np.linspace(rules.price_floor, top, n_grid)
    return RevenueCurves(
        rules=rules,
        rival_costs=np.asarray(rival_costs, dtype=np.float64),
        rival_prices=settled.prices[1:].copy(),
        costs=np.asarray(costs, dtype=np.float64),
        price_grid=grid,
        revenues=np.array([d.revenue(grid) for d in demands]),
        best_prices=best,
        best_shares=np.array([float(d.share(p)) for d, p in zip(demands, best, strict=True)]),
        best_revenues=np.array([float(d.revenue(p)) for d, p in zip(demands, best, strict=True)]),
    )


def revenue_scenario(config: ExperimentConfig) -> RevenueCurves:
    """Figure 3 with lognormal rival costs (median 1, log-spread 0.5) from the seed."""
    rng = np.random.default_rng((config.seed, _REVENUE_STREAM))
    rival_costs = np.exp(rng.normal(0.0, 0.5, size=config.revenue_rivals))
    return revenue_curves(config.rules(), rival_costs.tolist(), config.revenue_costs, config.revenue_grid)


# --------------------------------------------------------------------------------------------------
# Figure 4 and the convergence table: the simulated network's equilibrium


def gradient_trajectory(
    market: Market,
    initial_prices: npt.ArrayLike | None = None,
    *,
    learning_rate: float = 1.0,
    max_step: float = 0.5,
    tol: float = 1e-9,
    max_iterations: int = 20_000,
) -> FloatArray:
    """Every price vector `gradient_equilibrium` visits (row t: after t steps), the same steps in the
    same order, so the last row equals its result's prices."""
    rows: list[FloatArray] = []
    gradient_equilibrium(market, initial_prices, learning_rate=learning_rate, max_step=max_step, tol=tol,
                         max_iterations=max_iterations, trajectory=rows)
    return np.array(rows)


def foc_error(market: Market, prices: npt.ArrayLike) -> float:
    """Largest relative gap |p_i − T/(α(1 − P̂_i))| / (T/(α(1 − P̂_i))) over nodes strictly inside
    [floor, ceiling] (the paper's FOC p = T/(α(1 − P))); NaN when no node is interior."""
    p = np.asarray(prices, dtype=np.float64)
    rules = market.rules
    target = market.foc_prices(p)
    interior = (p > rules.price_floor) & (p < rules.price_ceiling) & np.isfinite(target)
    if not interior.any():
        return math.nan
    return float((np.abs(p[interior] - target[interior]) / target[interior]).max())


@dataclass(frozen=True)
class ConvergenceRow:
    """One method at one α on the simulated network, judged by independent checks."""

    alpha: float
    method: str
    iterations: int
    residual: float
    foc_error: float
    max_gain: float
    converged: bool


def convergence_row(market: Market, result: EquilibriumResult, gain_grid: int) -> ConvergenceRow:
    """The table row of `result`: its own residual, plus the FOC error and unilateral-gain checks."""
    return ConvergenceRow(
        alpha=market.rules.alpha,
        method=result.method,
        iterations=result.iterations,
        residual=result.residual,
        foc_error=foc_error(market, result.prices),
        max_gain=max_unilateral_gain(market, result.prices, gain_grid),
        converged=result.converged,
    )


def convergence_table(
    offers: Sequence[MarketOffer], config: ExperimentConfig
) -> tuple[tuple[ConvergenceRow, ...], dict[float, EquilibriumResult]]:
    """Gradient ascent (Eq. 5), Gauss–Seidel and Jacobi best responses at every α of the config; also
    returns the Gauss–Seidel equilibrium per α."""
    rows: list[ConvergenceRow] = []
    equilibria: dict[float, EquilibriumResult] = {}
    for alpha in config.convergence_alphas:
        market = Market.from_offers(offers, config.rules(alpha), config.network_layers)
        gradient = gradient_equilibrium(
            market, learning_rate=config.learning_rate, max_step=config.max_step, tol=config.gradient_tol
        )
        gauss_seidel = best_response_equilibrium(market, tol=config.best_response_tol)
        jacobi = best_response_equilibrium(market, scheme="jacobi", tol=config.best_response_tol)
        rows += [convergence_row(market, r, config.gain_grid) for r in (gradient, gauss_seidel, jacobi)]
        equilibria[alpha] = gauss_seidel
    return tuple(rows), equilibria


@dataclass(frozen=True, eq=False)
class ConvergenceTrace:
    """Figure 4: the gradient dynamic's prices and residuals, and the best-response equilibrium."""

    alpha: float
    costs: FloatArray
    prices: FloatArray  # (iterations + 1, nodes)
    residuals: FloatArray  # (iterations + 1,)
    equilibrium: EquilibriumResult


def convergence_trace(market: Market, equilibrium: EquilibriumResult, config: ExperimentConfig) -> ConvergenceTrace:
    """Figure 4 on `market` (the simulated network at the market α)."""
    prices = gradient_trajectory(
        market, learning_rate=config.learning_rate, max_step=config.max_step, tol=config.gradient_tol
    )
    residuals = np.array([kkt_residual(market, p) for p in prices])
    return ConvergenceTrace(market.rules.alpha, market.costs, prices, residuals, equilibrium)


# --------------------------------------------------------------------------------------------------
# the client's routes over equilibrium prices, and the cost sweep (Figure 5)


@dataclass(frozen=True)
class RouteRow:
    """The α-optimal route over the equilibrium prices."""

    alpha: float
    route: Route

    @property
    def price(self) -> float:
        """Route price per token in reference prices."""
        return reference_price(self.route.price_wei_per_token)


def route_table(offers: Sequence[RouteOffer], num_layers: int, alphas: Sequence[float]) -> tuple[RouteRow, ...]:
    """`find_route` for every α."""
    return tuple(RouteRow(a, find_route(offers, num_layers, a)) for a in alphas)


def median_cost_node(costs: npt.ArrayLike) -> int:
    """The node whose cost is closest to the median cost (lowest index on ties)."""
    c = np.asarray(costs, dtype=np.float64)
    return int(np.argmin(np.abs(c - np.median(c))))


@dataclass(frozen=True, eq=False)
class NetworkExperiment:
    """The simulated network at the market α: equilibrium, convergence, routes and the cost sweep."""

    offers: tuple[MarketOffer, ...]
    market: Market
    equilibrium: EquilibriumResult
    convergence: tuple[ConvergenceRow, ...]
    trace: ConvergenceTrace
    route_offers: tuple[RouteOffer, ...]
    routes: tuple[RouteRow, ...]
    frontier_size: int
    sweep: CostSweep


def network_experiment(config: ExperimentConfig) -> NetworkExperiment:
    """Figures 4–5 and the network tables."""
    offers = simulate_network(
        config.network_nodes,
        config.network_layers,
        config.seed,
        min_span=config.network_min_span,
        max_span=config.network_max_span,
    )
    rows, equilibria = convergence_table(offers, config)
    market = Market.from_offers(offers, config.rules(), config.network_layers)
    equilibrium = equilibria.get(config.market_alpha)
    if equilibrium is None:
        equilibrium = solve_equilibrium(market, tol=config.best_response_tol)
    route_offers = to_route_offers(offers, equilibrium.prices)
    node = median_cost_node(market.costs)
    return NetworkExperiment(
        offers=offers,
        market=market,
        equilibrium=equilibrium,
        convergence=rows,
        trace=convergence_trace(market, equilibrium, config),
        route_offers=route_offers,
        routes=route_table(route_offers, config.network_layers, config.route_alphas),
        frontier_size=len(pareto_frontier(route_offers, config.network_layers)),
        sweep=equilibrium_vs_cost(market, node, config.sweep_costs, tol=config.best_response_tol),
    )


# --------------------------------------------------------------------------------------------------
# everything


@dataclass(frozen=True, eq=False)
class Experiments:
    """All figure data and tables of one run."""

    config: ExperimentConfig
    routing: RoutingScenario
    revenue: RevenueCurves
    network: NetworkExperiment


def run_experiments(config: ExperimentConfig) -> Experiments:
    """Compute everything the figures and the report show."""
    return Experiments(config, routing_scenario(config), revenue_scenario(config), network_experiment(config))


# --------------------------------------------------------------------------------------------------
# the report (Markdown text; the caller writes it)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "—"
    return True


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are written with `str`, numeric columns aligned right."""
    cells = [[str(cell) for cell in row] for row in rows]
    if any(len(row) != len(headers) for row in cells):
        raise ValueError(f"every row needs {len(headers)} cells")
    numeric = [all(_is_number(row[k]) for row in cells) for k in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _power_of_ten(x: int) -> str:
    exponent = len(str(x)) - 1
    return f"1e{exponent}" if x == 10**exponent else str(x)


def _g(x: float, digits: int = 4) -> str:
    return "—" if math.isnan(x) else f"{x:.{digits}g}"


def _e(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.2e}"


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def describe_route(route: Route) -> str:
    """``n3[0,5) → n7[5,12)``."""
    return " → ".join(f"{hop.node}[{hop.start},{hop.end})" for hop in route.hops)


def _alpha_range(span: tuple[float, float] | None) -> str:
    return "no" if span is None else f"[{span[0]:.3f}, {span[1]:.3f}]"


def _alpha_list(alphas: Sequence[float]) -> str:
    return ", ".join(f"{a:g}" for a in alphas)


def routing_section(routing: RoutingScenario, figures: Mapping[str, str]) -> str:
    """Figures 1–2 with the scenario's offers, frontier and α-routes."""
    offers_table = markdown_table(
        ["offer", "layers", "price (ref.)", "price (wei/token)", "cost c", "ms/layer", "rtt ms"],
        [
            [o.node, f"[{o.start},{o.end})", _f(reference_price(o.price_wei_per_token)), o.price_wei_per_token,
             _f(m.cost), _f(o.compute_ms_per_layer, 2), _g(o.rtt_ms)]
            for o, m in zip(routing.offers, routing.market_offers, strict=True)
        ],
    )
    hull_ranges = {
        (r.price_wei_per_token, r.latency_ms): span
        for r, span in zip(routing.hull, routing.hull_alpha_ranges, strict=True)
    }
    frontier_table = markdown_table(
        ["#", "price (ref.)", "latency ms", "hops", "route", "on hull: α range"],
        [
            [k, _f(reference_price(r.price_wei_per_token)), _f(r.latency_ms, 1), len(r.hops), describe_route(r),
             _alpha_range(hull_ranges.get((r.price_wei_per_token, r.latency_ms)))]
            for k, r in enumerate(routing.frontier)
        ],
    )
    alpha_table = markdown_table(
        ["α", "price (ref.)", "latency ms", "route"],
        [[f"{a:g}", _f(reference_price(r.price_wei_per_token)), _f(r.latency_ms, 1), describe_route(r)]
         for a, r in routing.alpha_routes],
    )
    cloud = routing.cloud
    how = (
        f"all {cloud.total_routes} distinct routes"
        if cloud.enumerated
        else f"{cloud.price_wei_per_token.size} distinct routes sampled uniformly from {cloud.total_routes}"
    )
    route = routing.figure_route
    return f"""## Routing scenario (Figures 1–2)

{len(routing.offers)} offers over {routing.num_layers} layers. Ranges and costs come from `simulate_network`;
the prices are posted prices p = c^(−{SCENARIO_PRICE_EXPONENT:g})·lognormal(0, {SCENARIO_PRICE_NOISE:g}) (fast nodes
are dear), not an equilibrium.

{offers_table}

![Figure 1: network DAG]({figures["dag"]})

**Figure 1.** Layer boundaries 0..{routing.num_layers} are the vertices; each offer is a box over the layers it
serves (a route may use any sub-span of it). Highlighted: the α = {routing.figure_alpha:g} route
{describe_route(route)}, price {_f(reference_price(route.price_wei_per_token))} reference prices
({route.price_wei_per_token} wei) and {_f(route.latency_ms, 1)} ms per token.

![Figure 2: Pareto frontier]({figures["frontier"]})

**Figure 2.** Grey: {how}. Step line: the exact Pareto frontier ({len(routing.frontier)} points,
`pareto_frontier`); dashed: its lower convex hull ({len(routing.hull)} vertices), the only points an α can
select; marked: the `find_route` optimum for α ∈ {{{_alpha_list([a for a, _ in routing.alpha_routes])}}}.

Frontier (cheapest first):

{frontier_table}

α-optimal routes:

{alpha_table}
"""


def revenue_section(revenue: RevenueCurves, figures: Mapping[str, str]) -> str:
    """Figure 3 and its maxima."""
    rules = revenue.rules
    rivals = ", ".join(f"c={c:.3f} p={p:.3f}" for c, p in zip(revenue.rival_costs, revenue.rival_prices, strict=True))
    table = markdown_table(
        ["cost c", "optimal price p*", "share P(w*)", "revenue R(p*)"],
        [[_f(c), _f(p, 4), _f(s, 4), _f(r, 4)]
         for c, p, s, r in zip(revenue.costs, revenue.best_prices, revenue.best_shares, revenue.best_revenues,
                               strict=True)],
    )
    return f"""## Revenue versus price (Figure 3)

One node against {revenue.rival_costs.size} rivals serving the same layers (the paper's setting), α = {rules.alpha:g},
T = {rules.temperature:g}. The rivals ({rivals}) hold the prices of the equilibrium reached with the node at
cost 1; the node's expected revenue R(p) = p·P(w) is traced for each of its costs, and its maximum
(`NodeDemand.best_response`) marked.

![Figure 3: revenue vs price]({figures["revenue"]})

{table}
"""


def _stats_row(name: str, values: FloatArray) -> list[str]:
    return [name, _f(float(values.min()), 4), _f(float(np.median(values)), 4), _f(float(values.mean()), 4),
            _f(float(values.max()), 4), _f(float(values.std()), 4)]


def network_section(network: NetworkExperiment, config: ExperimentConfig, figures: Mapping[str, str]) -> str:
    """Convergence table, Figure 4, equilibrium prices and revenues, routes, Figure 5."""
    eq, market = network.equilibrium, network.market
    costs = market.costs
    convergence = markdown_table(
        ["α", "method", "iterations", "residual", "FOC max error", "max unilateral gain", "converged"],
        [[f"{r.alpha:g}", r.method, r.iterations, _e(r.residual), _e(r.foc_error), _e(r.max_gain),
          "yes" if r.converged else "no"] for r in network.convergence],
    )
    summary = markdown_table(
        ["quantity", "min", "median", "mean", "max", "std"],
        [_stats_row("cost c", costs), _stats_row("price p", eq.prices), _stats_row("share S", eq.shares),
         _stats_row("revenue R", eq.revenues)],
    )
    corr_price = float(np.corrcoef(costs, eq.prices)[0, 1])
    corr_revenue = float(np.corrcoef(costs, eq.revenues)[0, 1])

    def node_rows(indices: Sequence[int]) -> list[list[str]]:
        return [[f"n{i}", f"[{network.offers[i].start},{network.offers[i].end})", _f(costs[i]), _f(eq.prices[i], 4),
                 network.route_offers[i].price_wei_per_token, _f(eq.shares[i], 4), _f(eq.revenues[i], 4)]
                for i in indices]

    headers = ["node", "layers", "cost c", "price p", "price (wei/token)", "share S", "revenue R"]
    by_revenue = [int(i) for i in np.argsort(-eq.revenues, kind="stable")]
    k = config.top_nodes
    top = markdown_table(headers, node_rows(by_revenue[:k]))
    bottom = markdown_table(headers, node_rows(by_revenue[-k:]))
    everyone = markdown_table(headers, node_rows(range(len(network.offers))))
    routes = markdown_table(
        ["client α", "price (ref./token)", "price (wei/token)", "latency ms/token", "hops", "route"],
        [[f"{r.alpha:g}", _f(r.price, 4), r.route.price_wei_per_token, _f(r.route.latency_ms, 1), len(r.route.hops),
          describe_route(r.route)] for r in network.routes],
    )
    sweep = network.sweep
    node = sweep.node
    sweep_table = markdown_table(
        ["cost c", "equilibrium price p", "share S", "revenue R"],
        [[_f(c), _f(p, 4), _f(s, 4), _f(r, 4)]
         for c, p, s, r in zip(sweep.costs, sweep.prices, sweep.shares, sweep.revenues, strict=True)],
    )
    trace = network.trace
    rules = market.rules
    reference_wei = _power_of_ten(REFERENCE_PRICE_WEI_PER_TOKEN)
    grid_step = (rules.price_ceiling - rules.price_floor) / (config.gain_grid - 1)
    simulation = (f"simulate_network({config.network_nodes}, {config.network_layers}, seed={config.seed}, "
                  f"min_span={config.network_min_span}, max_span={config.network_max_span})")
    return f"""## Simulated network equilibrium

{config.network_nodes} nodes over {config.network_layers} layers from
`{simulation}`: every layer served by at least
2 nodes, lognormal costs (median 1). Rules: T = {rules.temperature:g}, prices in
[{rules.price_floor:g}, {rules.price_ceiling:g}], no outside option, all nodes start at p = 1.

### Convergence

For each α: simultaneous gradient ascent (Eq. 5, η = {config.learning_rate:g}, step limit {config.max_step:g},
tolerance {config.gradient_tol:g}) and exact best responses, in turn (Gauss–Seidel) and all at once
(Jacobi), tolerance {config.best_response_tol:g}. *Iterations*: gradient steps or best-response sweeps.
*Residual*: the largest KKT residual max_i |p_i − clip(T/(α(1 − P̂_i)))|. *FOC max error*: the largest
relative gap |p_i − T/(α(1 − P̂_i))| / (T/(α(1 − P̂_i))) over interior nodes. *Max unilateral gain*: the most
any node gains by moving alone to any of {config.gain_grid} grid prices on [{rules.price_floor:g},
{rules.price_ceiling:g}] (≤ 0: no profitable deviation at grid resolution; with a grid step of {grid_step:g} it
measures the grid, not the differences, of the order of the tolerance, between the methods' prices).

{convergence}

![Figure 4: equilibrium convergence]({figures["convergence"]})

**Figure 4.** α = {trace.alpha:g}: every node's price under simultaneous gradient ascent from p = 1
({trace.prices.shape[0] - 1} steps to a residual of {_e(float(trace.residuals[-1]))}), coloured by cost, with the
best-response equilibrium ({eq.iterations} Gauss–Seidel sweeps) at the right; the residual per step on a
log axis. Largest gap between the two end points: {_e(float(np.abs(trace.prices[-1] - eq.prices).max()))}.

### Equilibrium prices and revenues (α = {rules.alpha:g})

{summary}

Correlation with cost: price {corr_price:+.3f}, revenue {corr_revenue:+.3f} (faster nodes charge more and
earn more). Total expected revenue {_f(float(eq.revenues.sum()), 4)} reference prices per request.

Top {k} nodes by revenue:

{top}

Bottom {k} nodes by revenue:

{bottom}

<details><summary>All {len(network.offers)} nodes</summary>

{everyone}

</details>

### Client routes over the equilibrium prices

The equilibrium offers as `RouteOffer`s (price = round(p · {reference_wei}) wei per token,
compute = c · {REFERENCE_LATENCY_MS:g} ms per layer, rtt = {HOP_RTT_MS:g} ms per hop), routed by `find_route`
for each client α (route objective normalized by the cheapest price and the fastest latency). The exact
Pareto frontier of this network has {network.frontier_size} points.

{routes}

### Equilibrium versus compute cost (Figure 5)

Node n{node} (layers [{network.offers[node].start},{network.offers[node].end}), the node with the median cost
{costs[node]:.3f}) at each cost below, everyone else re-pricing to the new equilibrium
(`equilibrium_vs_cost`, warm-started; all converged: {"yes" if sweep.converged else "no"}).

![Figure 5: equilibrium vs cost]({figures["sweep"]})

{sweep_table}
"""


def render_report(experiments: Experiments, command: str, figures: Mapping[str, str] = FIGURE_FILES) -> str:
    """The Markdown report of a run; `command` is the exact command line that produced it."""
    config = experiments.config
    reference_wei = _power_of_ten(REFERENCE_PRICE_WEI_PER_TOKEN)
    return f"""# P2P-LLM experiments: paper Figures 1–3 and the network equilibrium

Generated by

```
{command}
```

with seed {config.seed}. Every result below is computed by that run (`research/experiments.py`, from the seed and
the constants stated here); running the command again reproduces this file byte for byte.

## Units

- Price p is dimensionless: p = price_wei_per_token / {reference_wei} wei (one *reference price*).
- Compute cost c is dimensionless: c = compute ms per layer per token / {REFERENCE_LATENCY_MS:g} ms (hardware speed;
  c = 1 is the reference node).
- A client's weight for a node is w = α·p + (1 − α)·c (Eq. 1), its choice probability the Boltzmann share
  over the nodes serving the same layer (Eq. 3, temperature T), revenue R = p·P(w) in reference prices per
  request (Eq. 2).
- Routes: a hop costs the node's price (whatever its span) and {HOP_RTT_MS:g} ms round trip plus its compute
  time for the layers used; a route's price and latency are sums over hops, per generated token.
- Market α = {config.market_alpha:g} unless stated; T = {config.temperature:g}.

{routing_section(experiments.routing, figures)}
{revenue_section(experiments.revenue, figures)}
{network_section(experiments.network, config, figures)}"""
