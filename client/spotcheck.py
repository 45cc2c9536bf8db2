"""Spot checks of a route's hops, run beside the generation (never on its critical path): a hop's inputs up to
step t are replayed, as one prefill, on a second, independent node serving the same layers (a shadow session,
opened, funded and paid like any hop) or, with `local`, on the client's own copy of those layers; one prefill
returns every earlier output too, so one check covers every step before it. The shadow session stays open for
the rest of the generation: a later check of the same hop sends only the inputs since the last one (the
checker's cache holds the rest), so a hop's positions are paid for at most once more, however often it is
checked. Outputs are compared within the
dtype's tolerance (`client.verify`). On disagreement a third party (another node, or the local copy) decides;
the node found wrong gets a verdict in the reputation store and is handed back to the route session, which
drops it from the route by failover. Knows nothing about tokens, sampling or the chain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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


@dataclass
class _Shadow:
    """Who checks a hop session: a node's session that has seen the hop's inputs up to `upto` (None: the local
    copy, which recomputes from the start each time)."""

    name: str
    session: HopSession | None
    upto: int = 0


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
    _shadows: dict[str, _Shadow] = field(default_factory=dict)  # by the checked hop session
    _convicted: set[str] = field(default_factory=set)

    @property
    def rel_tol(self) -> float:
        return tolerance(self.dtype)

    # ------------------------------------------------------------------------------------------ commitments

    def check_commitment(self, hop: HopSession, position: int, tokens: int, hidden_in: torch.Tensor,
                         result: StepResult) -> str | None:
        """Why `result`'s commitment is not `hop`'s valid one for the step (the node is then convicted of a bad
        commitment), or None when it is."""
        expected = Expected(hop.node, hop.session_id, position, tokens, self.model_id, (hop.start, hop.end),
                            codec.encode(hidden_in), result.payload(), int(time.time()))
        problem = commitment_problem(result.commitment, expected, self.domain)
        if problem is None:
            self.stats.commitments_verified += 1
        else:
            self.convict(hop.node, "bad_commitment", problem)
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
        """Wait for running checks (cancel what is left after `timeout_s`), then close the checkers' sessions."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
        shadows, self._shadows = list(self._shadows.values()), {}
        await asyncio.gather(*(s.session.close() for s in shadows if s.session is not None))

    async def _check(self, market: Market, payer: Payer, options: StreamOptions, open_and_fund: OpenAndFund,
                     hop: HopSession, inputs: torch.Tensor, outputs: torch.Tensor, excluded: set[str]) -> None:
        self.stats.checks += 1
        others = self._checkers(market, hop, excluded)
        key = hop.session_id.hex()
        length = int(inputs.shape[1])
        shadow = self._shadows.get(key)
        checked: torch.Tensor | None = None
        if shadow is not None and shadow.session is not None and shadow.upto < length:
            try:  # the checker's session has every earlier input: send only the new ones
                checked = await self._extend(shadow, inputs)
            except (HopFailed, HopRejected) as exc:
                log.warning("spot-check session on %s failed: %s", shadow.name, exc)
                self.stats.failed += 1
                await shadow.session.close()
                del self._shadows[key]
                shadow = None
        if checked is None:
            try:
                shadow, checked = await self._fresh(others, payer, options, open_and_fund, hop, inputs)
            except _NoChecker:
                self.stats.unverifiable += 1
                return
            self._shadows[key] = shadow
        start = length - int(checked.shape[1])
        window = outputs[:, start:]
        verdict = compare(window, checked, self.rel_tol)
        self._note(verdict)
        shadow.upto = length
        if verdict.agree:
            self.stats.agreed += 1
            return
        self.stats.disagreed += 1
        first_bad = start + (verdict.first_bad or 0)
        log.warning("spot check: %s and %s disagree on layers [%d, %d) (relative %.2e from position %d)", hop.node,
                    shadow.name, hop.start, hop.end, verdict.max_relative, first_bad)
        remaining = [c for c in others if c.offer.node.lower() != shadow.name.lower()]
        try:
            referee, third = await self._fresh(remaining, payer, options, open_and_fund, hop, inputs,
                                               prefer_local=True, keep=False)
        except _NoChecker:
            self.stats.verdicts.append(f"{hop.node}: unresolved (disagrees with {shadow.name}, no third party)")
            return
        third = third[:, start:]
        with_hop = compare(third, window, self.rel_tol).agree
        with_checker = compare(third, checked, self.rel_tol).agree
        evidence = {"layers": [hop.start, hop.end], "session_id": "0x" + hop.session_id.hex(),
                    "positions": [start, length], "first_bad_position": first_bad,
                    "max_relative": verdict.max_relative, "checker": shadow.name, "referee": referee.name}
        if with_checker and not with_hop:
            self.convict(hop.node, "wrong_output", f"outputs differ from {shadow.name} and {referee.name}", evidence)
        elif with_hop and not with_checker and shadow.session is not None:
            self.convict(shadow.name, "wrong_output", f"outputs differ from {hop.node} and {referee.name}", evidence)
            await shadow.session.close()
            self._shadows.pop(key, None)
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

    async def _fresh(self, candidates: list[Candidate], payer: Payer, options: StreamOptions,
                     open_and_fund: OpenAndFund, hop: HopSession, inputs: torch.Tensor, prefer_local: bool = False,
                     keep: bool = True) -> tuple[_Shadow, torch.Tensor]:
        """The hop's outputs for every position of `inputs`, recomputed by the local copy (when asked for and
        available) or by the first candidate node that answers, on a new session kept open for later checks of
        the same hop (`keep`); `_NoChecker` when none can."""
        if self.local is not None and (prefer_local or not candidates):
            local = self.local
            return _Shadow("local", None), await asyncio.to_thread(local, hop.start, hop.end, inputs)
        tokens = int(inputs.shape[1])
        for candidate in candidates:
            session = HopSession(payer, candidate.offer.node, candidate.offer.endpoint, candidate.offer.offer_id,
                                 hop.start, hop.end, candidate.offer.price_wei_per_token, candidate.credit_wei,
                                 hop.max_length if keep else tokens, hop.dtype, hop.hidden_size, options)
            self.shadows.append(session)
            try:
                await open_and_fund([session])
                await session.send(session.step(0, inputs))
                result = await self._answer(session, 0, tokens)
                if self.check_commitment(session, 0, tokens, inputs, result) is not None:
                    await session.close()
                    continue
            except (HopFailed, HopRejected) as exc:
                self.stats.failed += 1
                log.warning("spot check on %s failed: %s", candidate.offer.node, exc)
                await session.close()
                continue
            if not keep:
                await session.close()
            return _Shadow(candidate.offer.node, session if keep else None), result.hidden
        raise _NoChecker

    async def _extend(self, shadow: _Shadow, inputs: torch.Tensor) -> torch.Tensor:
        """The checker's outputs for the positions of `inputs` beyond what its session has seen."""
        session = shadow.session
        assert session is not None
        fresh = inputs[:, shadow.upto:]
        await session.send(session.step(shadow.upto, fresh))
        result = await self._answer(session, shadow.upto, int(fresh.shape[1]))
        problem = self.check_commitment(session, shadow.upto, int(fresh.shape[1]), fresh, result)
        if problem is not None:
            raise HopFailed(session.node, session.endpoint, f"bad commitment: {problem}")
        return result.hidden

    async def _answer(self, shadow: HopSession, position: int, tokens: int) -> StepResult:
        while True:
            message = await shadow.recv(self.step_timeout_s)
            if isinstance(message, StepResult) and message.position == position:
                shadow.served(message, tokens)
                return message
            if isinstance(message, StepError):
                raise HopFailed(shadow.node, shadow.endpoint, f"check refused: {message}")


class _NoChecker(Exception):
    """No independent node (nor local copy) could recompute the hop."""
