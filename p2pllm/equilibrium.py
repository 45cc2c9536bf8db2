"""Network price equilibrium (paper §3.4): every node prices at once until no node wants to move.

Boundary: pure numbers over a `p2pllm.pricing.Market` (fixed ranges and costs, prices as the state). Knows
nothing about the chain, wei, HTTP or the node agent's timing; the figures script and the node agent
read results from here.

Two dynamics, both judged by the same residual, the largest KKT residual of any node,
max_i |p_i − clip(T/(α(1 − P̂_i)), floor, ceiling)| (zero exactly when every node satisfies its
first-order condition, or sits at a bound its gradient pushes it against); best responses must also
have stopped moving (largest price change of the last sweep <= tol):
- `gradient_equilibrium`: the paper's rule, all nodes take one gradient-ascent step (Eq. 5) at the
  same time (Jacobi). Kept as the reference for the convergence figure; its rate per node is about
  1 − η·α·S_i/T, so small-share nodes converge slowly.
- `best_response_equilibrium`: each node jumps to its exact best response (a global maximizer of its
  own revenue on [floor, ceiling], `NodeDemand.best_response`), nodes in turn (Gauss–Seidel, default)
  or all at once (Jacobi). This is what `solve_equilibrium` uses: on networks where every layer has
  at least two servers it converged in ~10 sweeps in every case tried.
`max_unilateral_gain` checks the result independently: no node's revenue rises by more than the gain
at any price of a fine grid over [floor, ceiling].

No pure equilibrium: a node alone on some of its layers (no outside option, or a weak one) has a
two-peaked revenue curve, undercut its rivals on the shared layers or price for its monopoly layers,
and best responses can cycle (Edgeworth cycles). The result then says converged=False and gives the
cycle's period when the prices repeat; the gradient dynamic may still settle, at a point where every
node is only locally optimal (check with `max_unilateral_gain`).

α = 0: price does not enter the client's weight, so every share is fixed and revenue p·S grows without
bound; both dynamics send every price to the ceiling, which is then the (converged) equilibrium.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from p2pllm.pricing import FloatArray, Market, MarketInputError, MarketOffer, ascent_steps

Scheme = Literal["gauss_seidel", "jacobi"]


@dataclass(frozen=True, eq=False)
class EquilibriumResult:
    """Where a price dynamic stopped.

    `residuals[t]` is the largest KKT residual after t iterations (t = 0: the initial prices) and
    `price_changes[t − 1]` the largest price move in iteration t. `cycle_period` is k when best
    responses stopped because the prices repeated those of k sweeps before (no pure equilibrium
    reached). Prices and revenues are dimensionless (reference prices; reference prices per request).
    """

    method: str
    prices: FloatArray
    shares: FloatArray
    revenues: FloatArray
    iterations: int
    residuals: tuple[float, ...]
    price_changes: tuple[float, ...]
    converged: bool
    cycle_period: int | None = None

    @property
    def residual(self) -> float:
        return self.residuals[-1]


@dataclass(frozen=True, eq=False)
class CostSweep:
    """Equilibrium price, share and revenue of one node as its own compute cost varies."""

    node: int
    costs: FloatArray
    prices: FloatArray
    shares: FloatArray
    revenues: FloatArray
    converged: bool


def kkt_residual(market: Market, prices: npt.ArrayLike) -> float:
    """Largest first-order-condition (KKT) residual of any node; 0.0 for an empty market."""
    residuals = market.foc_residuals(prices)
    return float(residuals.max()) if residuals.size else 0.0


def gradient_equilibrium(
    market: Market,
    initial_prices: npt.ArrayLike | None = None,
    *,
    learning_rate: float = 1.0,
    max_step: float = 0.5,
    tol: float = 1e-9,
    max_iterations: int = 20_000,
    trajectory: list[FloatArray] | None = None,
) -> EquilibriumResult:
    """Simultaneous (Jacobi) gradient ascent, Eq. 5 with step limit and bounds, until the residual <= tol.
    If `trajectory` is given, every price vector visited (the start first) is appended to it."""
    _check_stopping(tol, max_iterations)
    rules = market.rules
    prices = _initial_prices(market, initial_prices)
    residuals, changes = [kkt_residual(market, prices)], []
    if trajectory is not None:
        trajectory.append(prices)
    while residuals[-1] > tol and len(changes) < max_iterations:
        updated = ascent_steps(
            prices, market.gradients(prices), learning_rate, max_step, rules.price_floor, rules.price_ceiling
        )
        changes.append(_largest_move(updated, prices))
        prices = updated
        residuals.append(kkt_residual(market, prices))
        if trajectory is not None:
            trajectory.append(prices)
    return _result(market, "gradient", prices, residuals, changes, converged=residuals[-1] <= tol)


def best_response_equilibrium(
    market: Market,
    initial_prices: npt.ArrayLike | None = None,
    *,
    scheme: Scheme = "gauss_seidel",
    tol: float = 1e-10,
    max_iterations: int = 500,
    max_cycle_period: int = 16,
) -> EquilibriumResult:
    """Iterated exact best responses until the residual and the largest price move are both <= tol.

    Stops early, unconverged, when the prices come back within tol to those of k <= max_cycle_period
    sweeps before (a best-response cycle of period k).
    """
    _check_stopping(tol, max_iterations)
    if scheme not in ("gauss_seidel", "jacobi"):
        raise MarketInputError("scheme", scheme, "must be 'gauss_seidel' or 'jacobi'")
    sweep = _gauss_seidel_sweep if scheme == "gauss_seidel" else _jacobi_sweep
    prices = _initial_prices(market, initial_prices)
    history, residuals, changes = [prices], [kkt_residual(market, prices)], []
    converged, period = market.n_nodes == 0, None
    while not converged and period is None and len(changes) < max_iterations:
        prices = sweep(market, prices)
        changes.append(_largest_move(prices, history[-1]))
        residuals.append(kkt_residual(market, prices))
        converged = residuals[-1] <= tol and changes[-1] <= tol
        history = [*history[-max_cycle_period:], prices]
        period = None if converged else _cycle_period(history, tol)
    method = f"best_response/{scheme}"
    return _result(market, method, prices, residuals, changes, converged=converged, cycle_period=period)


def solve_equilibrium(
    market: Market, initial_prices: npt.ArrayLike | None = None, *, tol: float = 1e-10
) -> EquilibriumResult:
    """The network equilibrium by Gauss–Seidel best responses (see `best_response_equilibrium`)."""
    return best_response_equilibrium(market, initial_prices, tol=tol)


def unilateral_gains(market: Market, prices: npt.ArrayLike, n_grid: int = 10_001) -> FloatArray:
    """Per node: max over an n_grid-point price grid on [floor, ceiling] of R_i(p′, p_−i) − R_i(p)."""
    if n_grid < 2:
        raise MarketInputError("n_grid", n_grid, "need at least 2 grid points")
    p = np.asarray(prices, dtype=np.float64)
    rules = market.rules
    grid = np.linspace(rules.price_floor, rules.price_ceiling, n_grid)
    gains = np.empty(market.n_nodes)
    for i in range(market.n_nodes):
        demand = market.demand(i, p)
        gains[i] = float(demand.revenue(grid).max()) - float(demand.revenue(p[i]))
    return gains


def max_unilateral_gain(market: Market, prices: npt.ArrayLike, n_grid: int = 10_001) -> float:
    """The most any single node could gain by moving to another grid price (≤ 0 means no gain)."""
    gains = unilateral_gains(market, prices, n_grid)
    return float(gains.max()) if gains.size else 0.0


def equilibrium_vs_cost(market: Market, node: int, costs: Sequence[float], *, tol: float = 1e-10) -> CostSweep:
    """Solve the equilibrium for each compute cost of `node` (others fixed), warm-starting each solve."""
    if len(costs) == 0:
        raise MarketInputError("costs", costs, "need at least one cost")
    market.with_cost(node, costs[0])  # validates node and the first cost before any solve
    prices: FloatArray | None = None
    rows: list[tuple[float, float, float]] = []
    converged = True
    for cost in costs:
        result = solve_equilibrium(market.with_cost(node, cost), prices, tol=tol)
        prices = result.prices
        converged = converged and result.converged
        rows.append((float(result.prices[node]), float(result.shares[node]), float(result.revenues[node])))
    prices_at, shares_at, revenues_at = np.array(rows).T
    return CostSweep(node, np.asarray(costs, dtype=np.float64), prices_at, shares_at, revenues_at, converged)


def simulate_network(
    n_nodes: int = 50,
    n_layers: int = 30,
    seed: int = 0,
    *,
    min_span: int = 3,
    max_span: int = 12,
    cost_spread: float = 0.5,
    min_coverage: int = 2,
    initial_price: float = 1.0,
) -> tuple[MarketOffer, ...]:
    """A reproducible heterogeneous network: ranges, costs and a common starting price.

    Span lengths are uniform on [min_span, max_span]; starts are uniform on [1 − span, n_layers − 1] and
    the range is clipped to [0, n_layers), which makes every layer equally likely to be covered (edge
    nodes get shorter ranges). Draws repeat (same generator) until every layer has at least
    `min_coverage` servers. Costs are lognormal with median 1 (one reference latency) and log-spread
    `cost_spread`, independent of the range.
    """
    _check_simulation(n_nodes, n_layers, min_span, max_span, min_coverage)
    rng = np.random.default_rng(seed)
    for _ in range(1_000):
        spans = rng.integers(min_span, max_span + 1, size=n_nodes)
        raw_starts = rng.integers(1 - spans, n_layers)
        starts, ends = np.maximum(raw_starts, 0), np.minimum(raw_starts + spans, n_layers)
        coverage = np.zeros(n_layers, dtype=np.int64)
        for start, end in zip(starts, ends, strict=True):
            coverage[start:end] += 1
        if coverage.min() >= min_coverage:
            costs = np.exp(rng.normal(0.0, cost_spread, size=n_nodes))
            return tuple(
                MarketOffer(int(s), int(e), float(initial_price), float(c))
                for s, e, c in zip(starts, ends, costs, strict=True)
            )
    raise MarketInputError("min_coverage", min_coverage, "not reached in 1000 draws; add nodes or lower it")


# --------------------------------------------------------------------------------------------------
# internals


def _gauss_seidel_sweep(market: Market, prices: FloatArray) -> FloatArray:
    updated = prices.copy()
    for i in range(market.n_nodes):
        updated[i] = market.demand(i, updated).best_response()
    return updated


def _jacobi_sweep(market: Market, prices: FloatArray) -> FloatArray:
    return np.array([market.demand(i, prices).best_response() for i in range(market.n_nodes)])


def _cycle_period(history: list[FloatArray], tol: float) -> int | None:
    """Smallest k >= 2 with history[-1] within tol of history[-1 - k], if any."""
    latest = history[-1]
    for k in range(2, len(history)):
        if _largest_move(latest, history[-1 - k]) <= tol:
            return k
    return None


def _initial_prices(market: Market, initial_prices: npt.ArrayLike | None) -> FloatArray:
    rules = market.rules
    if initial_prices is None:
        return np.full(market.n_nodes, float(np.clip(1.0, rules.price_floor, rules.price_ceiling)))
    prices = np.array(initial_prices, dtype=np.float64)
    if prices.shape != (market.n_nodes,) or not np.all(np.isfinite(prices)):
        raise MarketInputError("initial_prices", initial_prices, f"need {market.n_nodes} finite prices")
    return np.clip(prices, rules.price_floor, rules.price_ceiling)


def _largest_move(updated: FloatArray, prices: FloatArray) -> float:
    return float(np.abs(updated - prices).max()) if prices.size else 0.0


def _result(
    market: Market,
    method: str,
    prices: FloatArray,
    residuals: list[float],
    changes: list[float],
    *,
    converged: bool,
    cycle_period: int | None = None,
) -> EquilibriumResult:
    return EquilibriumResult(
        method=method,
        prices=prices,
        shares=market.shares(prices),
        revenues=market.revenues(prices),
        iterations=len(changes),
        residuals=tuple(residuals),
        price_changes=tuple(changes),
        converged=converged,
        cycle_period=cycle_period,
    )


def _check_stopping(tol: float, max_iterations: int) -> None:
    if not tol > 0.0:
        raise MarketInputError("tol", tol, "must be > 0")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise MarketInputError("max_iterations", max_iterations, "must be a positive integer")


def _check_simulation(n_nodes: int, n_layers: int, min_span: int, max_span: int, min_coverage: int) -> None:
    for name, value in (("n_nodes", n_nodes), ("n_layers", n_layers), ("min_span", min_span)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MarketInputError(name, value, "must be a positive integer")
    if not min_span <= max_span <= n_layers:
        raise MarketInputError("max_span", max_span, f"need {min_span=} <= max_span <= {n_layers=}")
    if not 0 <= min_coverage <= n_nodes:
        raise MarketInputError("min_coverage", min_coverage, f"must lie in [0, n_nodes={n_nodes}]")
