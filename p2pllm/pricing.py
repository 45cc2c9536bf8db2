"""Node pricing math: the paper's Eq. 1–5 and the competitor rule for partly overlapping layer ranges.

Boundary: pure numbers. This module knows nothing about the chain, wei on the wire, HTTP, torch or
clocks; it maps (ranges, prices, costs) to choice probabilities, expected revenues, gradients and best
responses. The node's pricing agent converts wei/ms to and from these units with the functions below;
network-wide dynamics live in `p2pllm.equilibrium`, window selection in `p2pllm.layer_choice`.

Units. Prices and compute costs enter the weight w = α·p + (1−α)·c (Eq. 1) as dimensionless numbers:
  p = price_wei_per_token / reference_price_wei_per_token
  c = compute_ms / reference_latency_ms
so α trades one reference price against one reference latency, and the temperature T is in the same
weight units (the paper drops kT; T = 1 reproduces it). `price_from_wei`/`price_to_wei` and
`cost_from_ms`/`cost_to_ms` are the conversions. Revenue is in reference prices per client request.

Choice model. Over the nodes competing for the same layers, P_i = exp(−w_i/T) / Σ_j exp(−w_j/T) (Eq. 3),
computed as exp(−w_i/T − logsumexp_j(−w_j/T)). An optional outside option with weight w_0 (a client that
declines every node) adds exp(−w_0/T) to every denominator; the default is none, as in the paper.
Expected revenue R(p_i) = p_i·P_i (Eq. 2), with gradient dR/dp_i = P_i·(1 − α·p_i·(1 − P_i)/T), which at
T = 1 is literally the paper's P(1 + αp(P − 1)); one ascent step (Eq. 4–5) is
p ← clip(p + clip(η·dR/dp, −max_step, max_step), floor, ceiling).

Competitor rule for partly overlapping ranges (the paper assumes every competitor serves the same
layers). Node i competes, on each layer ℓ of its half-open range [start, end), with exactly the nodes
that serve ℓ; its share of layer ℓ is the Boltzmann probability over those nodes (plus the outside
option), with each node's weight w_j from Eq. 1 unchanged. Every request needs every layer once, so
demand is uniform over layers and node i's share is the layer average
    S_i = (1/|L_i|)·Σ_{ℓ∈L_i} P_iℓ,        R_i = p_i·S_i,
i.e. a client routes each layer through one server (sub-range routing, DESIGN §1) and node i earns its
price pro rata to the part of its range a client uses. When all ranges coincide every P_iℓ is the same
softmax, so S_i is exactly the paper's P(w_i). A node alone on a layer (no outside option) has P_iℓ = 1
there whatever its price; only the price ceiling bounds it. The gradient becomes
    dR/dp_i = S_i·(1 − α·p_i·(1 − P̂_i)/T),   P̂_i = Σ_ℓ P_iℓ² / Σ_ℓ P_iℓ  (share-weighted mean share),
so the first-order condition keeps the paper's form p_i = T/(α(1 − P̂_i)), and P̂_i = P_i when ranges
coincide. (Rejected alternative: per-layer weights αp/K + (1−α)c/K. It compares per-layer prices but
rescales T by the range length K, so it does not reduce to the paper's model.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_NEWTON_MAX_STEPS = 200


class MarketInputError(ValueError):
    """A market parameter, offer or price outside its domain; carries the field, value and requirement."""

    def __init__(self, name: str, value: object, requirement: str) -> None:
        super().__init__(f"{name}={value!r}: {requirement}")
        self.name = name
        self.value = value
        self.requirement = requirement


# --------------------------------------------------------------------------------------------------
# validation helpers


def _finite(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise MarketInputError(name, value, "must be a finite number")
    return number


def _non_negative(name: str, value: float) -> float:
    number = _finite(name, value)
    if number < 0.0:
        raise MarketInputError(name, value, "must be >= 0")
    return number


def _positive(name: str, value: float) -> float:
    number = _finite(name, value)
    if number <= 0.0:
        raise MarketInputError(name, value, "must be > 0")
    return number


def _alpha(value: float) -> float:
    number = _finite("alpha", value)
    if not 0.0 <= number <= 1.0:
        raise MarketInputError("alpha", value, "must lie in [0, 1]")
    return number


def _finite_vector(name: str, values: npt.ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise MarketInputError(name, values, "must be one-dimensional")
    if not np.all(np.isfinite(array)):
        raise MarketInputError(name, values, "must contain only finite numbers")
    return array


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise MarketInputError(name, value, "must be a positive integer")
    return int(value)


# --------------------------------------------------------------------------------------------------
# unit conversions (wei and ms <-> dimensionless market units)


def price_from_wei(price_wei_per_token: int, reference_price_wei_per_token: int) -> float:
    """Dimensionless price p = price_wei_per_token / reference_price_wei_per_token."""
    _positive_int("reference_price_wei_per_token", reference_price_wei_per_token)
    if isinstance(price_wei_per_token, bool) or not isinstance(price_wei_per_token, int | np.integer):
        raise MarketInputError("price_wei_per_token", price_wei_per_token, "must be an integer")
    if price_wei_per_token < 0:
        raise MarketInputError("price_wei_per_token", price_wei_per_token, "must be >= 0")
    return int(price_wei_per_token) / int(reference_price_wei_per_token)


def price_to_wei(price: float, reference_price_wei_per_token: int) -> int:
    """Wei per token for dimensionless price p, rounded half-to-even from the exact product."""
    reference = _positive_int("reference_price_wei_per_token", reference_price_wei_per_token)
    exact = Fraction(_non_negative("price", price)) * reference
    return round(exact)


def cost_from_ms(compute_ms: float, reference_latency_ms: float) -> float:
    """Dimensionless compute cost c = compute_ms / reference_latency_ms."""
    return _non_negative("compute_ms", compute_ms) / _positive("reference_latency_ms", reference_latency_ms)


def cost_to_ms(cost: float, reference_latency_ms: float) -> float:
    """Milliseconds for dimensionless compute cost c."""
    return _non_negative("cost", cost) * _positive("reference_latency_ms", reference_latency_ms)


# --------------------------------------------------------------------------------------------------
# the paper's single competing set (Eq. 1–5)


def node_weight(price: float, cost: float, alpha: float) -> float:
    """Eq. 1: w = α·p + (1−α)·c (lower is better for a client)."""
    a = _alpha(alpha)
    return a * _finite("price", price) + (1.0 - a) * _finite("cost", cost)


def node_weights(prices: npt.ArrayLike, costs: npt.ArrayLike, alpha: float) -> FloatArray:
    """Eq. 1 for many nodes at once."""
    a = _alpha(alpha)
    p = _finite_vector("prices", prices)
    c = _finite_vector("costs", costs)
    if p.shape != c.shape:
        raise MarketInputError("costs", costs, f"must have the same length as prices ({p.size})")
    return a * p + (1.0 - a) * c


def choice_probabilities(
    weights: npt.ArrayLike, temperature: float = 1.0, outside_weight: float | None = None
) -> FloatArray:
    """Eq. 3: Boltzmann probabilities exp(−w_i/T)/Σ_j exp(−w_j/T), via log-sum-exp.

    With `outside_weight` the denominator also holds exp(−w_0/T) and the result sums to less than 1.
    """
    w = _finite_vector("weights", weights)
    if w.size == 0:
        raise MarketInputError("weights", weights, "need at least one node")
    t = _positive("temperature", temperature)
    logits = -w / t
    terms = logits
    if outside_weight is not None:
        terms = np.append(logits, -_finite("outside_weight", outside_weight) / t)
    top = float(terms.max())
    log_partition = top + math.log(float(np.exp(terms - top).sum()))
    return np.exp(logits - log_partition)


def expected_revenues(
    prices: npt.ArrayLike,
    costs: npt.ArrayLike,
    alpha: float,
    temperature: float = 1.0,
    outside_weight: float | None = None,
) -> FloatArray:
    """Eq. 2 for nodes competing for the same layers: R_i = p_i·P(w_i)."""
    weights = node_weights(prices, costs, alpha)
    return np.asarray(prices, dtype=np.float64) * choice_probabilities(weights, temperature, outside_weight)


def revenue_gradient(price: float, share: float, alpha: float, temperature: float = 1.0) -> float:
    """dR/dp = P·(1 − α·p·(1 − P)/T); at T = 1 the paper's P(1 + αp(P − 1))."""
    p = _finite("price", price)
    s = _finite("share", share)
    if not 0.0 <= s <= 1.0:
        raise MarketInputError("share", share, "must lie in [0, 1]")
    return s * (1.0 - _alpha(alpha) * p * (1.0 - s) / _positive("temperature", temperature))


def revenue_gradients(
    prices: npt.ArrayLike,
    costs: npt.ArrayLike,
    alpha: float,
    temperature: float = 1.0,
    outside_weight: float | None = None,
) -> FloatArray:
    """dR_i/dp_i for every node of one competing set (each node's own-price derivative)."""
    p = _finite_vector("prices", prices)
    shares = choice_probabilities(node_weights(p, costs, alpha), temperature, outside_weight)
    return shares * (1.0 - alpha * p * (1.0 - shares) / temperature)


def foc_price(share: float, alpha: float, temperature: float = 1.0) -> float:
    """The first-order-condition price T/(α(1 − P)); +inf when α = 0 or P = 1 (revenue never turns down)."""
    s = _finite("share", share)
    if not 0.0 <= s <= 1.0:
        raise MarketInputError("share", share, "must lie in [0, 1]")
    denominator = _alpha(alpha) * (1.0 - s)
    return math.inf if denominator == 0.0 else _positive("temperature", temperature) / denominator


def ascent_steps(
    prices: npt.ArrayLike,
    gradients: npt.ArrayLike,
    learning_rate: float,
    max_step: float,
    floor: float,
    ceiling: float,
) -> FloatArray:
    """Eq. 4–5 for many nodes: p ← clip(p + clip(η·g, −max_step, max_step), floor, ceiling)."""
    eta = _positive("learning_rate", learning_rate)
    limit = _positive("max_step", max_step)
    low, high = _price_bounds(floor, ceiling)
    p = _finite_vector("prices", prices)
    g = _finite_vector("gradients", gradients)
    if p.shape != g.shape:
        raise MarketInputError("gradients", gradients, f"must have the same length as prices ({p.size})")
    return np.clip(p + np.clip(eta * g, -limit, limit), low, high)


def ascent_step(
    price: float, gradient: float, learning_rate: float, max_step: float, floor: float, ceiling: float
) -> float:
    """One gradient-ascent price update (Eq. 5) with a step limit and a price floor/ceiling."""
    return float(ascent_steps([price], [gradient], learning_rate, max_step, floor, ceiling)[0])


def _price_bounds(floor: float, ceiling: float) -> tuple[float, float]:
    low = _non_negative("floor", floor)
    high = _finite("ceiling", ceiling)
    if high < low:
        raise MarketInputError("ceiling", ceiling, f"must be >= floor ({low})")
    return low, high


# --------------------------------------------------------------------------------------------------
# market data


@dataclass(frozen=True)
class PricingRules:
    """How clients choose and what prices may be: α and T of Eq. 1/3, outside option, price bounds.

    The ceiling is finite on purpose: with α = 0, or on a layer a node serves alone, revenue grows
    without bound in price, and the ceiling is where such a node ends up.
    """

    alpha: float
    temperature: float = 1.0
    outside_weight: float | None = None
    price_floor: float = 0.0
    price_ceiling: float = 100.0

    def __post_init__(self) -> None:
        _alpha(self.alpha)
        _positive("temperature", self.temperature)
        if self.outside_weight is not None:
            _finite("outside_weight", self.outside_weight)
        _price_bounds(self.price_floor, self.price_ceiling)

    @property
    def outside_logit(self) -> float | None:
        """−w_0/T, or None without an outside option."""
        return None if self.outside_weight is None else -self.outside_weight / self.temperature


@dataclass(frozen=True)
class MarketOffer:
    """One node as the market sees it: layer range [start, end), price p and cost c (dimensionless)."""

    start: int
    end: int
    price: float
    cost: float

    def __post_init__(self) -> None:
        _layer_range(self.start, self.end)
        _non_negative("price", self.price)
        _non_negative("cost", self.cost)


def _layer_range(start: int, end: int, n_layers: int | None = None) -> tuple[int, int]:
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise MarketInputError(name, value, "must be an integer layer index")
    if start < 0 or end <= start:
        raise MarketInputError("range", (start, end), "need 0 <= start < end")
    if n_layers is not None and end > n_layers:
        raise MarketInputError("range", (start, end), f"must end at or before n_layers={n_layers}")
    return int(start), int(end)


def competitors(offers: Sequence[MarketOffer], i: int) -> tuple[int, ...]:
    """Indices of the nodes that serve at least one layer of offer i (its competitors), ascending."""
    if not 0 <= i < len(offers):
        raise MarketInputError("i", i, f"must index one of {len(offers)} offers")
    own = offers[i]
    return tuple(j for j, o in enumerate(offers) if j != i and o.start < own.end and own.start < o.end)


def offer_prices(offers: Sequence[MarketOffer]) -> FloatArray:
    """The prices of `offers`, in order."""
    return np.array([o.price for o in offers], dtype=np.float64)


def layer_shares(offers: Sequence[MarketOffer], rules: PricingRules, n_layers: int | None = None) -> FloatArray:
    """P_iℓ for every offer i and layer ℓ (shape n × n_layers; 0 where i does not serve ℓ)."""
    return Market.from_offers(offers, rules, n_layers).layer_shares(offer_prices(offers))


def node_shares(offers: Sequence[MarketOffer], rules: PricingRules, n_layers: int | None = None) -> FloatArray:
    """S_i, the layer-averaged share of every offer (the paper's P(w_i) when ranges coincide)."""
    return Market.from_offers(offers, rules, n_layers).shares(offer_prices(offers))


# --------------------------------------------------------------------------------------------------
# the market: fixed ranges and costs, prices as the state


class Market:
    """Nodes with fixed layer ranges and compute costs competing under one `PricingRules`; prices vary.

    Every method takes the full price vector (one entry per node, dimensionless) and returns per-node
    arrays; nothing is mutated. `demand(i, prices)` isolates one node's revenue curve with rivals fixed.
    """

    __slots__ = ("_costs", "_ends", "_serves", "_starts", "n_layers", "rules")

    def __init__(
        self,
        ranges: Sequence[tuple[int, int]],
        costs: npt.ArrayLike,
        rules: PricingRules,
        n_layers: int | None = None,
    ) -> None:
        cost_array = _finite_vector("costs", costs) if len(ranges) else np.zeros(0)
        if cost_array.size != len(ranges):
            raise MarketInputError("costs", costs, f"need one cost per range ({len(ranges)})")
        if np.any(cost_array < 0.0):
            raise MarketInputError("costs", costs, "must be >= 0")
        if n_layers is None:
            n_layers = max((end for _, end in ranges), default=0)
            if n_layers == 0:
                raise MarketInputError("n_layers", n_layers, "give n_layers for a market with no offers")
        self.n_layers = _positive_int("n_layers", n_layers)
        checked = [_layer_range(start, end, self.n_layers) for start, end in ranges]
        self._starts = np.array([s for s, _ in checked], dtype=np.int64)
        self._ends = np.array([e for _, e in checked], dtype=np.int64)
        layers = np.arange(self.n_layers)
        after_start = layers[None, :] >= self._starts[:, None]
        self._serves: BoolArray = after_start & (layers[None, :] < self._ends[:, None])
        self._costs = cost_array
        self.rules = rules

    @classmethod
    def from_offers(cls, offers: Sequence[MarketOffer], rules: PricingRules, n_layers: int | None = None) -> Market:
        """The market formed by `offers` (their prices are not stored; pass `offer_prices(offers)`)."""
        return cls([(o.start, o.end) for o in offers], [o.cost for o in offers], rules, n_layers)

    # -- structure ------------------------------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        return int(self._starts.size)

    @property
    def costs(self) -> FloatArray:
        return self._costs.copy()

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(s), int(e)) for s, e in zip(self._starts, self._ends, strict=True))

    @property
    def serves(self) -> BoolArray:
        """serves[i, ℓ] is True when node i serves layer ℓ."""
        return self._serves.copy()

    def with_cost(self, i: int, cost: float) -> Market:
        """The same market with node i's compute cost replaced."""
        self._check_node(i)
        costs = self._costs.copy()
        costs[i] = _non_negative("cost", cost)
        return Market(self.ranges, costs, self.rules, self.n_layers)

    def with_rules(self, rules: PricingRules) -> Market:
        """The same nodes under other pricing rules (e.g. another α)."""
        return Market(self.ranges, self._costs, rules, self.n_layers)

    # -- shares and revenues --------------------------------------------------------------------

    def layer_log_partition(self, prices: npt.ArrayLike, exclude: int | None = None) -> FloatArray:
        """log(Σ_{j serving ℓ, j≠exclude} e^{−w_j/T} [+ e^{−w_0/T}]) per layer; −inf on an empty layer."""
        logits = self._logits(prices)
        mask = self._serves
        if exclude is not None:
            self._check_node(exclude)
            mask = mask.copy()
            mask[exclude] = False
        return _log_partition(mask, logits, self.rules.outside_logit)

    def layer_shares(self, prices: npt.ArrayLike) -> FloatArray:
        """P_iℓ (n × n_layers), zero where node i does not serve layer ℓ."""
        shares, _ = self._layer_shares_and_complements(prices)
        return shares

    def shares(self, prices: npt.ArrayLike) -> FloatArray:
        """S_i: the layer-averaged choice probability of every node."""
        return self.layer_shares(prices).sum(axis=1) / self._lengths()

    def revenues(self, prices: npt.ArrayLike) -> FloatArray:
        """R_i = p_i·S_i (reference prices per request)."""
        return self._prices(prices) * self.shares(prices)

    def effective_shares(self, prices: npt.ArrayLike) -> FloatArray:
        """P̂_i = Σ_ℓ P_iℓ²/Σ_ℓ P_iℓ, the share in the first-order condition (= P_i when ranges coincide)."""
        return 1.0 - self._one_minus_effective_shares(prices)

    def gradients(self, prices: npt.ArrayLike) -> FloatArray:
        """dR_i/dp_i = S_i·(1 − α·p_i·(1 − P̂_i)/T) for every node."""
        p = self._prices(prices)
        slope = self.rules.alpha / self.rules.temperature
        return self.shares(p) * (1.0 - slope * p * self._one_minus_effective_shares(p))

    def foc_prices(self, prices: npt.ArrayLike) -> FloatArray:
        """T/(α(1 − P̂_i)) at the current prices; +inf where revenue never turns down (α = 0, P̂ = 1)."""
        denominator = self.rules.alpha * self._one_minus_effective_shares(prices)
        with np.errstate(divide="ignore"):
            return np.where(denominator > 0.0, self.rules.temperature / denominator, np.inf)

    def foc_residuals(self, prices: npt.ArrayLike) -> FloatArray:
        """|p_i − clip(T/(α(1 − P̂_i)), floor, ceiling)|: zero exactly at a KKT point of every node."""
        p = self._prices(prices)
        target = np.clip(self.foc_prices(p), self.rules.price_floor, self.rules.price_ceiling)
        return np.abs(p - target)

    def demand(self, i: int, prices: npt.ArrayLike) -> NodeDemand:
        """Node i's demand curve with every other node's price held at `prices`."""
        self._check_node(i)
        rivals = self.layer_log_partition(prices, exclude=i)
        return NodeDemand(rivals[self._starts[i] : self._ends[i]], float(self._costs[i]), self.rules)

    # -- internals ------------------------------------------------------------------------------

    def _check_node(self, i: int) -> None:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < self.n_nodes:
            raise MarketInputError("i", i, f"must index one of {self.n_nodes} nodes")

    def _prices(self, prices: npt.ArrayLike) -> FloatArray:
        p = np.asarray(prices, dtype=np.float64)
        if p.shape != (self.n_nodes,):
            raise MarketInputError("prices", prices, f"need one price per node ({self.n_nodes})")
        if not np.all(np.isfinite(p)) or np.any(p < 0.0):
            raise MarketInputError("prices", prices, "must be finite and >= 0")
        return p

    def _logits(self, prices: npt.ArrayLike) -> FloatArray:
        a = self.rules.alpha
        return -(a * self._prices(prices) + (1.0 - a) * self._costs) / self.rules.temperature

    def _lengths(self) -> FloatArray:
        return (self._ends - self._starts).astype(np.float64)

    def _layer_shares_and_complements(self, prices: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        logits = self._logits(prices)
        log_z = _log_partition(self._serves, logits, self.rules.outside_logit)
        with np.errstate(over="ignore", invalid="ignore"):
            shares = np.where(self._serves, np.exp(logits[:, None] - log_z[None, :]), 0.0)
        complements = np.where(self._serves, 1.0 - shares, 0.0)
        if self.n_nodes == 0:
            return shares, complements
        # A layer's leading node may hold nearly all of it; 1 − P would cancel, so sum the others' mass.
        layers = np.arange(self.n_layers)
        lead = np.argmax(np.where(self._serves, logits[:, None], -np.inf), axis=0)
        rest = shares.copy()
        rest[lead, layers] = 0.0
        others = rest.sum(axis=0)
        if self.rules.outside_logit is not None:
            others = others + np.exp(self.rules.outside_logit - log_z)
        complements[lead, layers] = np.where(self._serves[lead, layers], others, 0.0)
        return shares, complements

    def _one_minus_effective_shares(self, prices: npt.ArrayLike) -> FloatArray:
        shares, complements = self._layer_shares_and_complements(prices)
        total = shares.sum(axis=1)
        weighted = (shares * complements).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0.0, weighted / total, 1.0)


def _log_partition(mask: BoolArray, logits: FloatArray, outside_logit: float | None) -> FloatArray:
    n_layers = mask.shape[1]
    terms = np.where(mask, logits[:, None], -np.inf)
    if outside_logit is not None:
        terms = np.vstack([terms, np.full((1, n_layers), outside_logit)])
    if terms.shape[0] == 0:
        return np.full(n_layers, -np.inf)
    top = terms.max(axis=0)
    anchor = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return anchor + np.log(np.exp(terms - anchor).sum(axis=0))


# --------------------------------------------------------------------------------------------------
# one node's demand curve with rivals fixed: revenue, gradient, best response


@dataclass(frozen=True, eq=False)
class NodeDemand:
    """One node's layer shares as a function of its own price, every rival's price fixed.

    `rival_log_partition[k]` is log Σ e^{−w_j/T} over the rivals (and outside option) on the node's k-th
    layer, −inf where it is alone. P_k(p) = 1/(1 + exp((α·p + (1−α)·c)/T + rival_log_partition[k])).
    """

    rival_log_partition: FloatArray
    cost: float
    rules: PricingRules

    def __post_init__(self) -> None:
        log_z = np.asarray(self.rival_log_partition, dtype=np.float64)
        if log_z.ndim != 1 or log_z.size == 0 or np.any(np.isnan(log_z)) or np.any(log_z == np.inf):
            raise MarketInputError("rival_log_partition", self.rival_log_partition, "need >= 1 value < +inf")
        object.__setattr__(self, "rival_log_partition", log_z)
        _non_negative("cost", self.cost)

    def layer_shares(self, price: npt.ArrayLike) -> FloatArray:
        """P_k(p), shape price.shape + (n_layers_of_node,)."""
        return np.exp(-np.logaddexp(0.0, self._exponent(price)))

    def share(self, price: npt.ArrayLike) -> FloatArray:
        """S(p), the layer average of P_k(p)."""
        return self.layer_shares(price).mean(axis=-1)

    def revenue(self, price: npt.ArrayLike) -> FloatArray:
        """R(p) = p·S(p); vectorized over candidate prices (used for deviation checks and plots)."""
        return np.asarray(price, dtype=np.float64) * self.share(price)

    def gradient(self, price: npt.ArrayLike) -> FloatArray:
        """dR/dp = mean_k P_k·(1 − α·p·(1 − P_k)/T)."""
        p = np.asarray(price, dtype=np.float64)
        x = self._exponent(p)
        shares, complements = np.exp(-np.logaddexp(0.0, x)), np.exp(-np.logaddexp(0.0, -x))
        slope = self.rules.alpha / self.rules.temperature
        return (shares * (1.0 - slope * p[..., None] * complements)).mean(axis=-1)

    def best_response(self) -> float:
        """The revenue-maximizing price on [floor, ceiling] (global; among revenues equal to within 1e-12, a
        stationary point, else the lower price).

        α = 0: the share does not depend on price, so revenue rises to the ceiling. Otherwise each layer's
        own optimum p_k* = (1 + W(e^{−1 − (1−α)c/T − log Z_k}))/a, a = α/T (Lambert W), brackets every
        stationary point of R; the bracket is scanned for sign changes of dR/dp from + to −, each is
        refined by safeguarded Newton, and the best of these local maxima and the bounds wins.
        """
        low, high = self.rules.price_floor, self.rules.price_ceiling
        if self.rules.alpha == 0.0 or low == high:
            return high
        slope = self.rules.alpha / self.rules.temperature
        optima = (1.0 + _lambert_w_of_exp(self._log_w_argument())) / slope
        left, right = max(low, float(optima.min())), min(high, float(optima.max()))
        candidates, maxima = [low, high], []
        if left <= right:
            maxima = self._local_maxima(left, right, slope)
            candidates += [left, right, *maxima]
        revenues = self.revenue(np.array(candidates))
        # Revenues within rounding of the best tie. Where revenue is this flat, a bracket end can round to as much
        # as the stationary point between them, or an ulp more; the stationary point is the answer (it satisfies
        # the first-order condition), else the lowest tied price.
        tied = [c for c, near in zip(candidates, np.isclose(revenues, revenues.max(), rtol=1e-12, atol=0.0),
                                     strict=True) if near]
        return min([c for c in tied if c in maxima] or tied)

    def _exponent(self, price: npt.ArrayLike) -> FloatArray:
        p = np.asarray(price, dtype=np.float64)
        weight = self.rules.alpha * p + (1.0 - self.rules.alpha) * self.cost
        return weight[..., None] / self.rules.temperature + self.rival_log_partition

    def _log_w_argument(self) -> FloatArray:
        return -1.0 - (1.0 - self.rules.alpha) * self.cost / self.rules.temperature - self.rival_log_partition

    def _curvature(self, price: float) -> float:
        """d²R/dp² = −mean_k a·P_k·(1−P_k)·(2 − a·p·((1−P_k) − P_k))."""
        x = self._exponent(price)
        shares, complements = np.exp(-np.logaddexp(0.0, x)), np.exp(-np.logaddexp(0.0, -x))
        a = self.rules.alpha / self.rules.temperature
        return float(-(a * shares * complements * (2.0 - a * price * (complements - shares))).mean())

    def _local_maxima(self, left: float, right: float, slope: float) -> list[float]:
        if right - left <= 1e-12 * max(1.0, right):
            return []
        n_points = int(min(4097, max(17, math.ceil((right - left) * slope * 8.0) + 1)))
        grid = np.linspace(left, right, n_points)
        gradient = self.gradient(grid)
        falls = np.flatnonzero((gradient[:-1] > 0.0) & (gradient[1:] <= 0.0))
        return [self._refine_root(float(grid[k]), float(grid[k + 1])) for k in falls]

    def _refine_root(self, low: float, high: float) -> float:
        """A root of dR/dp in [low, high], dR/dp(low) > 0 >= dR/dp(high): Newton kept inside by bisection."""
        x = 0.5 * (low + high)
        for _ in range(_NEWTON_MAX_STEPS):
            g = float(self.gradient(x))
            if g == 0.0:
                return x
            if g > 0.0:
                low = x
            else:
                high = x
            curvature = self._curvature(x)
            step = x - g / curvature if curvature < 0.0 else math.nan
            x_next = step if low < step < high else 0.5 * (low + high)
            if abs(x_next - x) <= 4.0 * np.finfo(float).eps * max(1.0, abs(x)) or high - low <= 0.0:
                return x_next
            x = x_next
        return x


def _lambert_w_of_exp(log_z: FloatArray) -> FloatArray:
    """W(e^L) for real L (principal branch, argument > 0), +inf for L = +inf; y solves y + ln y = L.

    Newton on the concave increasing f(y) = y + ln y − L started below the root (y0 = L − ln L for
    L > 1, e^{L−1} otherwise, both lower bounds of W) climbs monotonically to it.
    """
    log_z = np.asarray(log_z, dtype=np.float64)
    finite = np.isfinite(log_z)
    safe = np.where(finite, log_z, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(safe > 1.0, safe - np.log(np.maximum(safe, 1.0)), np.exp(safe - 1.0))
        tiny = y < np.finfo(float).tiny
        y = np.where(tiny, np.finfo(float).tiny, y)
        for _ in range(_NEWTON_MAX_STEPS):
            y_next = y * (1.0 + safe - np.log(y)) / (1.0 + y)
            y_next = np.maximum(y_next, y)  # never step down: removes rounding jitter at the root
            if np.array_equal(y_next, y):
                break
            y = y_next
        y = np.where(tiny, np.exp(safe), y)
    return np.where(finite, y, np.where(log_z > 0, np.inf, 0.0))
