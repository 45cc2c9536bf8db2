"""The node's compute scheduler: the steps of every session go to one queue, and one worker thread, off the event
loop, runs them. Each round it takes every ready decode step (one token; at most `max_batch`, oldest first, one per
session) and runs them as one batched forward (`ShardExecutor.forward_batch`: each session keeps its own cache and
position), then runs one chunk of at most `prefill_chunk` tokens of the oldest prefill. A long prompt therefore
holds the other sessions' decodes back by at most one chunk's compute per round, and a prefill advances every
round, so no session starves. Prompts of fresh sessions (position 0) that fit in one chunk together, padded to
the longest of them, run as one batched forward instead (`ShardExecutor.prefill_batch`), so that clients that
arrive together share one read of the weights for their prompts too.

Policy (waves): a round starts when every session the node expects a step from soon (`node.cadence`: it keeps
its cadence) has one queued, or when `wave_fraction` of them (rounded up, at most `max_batch`) have a decode step
ready and no further step has arrived, nor a round's results been released, for `burst_gap_s` (the rest of a
burst joins its wave, and so do sessions that come straight back). Short of the fraction the worker waits, until
a ready step has waited its bound since it arrived or since the last round ended, whichever is later (so the
worker idles at most that long): `max_wait_s` for a step straight from its client, `relay_wait_s` for one pushed
by another node (the upstream node batched it already, so its siblings arrive within milliseconds). With one
session active nothing waits, so a lone session's latency is the unbatched path plus one thread hand-off.

Why a fraction of one half: a session's token spends its cycle in three or more places (the nodes of its route
and its client's head), so a round of whatever is at the node when it frees up is about K/4 sessions, and a
round of all K leaves the node idle while the heads run; two waves of K/2 that alternate keep the CPU busy with
batches twice as large. Sessions that all come back at once (one node, no other stage) still make one wave of
all, by the burst rule. README, "Architecture", has the figures.

A step's `after` callback runs on the worker right after its compute and before its result is released (the node
stores the step's receipt there, so the output never leaves before the receipt is durable, and the event loop
never waits on SQLite). A step of a session that closed while queued fails alone with `UnknownSession`; a step
refused by the executor fails alone with its typed error; the others of its batch are served. `close(drain)`
refuses new steps with `SchedulerClosed`, then finishes (drain) or fails the queued ones, and stops the worker.

Boundary: knows the executor, tensors and threads; knows nothing about streams, receipts or payment.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from node.cadence import Cadence, wave_size
from node.executor import ExecutorError, ShardExecutor

After = Callable[[], None]


class SchedulerClosed(Exception):
    """The node is shutting down: no new steps are taken."""


@dataclass
class _Job:
    session_id: str
    hidden: torch.Tensor
    position: int
    after: After | None
    future: concurrent.futures.Future[tuple[torch.Tensor, float]] = field(default_factory=concurrent.futures.Future)
    done_tokens: int = 0
    pieces: list[torch.Tensor] = field(default_factory=list)
    compute_s: float = 0.0
    wait_s: float = 0.0  # how long this step may wait for a fuller batch
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def tokens(self) -> int:
        return int(self.hidden.shape[1])


@dataclass(frozen=True)
class Load:
    """What the scheduler is doing, for `/info` and the pricing agent."""

    queued: int  # steps waiting, or in flight
    max_batch: int
    recent_batch: float  # mean decode batch size over recent rounds
    recent_step_ms: float  # mean compute time of a decode round over recent rounds (0 before any)


class Scheduler:
    """One compute worker over a `ShardExecutor`: `await run(...)` from the event loop, `submit(...)` from any
    thread."""

    def __init__(self, executor: ShardExecutor, *, max_batch: int = 32, max_wait_s: float = 0.1,
                 relay_wait_s: float = 0.01, wave_fraction: float = 0.5, burst_gap_s: float = 0.002,
                 prefill_chunk: int = 128) -> None:
        if max_batch < 1 or prefill_chunk < 1 or min(max_wait_s, relay_wait_s, burst_gap_s) < 0 \
                or not 0 < wave_fraction <= 1:
            raise ValueError(f"need max_batch >= 1, prefill_chunk >= 1, max_wait_s, relay_wait_s, burst_gap_s >= 0, "
                             f"0 < wave_fraction <= 1; got {max_batch}, {prefill_chunk}, {max_wait_s}, "
                             f"{relay_wait_s}, {burst_gap_s}, {wave_fraction}")
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.relay_wait_s = relay_wait_s
        self.wave_fraction = wave_fraction
        self.burst_gap_s = burst_gap_s
        self._released_at = 0.0  # when the last round's results were released (its sessions may be right back)
        self._cadence = Cadence(slack_s=max_wait_s)
        self.prefill_chunk = prefill_chunk
        self._queue: deque[_Job] = deque()
        self._prefill: _Job | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._drain = True
        self._busy = 0
        self._batch_ewma = 0.0
        self._step_ewma_s = 0.0
        self.batches = 0
        self.batched_steps = 0
        self.prompt_batches = 0  # batched prefills of fresh sessions' prompts (`prefill_batch`), and their prompts
        self.batched_prompts = 0
        self._worker = threading.Thread(target=self._work, name="compute", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------------ external

    def submit(self, session_id: str, hidden: torch.Tensor, position: int, after: After | None = None,
               relayed: bool = False) -> concurrent.futures.Future[tuple[torch.Tensor, float]]:
        """Queue a step (`relayed`: pushed by another node, not sent by its client); the future gives (output,
        compute seconds) or the error that refused it."""
        job = _Job(session_id, hidden, position, after, wait_s=self.relay_wait_s if relayed else self.max_wait_s)
        with self._cond:
            if self._closing:
                raise SchedulerClosed("the node is shutting down")
            self._queue.append(job)
            if job.tokens == 1:
                self._cadence.note(session_id, job.queued_at)
            self._cond.notify()
        return job.future

    async def run(self, session_id: str, hidden: torch.Tensor, position: int, after: After | None = None,
                  relayed: bool = False) -> tuple[torch.Tensor, float]:
        return await asyncio.wrap_future(self.submit(session_id, hidden, position, after, relayed))

    def load(self) -> Load:
        with self._cond:
            queued = len(self._queue) + (self._prefill is not None) + self._busy
            return Load(queued, self.max_batch, round(self._batch_ewma, 2), round(1000 * self._step_ewma_s, 3))

    def close(self, drain: bool = True, timeout_s: float = 60.0) -> None:
        """Refuse new steps; finish (`drain`) or fail what is queued; stop the worker."""
        with self._cond:
            self._closing = True
            self._drain = drain
            if not drain:
                failed = list(self._queue) + ([self._prefill] if self._prefill is not None else [])
                self._queue.clear()
                self._prefill = None
                for job in failed:
                    _fail(job, SchedulerClosed("the node is shutting down"))
            self._cond.notify_all()
        self._worker.join(timeout_s)

    # ------------------------------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._prefill is None and not self._closing:
                    self._cond.wait()
                if not self._queue and self._prefill is None:
                    return  # closing, nothing left
                self._fill_wait()
                decodes = self._take_decodes()
                prompts: list[_Job] = []
                if self._prefill is None:
                    prompts = self._take_prefills()
                    if len(prompts) == 1:
                        self._prefill, prompts = prompts[0], []
                prefill = self._prefill
                self._busy = len(decodes) + len(prompts)
            if decodes:
                self._run_decodes(decodes)
            if prompts:
                self._run_prompts(prompts)
            elif prefill is not None:
                self._run_prefill_chunk(prefill)
            with self._cond:
                self._busy = 0

    def _fill_wait(self) -> None:
        """With the lock held: wait (bounded) for a wave of the sessions expected soon."""
        if self._closing or len(self._cadence) <= 1:  # one session stepping: nothing to wait for
            return
        while True:
            decodes = [job for job in self._queue if job.tokens == 1]
            if not decodes:
                return
            now = time.monotonic()
            queued = {job.session_id for job in self._queue}
            expected = self._cadence.expected(now, self.executor.open_ids())
            wanted = wave_size(len(expected | queued), self.wave_fraction, self.max_batch)
            if expected <= queued:
                return
            free = self._released_at  # the worker idles for a wave from when it could have run the step
            left = min(max(job.queued_at, free) + job.wait_s for job in decodes) - now
            if len({job.session_id for job in decodes}) >= wanted:  # a wave: take the rest of its burst too
                last = max(max(job.queued_at for job in self._queue), self._released_at)
                left = min(left, last + self.burst_gap_s - now)
            if left <= 0:
                return
            self._cond.wait(left)

    def _take_decodes(self) -> list[_Job]:
        taken: list[_Job] = []
        sessions: set[str] = set()
        kept: deque[_Job] = deque()
        while self._queue:
            job = self._queue.popleft()
            if job.tokens == 1 and len(taken) < self.max_batch and job.session_id not in sessions:
                taken.append(job)
                sessions.add(job.session_id)
            else:
                kept.append(job)
        self._queue = kept
        return taken

    def _take_prefills(self) -> list[_Job]:
        """The oldest prefill; when it is a fresh session's prompt that fits in one chunk, with it the next ones
        (oldest first, one per session, at most `max_batch`) while all of them padded to the longest still fit."""
        prefills = [job for job in self._queue if job.tokens > 1]
        if not prefills:
            return []
        taken = [prefills[0]]
        if _fresh_prompt(taken[0], self.prefill_chunk):
            for job in prefills[1:]:
                if len(taken) == self.max_batch:
                    break
                longest = max(job.tokens, *(t.tokens for t in taken))
                if _fresh_prompt(job, self.prefill_chunk) and (len(taken) + 1) * longest <= self.prefill_chunk \
                        and job.session_id not in {t.session_id for t in taken}:
                    taken.append(job)
        for job in taken:
            self._queue.remove(job)
        return taken

    def _run_decodes(self, jobs: list[_Job]) -> None:
        def run() -> list[torch.Tensor | ExecutorError]:
            if len(jobs) > 1:
                return self.executor.forward_batch([(job.session_id, job.hidden, job.position) for job in jobs])
            job = jobs[0]  # alone: the unbatched path itself (no padding mask), bit for bit
            try:
                return [self.executor.forward(job.session_id, job.hidden, torch.tensor([job.position]))]
            except ExecutorError as exc:
                return [exc]

        ran = _run_together(jobs, run)
        if ran is None:
            return
        results, compute_s = ran
        served = sum(1 for r in results if isinstance(r, torch.Tensor))
        with self._cond:
            self.batches += 1
            self.batched_steps += served
            self._batch_ewma = 0.8 * self._batch_ewma + 0.2 * served if self.batches > 1 else float(served)
            self._step_ewma_s = 0.8 * self._step_ewma_s + 0.2 * compute_s if self.batches > 1 else compute_s
        _deliver(jobs, results, compute_s)
        with self._cond:
            self._released_at = time.monotonic()

    def _run_prompts(self, jobs: list[_Job]) -> None:
        ran = _run_together(jobs, lambda: self.executor.prefill_batch(
            [(job.session_id, job.hidden, job.position) for job in jobs]))
        if ran is None:
            return
        results, compute_s = ran
        with self._cond:
            self.prompt_batches += 1
            self.batched_prompts += sum(1 for r in results if isinstance(r, torch.Tensor))
        _deliver(jobs, results, compute_s)

    def _run_prefill_chunk(self, job: _Job) -> None:
        start = job.done_tokens
        end = min(job.tokens, start + self.prefill_chunk)
        started = time.perf_counter()
        try:
            out = self.executor.forward(job.session_id, job.hidden[:, start:end],
                                        torch.arange(job.position + start, job.position + end))
        except Exception as exc:
            with self._cond:
                self._prefill = None
            _fail(job, exc)
            return
        job.compute_s += time.perf_counter() - started
        job.pieces.append(out)
        job.done_tokens = end
        if end == job.tokens:
            with self._cond:
                self._prefill = None
            _finish(job, job.pieces[0] if len(job.pieces) == 1 else torch.cat(job.pieces, dim=1), job.compute_s)


def _run_together(jobs: list[_Job], run: Callable[[], list[torch.Tensor | ExecutorError]]
                  ) -> tuple[list[torch.Tensor | ExecutorError], float] | None:
    """`run()` (one forward for `jobs`, a result or typed error per job) and its compute seconds; None when it
    failed as a whole, having failed every job (the executor dropped their sessions)."""
    started = time.perf_counter()
    try:
        results = run()
    except Exception as exc:
        for job in jobs:
            _fail(job, exc)
        return None
    return results, time.perf_counter() - started


def _deliver(jobs: list[_Job], results: list[torch.Tensor | ExecutorError], compute_s: float) -> None:
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, ExecutorError):
            _fail(job, result)
        else:
            _finish(job, result, compute_s)


def _fresh_prompt(job: _Job, chunk: int) -> bool:
    return job.position == 0 and job.tokens <= chunk


def _finish(job: _Job, out: torch.Tensor, compute_s: float) -> None:
    if job.after is not None:
        try:
            job.after()
        except Exception as exc:
            _fail(job, exc)
            return
    if not job.future.done():
        job.future.set_result((out, compute_s))


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
