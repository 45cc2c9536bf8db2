"""Spot checks of a route's hops, run beside the generation (never on its critical path): a hop's inputs up to
step t are replayed, as one prefill, on a second, independent node serving the same layers (a shadow session,
opened, funded and paid like any hop) or, with `local`, on the client's own copy of those layers; one prefill
returns every earlier output too, so one check covers every step before it. Outputs are compared within the
dtype's tolerance (`client.verify`). On disagreement a third party (another node, or the local copy) decides;
the node found wrong gets a verdict in the reputation store and is handed back to the route session, which
drops it from the route by failover. Knows nothing about tokens, sampling or the chain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import torch

from client.hops import HopFailed, HopRejected, HopSession, Payer, StreamOptions
from client.market import Candidate, Market
from client.reputation import ReputationStore
from client.verify import Comparison, Expected, SpotCheckPolicy, commitment_problem, compare, tolerance
from p2pllm import codec
from p2pllm.commitments import RegistryDomain
from p2pllm.wire import SignedCommitment, StepError, StepResult

log = logging.getLogger("p2pclient.spotcheck")

LocalForward = Callable[[int, int, torch.Tensor], torch.Tensor]  # (start, end, inputs) -> outputs
OpenAndFund = Callable[[Sequence[HopSession]], Awaitable[None]]


@dataclass
class VerificationStats:
    """What spot checks did in one generation."""

    commitments_verified: int = 0
    checks: int = 0
    agreed: int = 0
    disagreed: int = 0
    unverifiable: int = 0  # no independent node serves those layers (and no local copy)
    failed: int = 0  # the checker itself failed (unreachable, refused)
    positions_compared: int = 0
    verdicts: list[str] = field(default_factory=list)  # "node: verdict (reason)"
    max_relative_diff: float = 0.0


@dataclass(frozen=True)
class EquivocationProof:
    """Two commitments `node` signed for the same step with different outputs: what `OfferRegistry.slash` takes."""

    node: str
    first: SignedCommitment
    second: SignedCommitment


@dataclass(frozen=True)
class Condemned:
    """A node a check found wrong, with the evidence."""

    node: str
    reason: str


@dataclass
class Verifier:
    """Commitment checks for every result and spot checks at `policy`'s rate for one generation."""

    domain: RegistryDomain
    model_id: bytes
    dtype: str
    policy: SpotCheckPolicy
    reputation: ReputationStore | None = None
    local: LocalForward | None = None
    step_timeout_s: float = 60.0
    stats: VerificationStats = field(default_factory=VerificationStats)
    condemned: list[Condemned] = field(default_factory=list)
    proofs: list[EquivocationProof] = field(default_factory=list)
    shadows: list[HopSession] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _busy: set[str] = field(default_factory=set)
    _convicted: set[str] = field(default_factory=set)

    @property
    def rel_tol(self) -> float:
        return tolerance(self.dtype)

    # ------------------------------------------------------------------------------------------ commitments

    def commitment_problem(self, hop: HopSession, position: int, tokens: int, hidden_in: torch.Tensor,
                           result: StepResult) -> str | None:
        expected = Expected(hop.node, hop.session_id, position, tokens, self.model_id, (hop.start, hop.end),
                            codec.encode(hidden_in), codec.encode(result.hidden))
        problem = commitment_problem(result.commitment, expected, self.domain)
        if problem is None:
            self.stats.commitments_verified += 1
        return problem

    def on_equivocation(self, node: str, first: SignedCommitment, second: SignedCommitment) -> None:
        """Keep the proof (the caller may report it on-chain) and record the verdict."""
        self.proofs.append(EquivocationProof(node, first, second))
        self.convict(node, "equivocation", "signed two different outputs for the same step",
                     {"first": first.to_json(), "second": second.to_json()})

    def convict(self, node: str, verdict: str, reason: str, evidence: dict | None = None) -> None:
        self._convicted.add(node.lower())
        self.stats.verdicts.append(f"{node}: {verdict} ({reason})")
        if self.reputation is not None:
            self.reputation.record(node, verdict, reason, evidence)
        if verdict == "wrong_output":
            self.condemned.append(Condemned(node, reason))

    # ------------------------------------------------------------------------------------------ spot checks

    def wants_check(self, hop: HopSession) -> bool:
        """Draw whether to check `hop` now (never while a check of that hop session is running)."""
        if hop.node.lower() in self._convicted:
            return False  # already on its way out of the route
        return self.policy.draw() and hop.session_id.hex() not in self._busy

    def start_check(self, market: Market, payer: Payer, options: StreamOptions, open_and_fund: OpenAndFund,
                    hop: HopSession, inputs: torch.Tensor, outputs: torch.Tensor, excluded: set[str]) -> None:
        """Check `hop` over positions [0, inputs' length) in the background."""
        self._busy.add(hop.session_id.hex())
        task = asyncio.get_running_loop().create_task(
            self._check(market, payer, options, open_and_fund, hop, inputs, outputs, excluded))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._busy.discard(hop.session_id.hex()))

    async def drain(self, timeout_s: float) -> None:
        """Wait for running checks (cancel what is left after `timeout_s`), then close their sessions."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)

    async def _check(self, market: Market, payer: Payer, options: StreamOptions, open_and_fund: OpenAndFund,
                     hop: HopSession, inputs: torch.Tensor, outputs: torch.Tensor, excluded: set[str]) -> None:
        self.stats.checks += 1
        others = self._checkers(market, hop, excluded)
        try:
            first = await self._replay(others, market, payer, options, open_and_fund, hop, inputs)
        except _NoChecker:
            self.stats.unverifiable += 1
            return
        checker_name, checked = first
        verdict = compare(outputs, checked, self.rel_tol)
        self._note(verdict)
        if verdict.agree:
            self.stats.agreed += 1
            return
        self.stats.disagreed += 1
        log.warning("spot check: %s and %s disagree on layers [%d, %d) (relative %.2e from position %s)", hop.node,
                    checker_name, hop.start, hop.end, verdict.max_relative, verdict.first_bad)
        remaining = [c for c in others if c.offer.node.lower() != checker_name.lower()]
        try:
            referee_name, third = await self._replay(remaining, market, payer, options, open_and_fund, hop, inputs,
                                                     prefer_local=True)
        except _NoChecker:
            self.stats.verdicts.append(f"{hop.node}: unresolved (disagrees with {checker_name}, no third party)")
            return
        with_hop = compare(third, outputs, self.rel_tol).agree
        with_checker = compare(third, checked, self.rel_tol).agree
        evidence = {"layers": [hop.start, hop.end], "session_id": "0x" + hop.session_id.hex(),
                    "positions": int(inputs.shape[1]), "first_bad_position": verdict.first_bad,
                    "max_relative": verdict.max_relative, "checker": checker_name, "referee": referee_name}
        if with_checker and not with_hop:
            self.convict(hop.node, "wrong_output", f"outputs differ from {checker_name} and {referee_name}", evidence)
        elif with_hop and not with_checker and checker_name != "local":
            self.convict(checker_name, "wrong_output", f"outputs differ from {hop.node} and {referee_name}",
                         evidence)
        else:
            self.stats.verdicts.append(f"{hop.node}: unresolved (three-way disagreement)")

    def _note(self, comparison: Comparison) -> None:
        self.stats.positions_compared += comparison.positions
        if comparison.max_relative != float("inf"):
            self.stats.max_relative_diff = max(self.stats.max_relative_diff, comparison.max_relative)

    def _checkers(self, market: Market, hop: HopSession, excluded: set[str]) -> list[Candidate]:
        """Independent nodes serving all of the hop's layers, cheapest first."""
        skip = {hop.node.lower(), *excluded}
        fits = [c for c in market.candidates
                if c.offer.start <= hop.start and hop.end <= c.offer.end and c.offer.node.lower() not in skip]
        return sorted(fits, key=lambda c: (c.offer.price_wei_per_token, c.rtt_ms, c.offer.offer_id))

    async def _replay(self, candidates: list[Candidate], market: Market, payer: Payer, options: StreamOptions,
                      open_and_fund: OpenAndFund, hop: HopSession, inputs: torch.Tensor,
                      prefer_local: bool = False) -> tuple[str, torch.Tensor]:
        """The hop's outputs recomputed by the local copy (when asked for and available) or the first candidate
        node that answers; `_NoChecker` when none can."""
        if self.local is not None and (prefer_local or not candidates):
            local = self.local
            return "local", await asyncio.to_thread(local, hop.start, hop.end, inputs)
        for candidate in candidates:
            shadow = HopSession(payer, candidate.offer.node, candidate.offer.endpoint, candidate.offer.offer_id,
                                hop.start, hop.end, candidate.offer.price_wei_per_token, candidate.credit_wei,
                                int(inputs.shape[1]), hop.dtype, hop.hidden_size, options)
            self.shadows.append(shadow)
            try:
                await open_and_fund([shadow])
                await shadow.send(shadow.step(0, inputs))
                result = await self._answer(shadow, int(inputs.shape[1]))
                problem = self.commitment_problem(shadow, 0, int(inputs.shape[1]), inputs, result)
                if problem is not None:
                    self.convict(shadow.node, "bad_commitment", problem)
                    continue
                return candidate.offer.node, result.hidden
            except (HopFailed, HopRejected) as exc:
                self.stats.failed += 1
                log.warning("spot check on %s failed: %s", candidate.offer.node, exc)
            finally:
                await shadow.close()
        raise _NoChecker

    async def _answer(self, shadow: HopSession, tokens: int) -> StepResult:
        while True:
            message = await shadow.recv(self.step_timeout_s)
            if isinstance(message, StepResult) and message.position == 0:
                shadow.served(message, tokens)
                return message
            if isinstance(message, StepError):
                raise HopFailed(shadow.node, shadow.endpoint, f"check refused: {message}")


class _NoChecker(Exception):
    """No independent node (nor local copy) could recompute the hop."""
