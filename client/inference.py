"""`InferenceClient`: the Python API the CLI calls. Loads the model's head locally (embeddings, final norm, LM
head, tokenizer), reads the market from the registry, routes, and streams a generation through the route's
hops (relayed node to node by default, or star), paying each hop. Sampling lives here; retries and rerouting
live in `client.session`, whose streams run on an event loop (uvloop) this object owns and drives step by
step."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import uvloop

from client.frontier import frontier_units, pareto_frontier
from client.funding import Funder, Need, Reservation
from client.hops import HopSession, Payer, StreamOptions
from client.market import Market, discover
from client.reputation import ReputationStore
from client.routing import Route, find_route, route_key
from client.session import FailoverEvent, LinkEndpoint, RouteSession, RouteTooExpensive, banned_now
from client.spotcheck import EquivocationProof, VerificationStats, Verifier
from client.verify import DEFAULT_VERIFY_RATE, SpotCheckPolicy
from p2pllm.chain import Chain, ChainError
from p2pllm.commitments import RegistryDomain
from p2pllm.head import Head, load_head
from p2pllm.model_id import model_id
from p2pllm.models import resolve_model
from p2pllm.tls import client_ssl_context

T = TypeVar("T")
log = logging.getLogger("p2pclient.inference")


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy (argmax, as `generate(do_sample=False)`)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class HopCost:
    node: str
    endpoint: str
    offer_id: int
    layers: tuple[int, int]
    tokens: int
    price_wei_per_token: int
    cost_wei: int
    signed_wei: int
    failed: bool
    session_id: bytes
    check: bool = False  # a spot check's shadow session, not a hop of the route


@dataclass
class GenerationResult:
    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    route: Route | None = None
    hops: list[HopCost] = field(default_factory=list)
    failovers: list[FailoverEvent] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)
    ttft_s: float = 0.0
    total_s: float = 0.0
    signing_s: float = 0.0
    verification: VerificationStats | None = None
    equivocations: list[EquivocationProof] = field(default_factory=list)
    slash_reports: list[str] = field(default_factory=list)  # tx hashes of on-chain equivocation reports
    checks_drain_s: float = 0.0  # waiting for spot checks still running when the generation ended

    @property
    def total_cost_wei(self) -> int:
        return sum(h.cost_wei for h in self.hops)

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - self.ttft_s
        return (len(self.token_ids) - 1) / decode_s if len(self.token_ids) > 1 and decode_s > 0 else 0.0


@dataclass(frozen=True)
class StreamEvent:
    """One generated token and the text it adds (may be empty mid-character)."""

    token_id: int
    text: str


async def _cancel_pending() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Next token from last-position logits (vocab,): greedy, or temperature + nucleus sampling."""
    if params.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class InferenceClient:
    """A funded client of one P2P-LLM deployment for one model. Before a generation uses its route it makes sure
    every hop's node has reserved what it may be owed; when one falls short it reserves `reserve_ahead` sessions'
    worth for it (one transaction for the route, see `client.funding`), from the escrow pool and, with
    `allow_deposit`, from the wallet for what the pool lacks.

    Every step result's signed commitment is checked; at `verify_rate` a hop is also spot-checked on a second
    node (or, with `verify_local`, on the client's own copy of its layers) beside the generation. Verdicts go to
    `reputation` (a store in the per-user data directory by default), whose nodes routing excludes; an
    equivocating node is reported on-chain (`report_equivocation`), which slashes its bond."""

    def __init__(self, chain: Chain, model: str, dtype: str = "float32", receipt_validity_s: int = 3600,
                 threads: int | None = None, allow_deposit: bool = True, transport: str = "relay",
                 ca_file: Path | None = None, link_endpoint: LinkEndpoint | None = None,
                 step_timeout_s: float = 15.0, reserve_ahead: int = 4, verify_rate: float = DEFAULT_VERIFY_RATE,
                 verify_local: bool = False, verify_seed: int | None = None,
                 reputation: ReputationStore | None = None, report_equivocation: bool = True) -> None:
        if chain.account is None:
            raise ValueError("InferenceClient needs a funded key: connect the Chain with an account")
        if threads:
            torch.set_num_threads(threads)
        self.chain = chain
        self.source = resolve_model(model)
        self.model_id = model_id(self.source.path)
        self.head: Head = load_head(self.source, "cpu", dtype)
        self.dtype = dtype
        _, max_validity = chain.escrow_periods()
        self.payer = Payer(chain.address, bytes(chain.account.key), chain.escrow_domain(),
                           min(receipt_validity_s, max_validity - 60))
        # Receipts signed late in a long generation reach further; an hour covers that.
        self.funder = Funder(chain, allow_deposit, self.payer.receipt_validity_s + 3600, ahead=reserve_ahead)
        self.transport = transport
        self.ca_file = ca_file
        self.options = StreamOptions(ssl_context=client_ssl_context(ca_file))
        self.link_endpoint = link_endpoint
        self.step_timeout_s = step_timeout_s
        self.policy = SpotCheckPolicy(verify_rate, verify_seed)  # one draw sequence across generations
        self.verify_local = verify_local
        self.reputation = reputation if reputation is not None else ReputationStore()
        self.report_equivocation = report_equivocation
        self.registry_domain = RegistryDomain(chain.chain_id, chain.registry_address())
        self._local_shards: dict[tuple[int, int], Any] = {}
        self._local_lock = threading.Lock()
        self.banned: dict[str, float] = dict.fromkeys(self.reputation.excluded(), float("inf"))
        self._market: Market | None = None
        # uvloop, as the node's uvicorn runs: its C event loop and transports take about a fifth off the client's
        # share of a decode step's hop overhead (benchmarks/hop_overhead.py drives its hops on uvloop too).
        self._loop = uvloop.new_event_loop()

    def close(self) -> None:
        """Stop what is still running on the client's loop (e.g. the keepalive of a stream whose node froze)."""
        self._loop.run_until_complete(_cancel_pending())
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Drive the client's event loop until `coro` is done (the streams live on it between steps)."""
        return self._loop.run_until_complete(coro)

    # ------------------------------------------------------------------ market
    def market(self, refresh: bool = False) -> Market:
        """Live offers for this model, probed; cached until `refresh`."""
        if self._market is None or refresh:
            offers = self.chain.live_offers(self.model_id)
            self._market = discover(offers, self.model_id, self.source.num_layers, self.chain.chain_id,
                                    self.payer.domain.escrow, self.dtype, self.chain.block_timestamp(),
                                    ca_file=self.ca_file)
        return self._market

    def route(self, alpha: float, max_price_wei_per_token: int | None = None) -> Route:
        """The α-optimal route; under a price cap, the α-optimal one among the frontier routes within it
        (units of the whole frontier, so α keeps its meaning), or RouteTooExpensive if none fits."""
        market = self.market()
        if max_price_wei_per_token is None:
            return find_route(market.route_offers(self.excluded()), market.num_layers, alpha)
        frontier = self.frontier()
        affordable = [r for r in frontier if r.price_wei_per_token <= max_price_wei_per_token]
        if not affordable:
            raise RouteTooExpensive(min(r.price_wei_per_token for r in frontier), max_price_wei_per_token)
        units = frontier_units(frontier)
        return min(affordable, key=lambda route: route_key(route, alpha, units))

    def frontier(self) -> list[Route]:
        market = self.market()
        return pareto_frontier(market.route_offers(self.excluded()), market.num_layers)

    def excluded(self) -> set[str]:
        """Nodes routing leaves out now: those with a verdict in the reputation store, and those banned for a
        while after failing in a generation."""
        return banned_now(self.banned, time.monotonic())

    # ------------------------------------------------------------------ generation
    def prompt_ids(self, prompt: str, chat: bool) -> list[int]:
        if chat:
            return self.head.encode_chat([{"role": "user", "content": prompt}])
        return self.head.encode(prompt)

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 64, alpha: float = 0.5,
                 max_price_wei_per_token: int | None = None, sampling: SamplingParams | None = None,
                 chat: bool = False, result: GenerationResult | None = None,
                 stop_at_eos: bool = True) -> Iterator[StreamEvent]:
        """Stream a generation; `result` (if given) is filled with route, per-hop costs and timings. Runs
        `stream` on the client's own event loop."""
        events = self.stream(prompt, max_new_tokens, alpha, max_price_wei_per_token, sampling, chat, result,
                             stop_at_eos, offload=False)
        try:
            while True:
                try:
                    event = self._run(events.__anext__())
                except StopAsyncIteration:
                    return
                yield event
        finally:
            self._run(events.aclose())

    async def stream(self, prompt: str | Sequence[int], max_new_tokens: int = 64, alpha: float = 0.5,
                     max_price_wei_per_token: int | None = None, sampling: SamplingParams | None = None,
                     chat: bool = False, result: GenerationResult | None = None, stop_at_eos: bool = True,
                     offload: bool = True) -> AsyncIterator[StreamEvent]:
        """The same generation on the caller's event loop, so that several run at once (the gateway). With
        `offload`, the local compute (embeddings, LM head, sampling) and the chain calls run in worker threads,
        so the loop keeps serving the other generations."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        params = sampling or SamplingParams()
        ids = list(prompt) if not isinstance(prompt, str) else self.prompt_ids(prompt, chat)
        if not ids:
            raise ValueError("empty prompt")
        result = result if result is not None else GenerationResult(len(ids))
        result.prompt_tokens = len(ids)
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None

        async def run(function: Callable[..., T], *args: Any) -> T:
            return await asyncio.to_thread(function, *args) if offload else function(*args)

        route = await run(self.route, alpha, max_price_wei_per_token)

        funded: list[Need] = []

        def fund(needs: Sequence[Need]) -> None:
            reservation = self.funder.ensure(needs)
            funded.extend(needs)
            if reservation is not None:
                result.reservations.append(reservation)

        def embed(token_ids: list[int]) -> torch.Tensor:
            with torch.inference_mode():
                return self.head.embed(torch.tensor([token_ids]))

        def next_token(hidden: torch.Tensor) -> int:
            with torch.inference_mode():
                if params.temperature == 0:
                    return self.head.greedy(hidden[:, -1:])
                return sample(self.head.logits(hidden[:, -1:])[0, -1], params, generator)

        verifier = self._verifier()
        session = RouteSession(self.market(), route, self.payer, len(ids) + max_new_tokens, alpha, self.head.dtype,
                               self.head.hidden_size, max_price_wei_per_token, transport=self.transport,
                               options=self.options, banned=self.banned, fund=fund,
                               step_timeout_s=self.step_timeout_s, link_endpoint=self.link_endpoint,
                               verifier=verifier)
        started = time.perf_counter()
        try:
            await session.open()
            hidden = await session.step(await run(embed, ids))
            emitted = ""
            while True:
                token = await run(next_token, hidden)
                if not result.token_ids:
                    result.ttft_s = time.perf_counter() - started
                result.token_ids.append(token)
                text = self._decode(result.token_ids)
                delta, emitted = text[len(emitted):] if text.startswith(emitted) else text, text
                yield StreamEvent(token, delta)
                if len(result.token_ids) >= max_new_tokens or (stop_at_eos and token in self.head.eos_token_ids):
                    break
                hidden = await session.step(await run(embed, [token]))
        finally:
            result.total_s = time.perf_counter() - started
            drain_started = time.perf_counter()
            await verifier.drain(self.step_timeout_s * 4)
            result.checks_drain_s = time.perf_counter() - drain_started
            await session.close()
            self.funder.release(funded)
            result.verification = verifier.stats
            result.equivocations = list(verifier.proofs)
            result.slash_reports = await run(self._report, verifier.proofs)
            result.text = self._decode(result.token_ids)
            result.route = session.route
            result.failovers = list(session.events)
            result.hops = [self._hop_cost(h, session) for h in session.hops] + [
                dataclasses.replace(self._hop_cost(h, session), failed=False, check=True) for h in verifier.shadows]
            result.signing_s = sum(h.signing_s for h in session.hops)

    # ------------------------------------------------------------------ verification
    def _verifier(self) -> Verifier:
        return Verifier(self.registry_domain, self.model_id, self.dtype, self.policy,
                        self.reputation, self._local_forward if self.verify_local else None,
                        step_timeout_s=self.step_timeout_s * 4)

    def _local_forward(self, start: int, end: int, inputs: torch.Tensor) -> torch.Tensor:
        """Layers [start, end) of the client's own copy of the model over `inputs` (for --verify-local)."""
        from p2pllm.shard import load_shard

        with self._local_lock:
            shard = self._local_shards.get((start, end))
            if shard is None:
                shard = load_shard(self.source, start, end, "cpu", self.dtype)
                self._local_shards[(start, end)] = shard
            with torch.inference_mode():
                return shard(inputs.to(shard.dtype), torch.arange(int(inputs.shape[1])), shard.new_cache())

    def _report(self, proofs: Sequence[EquivocationProof]) -> list[str]:
        """Report each equivocating node on-chain (its bond is slashed, part of it paid to this client)."""
        reports = []
        for proof in proofs if self.report_equivocation else ():
            try:
                _, tx = self.chain.slash(proof.first.commitment, proof.first.signature, proof.second.commitment,
                                         proof.second.signature)
            except ChainError as exc:
                log.warning("could not report %s's equivocation on-chain: %s", proof.node, exc)
                continue
            reports.append(tx.tx_hash)
        return reports

    def _decode(self, token_ids: Sequence[int]) -> str:
        """Text of the tokens; empty for a model folder without a tokenizer (token ids still stream)."""
        return self.head.decode(token_ids) if self.head.tokenizer is not None else ""

    @staticmethod
    def _hop_cost(hop: HopSession, session: RouteSession) -> HopCost:
        live = any(slot.hop is hop for slot in session.slots)
        return HopCost(hop.node, hop.endpoint, hop.offer_id, (hop.start, hop.end), hop.tokens,
                       hop.price_wei_per_token, hop.owed_wei, hop.signed_wei, not live, hop.session_id)
