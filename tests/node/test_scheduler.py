"""The compute scheduler over a real executor (the tiny Llama): batched steps equal solo ones, a step refused or
cancelled fails alone, a long prefill cannot stall decodes, nothing starves, the `after` hook runs before a
result is released, and shutdown drains or rejects cleanly. A gate (a step of a session named "gate" that
blocks the worker until released) lines up the queue deterministically."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
import torch

from node.executor import PositionMismatch, ShardExecutor, UnknownSession
from node.scheduler import Scheduler, SchedulerClosed
from p2pllm.models import ModelSource
from p2pllm.shard import load_shard

HIDDEN = 256


class GatedExecutor:
    """The real executor, except that a forward of session "gate" waits for `release`."""

    def __init__(self, executor: ShardExecutor) -> None:
        self.executor = executor
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []
        self.prompt_batches: list[int] = []

    def forward(self, session_id: str, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if session_id == "gate":
            self.entered.set()
            assert self.release.wait(30)
        self.batch_sizes.append(1)
        return self.executor.forward(session_id, hidden, positions)

    def forward_batch(self, steps: list) -> list:
        self.batch_sizes.append(len(steps))
        return self.executor.forward_batch(steps)

    def prefill_batch(self, steps: list) -> list:
        self.prompt_batches.append(len(steps))
        return self.executor.prefill_batch(steps)

    def open_ids(self) -> frozenset[str]:
        return self.executor.open_ids()


@pytest.fixture
def executor(tiny_llama_source: ModelSource, one_torch_thread: None) -> ShardExecutor:
    return ShardExecutor(load_shard(tiny_llama_source, 0, 4), budget_tokens=4096)


@pytest.fixture
def gated(executor: ShardExecutor) -> Iterator[tuple[GatedExecutor, Scheduler]]:
    gate = GatedExecutor(executor)
    scheduler = Scheduler(gate, max_batch=8, max_wait_s=0, prefill_chunk=4)  # type: ignore[arg-type]
    executor.open_session(64, session_id="gate")
    yield gate, scheduler
    gate.release.set()
    scheduler.close(drain=False)


def hold_worker(gate: GatedExecutor, scheduler: Scheduler, relayed: bool = False) -> concurrent.futures.Future:
    """Block the worker on a step of "gate" (`relayed`: one that waits only `relay_wait_s` for a wave)."""
    future = scheduler.submit("gate", torch.randn(1, 1, HIDDEN), 0, relayed=relayed)
    assert gate.entered.wait(30)
    return future


def open_with_prompt(executor: ShardExecutor, sid: str, tokens: int = 3) -> None:
    executor.open_session(64, session_id=sid)
    executor.forward(sid, torch.randn(1, tokens, HIDDEN), torch.arange(tokens))


def test_a_batch_of_sessions_equals_each_alone(executor: ShardExecutor, tiny_llama_source: ModelSource) -> None:
    reference = ShardExecutor(load_shard(tiny_llama_source, 0, 4), budget_tokens=4096)
    gate = GatedExecutor(executor)
    scheduler = Scheduler(gate, max_batch=8, max_wait_s=0)  # type: ignore[arg-type]
    try:
        prompts = {f"s{i}": torch.randn(1, 2 + i, HIDDEN) for i in range(5)}
        for sid, prompt in prompts.items():
            executor.open_session(64, session_id=sid)
            reference.open_session(64, session_id=sid)
            assert torch.equal(scheduler.submit(sid, prompt, 0).result(30)[0],
                               reference.forward(sid, prompt, torch.arange(prompt.shape[1])))
        executor.open_session(64, session_id="gate")
        for step in range(4):
            held = hold_worker(gate, scheduler) if step == 0 else None
            steps = {sid: torch.randn(1, 1, HIDDEN) for sid in prompts}
            futures = {sid: scheduler.submit(sid, x, prompts[sid].shape[1] + step) for sid, x in steps.items()}
            gate.release.set()
            for sid, future in futures.items():
                got = future.result(30)[0]
                want = reference.forward(sid, steps[sid], torch.tensor([prompts[sid].shape[1] + step]))
                assert (got - want).abs().max() <= 1e-4 * want.abs().max()
            if held is not None:
                held.result(30)
        assert max(gate.batch_sizes) == 5  # all five decoded as one batch
    finally:
        scheduler.close()


def test_a_refused_or_cancelled_step_fails_alone(gated: tuple[GatedExecutor, Scheduler],
                                                 executor: ShardExecutor) -> None:
    gate, scheduler = gated
    for sid in ("a", "b", "c", "d"):
        open_with_prompt(executor, sid)
    held = hold_worker(gate, scheduler)
    good = scheduler.submit("a", torch.randn(1, 1, HIDDEN), 3)
    wrong_position = scheduler.submit("b", torch.randn(1, 1, HIDDEN), 7)
    cancelled = scheduler.submit("c", torch.randn(1, 1, HIDDEN), 3)
    also_good = scheduler.submit("d", torch.randn(1, 1, HIDDEN), 3)
    executor.close_session("c")  # the client went away while its step was queued
    gate.release.set()
    held.result(30)
    assert good.result(30)[0].shape == (1, 1, HIDDEN) and also_good.result(30)[0].shape == (1, 1, HIDDEN)
    with pytest.raises(PositionMismatch):
        wrong_position.result(30)
    with pytest.raises(UnknownSession):
        cancelled.result(30)
    assert gate.batch_sizes[-1] == 4  # one batch: the bad ones were refused inside it
    assert executor.session("b").length == 3  # untouched


def test_a_long_prefill_does_not_stall_decodes(gated: tuple[GatedExecutor, Scheduler],
                                               executor: ShardExecutor) -> None:
    """Prefill chunks of 4 tokens alternate with decode rounds: a decode queued behind a 40-token prompt is
    served after one chunk, long before the prompt is done, and the prompt still finishes (nothing starves)."""
    gate, scheduler = gated
    open_with_prompt(executor, "decoder")
    executor.open_session(64, session_id="prompt")
    done: list[str] = []
    held = hold_worker(gate, scheduler)
    prompt = scheduler.submit("prompt", torch.randn(1, 40, HIDDEN), 0)
    prompt.add_done_callback(lambda _: done.append("prompt"))
    for i in range(3):
        decode = scheduler.submit("decoder", torch.randn(1, 1, HIDDEN), 3 + i)
        decode.add_done_callback(lambda _, i=i: done.append(f"decode{i}"))
        if i == 0:
            gate.release.set()
            held.result(30)
        decode.result(30)
    assert prompt.result(30)[0].shape == (1, 40, HIDDEN)
    assert done.index("decode0") < done.index("prompt") and done.index("decode2") < done.index("prompt")


def test_fresh_prompts_queued_together_run_as_one_batch(executor: ShardExecutor,
                                                       tiny_llama_source: ModelSource) -> None:
    """Prompts of 3, 4 and 2 tokens and one of an unknown session, queued behind the gate, run as one padded
    batch of four (4 × 4 tokens fit the 16-token chunk) and equal each prompt alone; the unknown one fails alone,
    and a 20-token prompt, longer than a chunk, still goes through in chunks by itself."""
    reference = ShardExecutor(load_shard(tiny_llama_source, 0, 4), budget_tokens=4096)
    gate = GatedExecutor(executor)
    scheduler = Scheduler(gate, max_batch=8, max_wait_s=0, prefill_chunk=16)  # type: ignore[arg-type]
    try:
        executor.open_session(64, session_id="gate")
        prompts = {"a": torch.randn(1, 3, HIDDEN), "b": torch.randn(1, 4, HIDDEN), "c": torch.randn(1, 2, HIDDEN),
                   "long": torch.randn(1, 20, HIDDEN)}
        for sid in prompts:
            executor.open_session(64, session_id=sid)
            reference.open_session(64, session_id=sid)
        held = hold_worker(gate, scheduler)
        futures = {sid: scheduler.submit(sid, x, 0) for sid, x in prompts.items()}
        ghost = scheduler.submit("ghost", torch.randn(1, 3, HIDDEN), 0)
        gate.release.set()
        held.result(30)
        for sid, x in prompts.items():
            got = futures[sid].result(30)[0]
            want = reference.forward(sid, x, torch.arange(x.shape[1]))
            assert got.shape == want.shape and (got - want).abs().max() <= 1e-4 * want.abs().max()
        with pytest.raises(UnknownSession):
            ghost.result(30)
        assert gate.prompt_batches == [4]
        assert executor.session("long").length == 20
    finally:
        scheduler.close()


def test_after_runs_before_the_result_and_its_failure_fails_that_step_only(
        gated: tuple[GatedExecutor, Scheduler], executor: ShardExecutor) -> None:
    gate, scheduler = gated
    open_with_prompt(executor, "a")
    open_with_prompt(executor, "b")
    order: list[str] = []
    held = hold_worker(gate, scheduler)

    def broken() -> None:
        raise OSError("disk full")

    ok = scheduler.submit("a", torch.randn(1, 1, HIDDEN), 3, after=lambda: order.append("after"))
    ok.add_done_callback(lambda _: order.append("released"))
    failing = scheduler.submit("b", torch.randn(1, 1, HIDDEN), 3, after=broken)
    gate.release.set()
    held.result(30)
    ok.result(30)
    assert order == ["after", "released"]
    with pytest.raises(OSError, match="disk full"):
        failing.result(30)


def test_shutdown_drains_or_rejects(executor: ShardExecutor) -> None:
    for drain in (True, False):
        gate = GatedExecutor(executor)
        scheduler = Scheduler(gate, max_wait_s=0)  # type: ignore[arg-type]
        executor.open_session(64, session_id="gate")
        open_with_prompt(executor, "a")
        held = hold_worker(gate, scheduler)
        queued = scheduler.submit("a", torch.randn(1, 1, HIDDEN), 3)
        closer = threading.Thread(target=scheduler.close, kwargs={"drain": drain})
        closer.start()
        while not scheduler._closing:  # wait until close() has begun
            pass
        with pytest.raises(SchedulerClosed):
            scheduler.submit("a", torch.randn(1, 1, HIDDEN), 4)
        gate.release.set()
        closer.join(30)
        assert not closer.is_alive()
        held.result(30)  # the step in flight always completes
        if drain:
            assert queued.result(30)[0].shape == (1, 1, HIDDEN)
        else:
            with pytest.raises(SchedulerClosed):
                queued.result(30)
        executor.close_session("gate")
        executor.close_session("a")


def test_bad_settings_are_refused(executor: ShardExecutor) -> None:
    for kwargs in ({"max_batch": 0}, {"prefill_chunk": 0}, {"max_wait_s": -1}, {"relay_wait_s": -1},
                   {"wave_fraction": 0}, {"wave_fraction": 1.5}):
        with pytest.raises(ValueError):
            Scheduler(executor, **kwargs)  # type: ignore[arg-type]


def keep_cadence(scheduler: Scheduler, sids: list[str], start: int, rounds: int = 3) -> int:
    """Step every session of `sids` `rounds` times, together, so that the scheduler knows their cadence; the next
    position. Each round's steps are queued under the scheduler's lock: were the worker to take the first alone,
    the others would wait their bound for it (this harness sends the next round only when all are back)."""
    for step in range(rounds):
        with scheduler._cond:
            futures = [scheduler.submit(sid, torch.randn(1, 1, HIDDEN), start + step) for sid in sids]
        for future in futures:
            future.result(30)
    return start + rounds


@contextlib.contextmanager
def held_with_cadence(executor: ShardExecutor, prefix: str,
                      **settings: float) -> Iterator[tuple[GatedExecutor, Scheduler, list[str], int, Future]]:
    """Four sessions that keep a cadence on a gated scheduler (`settings`), and the worker held on a relayed
    "gate" step: (gate, scheduler, session ids, their next position, the held step)."""
    gate = GatedExecutor(executor)
    scheduler = Scheduler(gate, max_batch=8, **settings)  # type: ignore[arg-type]
    try:
        sids = [f"{prefix}{i}" for i in range(4)]
        for sid in sids:
            open_with_prompt(executor, sid)
        position = keep_cadence(scheduler, sids, 3)
        executor.open_session(64, session_id="gate")
        yield gate, scheduler, sids, position, hold_worker(gate, scheduler, relayed=True)
    finally:
        scheduler.close()


def test_a_round_waits_for_a_wave_of_the_sessions_that_keep_their_cadence(executor: ShardExecutor) -> None:
    """Three of four active sessions have a step ready: with `wave_fraction` 1 the worker waits for the fourth
    and runs all four as one batch; a step relayed by another node waits only `relay_wait_s`."""
    with held_with_cadence(executor, "w", max_wait_s=10, relay_wait_s=0.05, wave_fraction=1.0) as (
            gate, scheduler, sids, position, held):
        early = [scheduler.submit(sid, torch.randn(1, 1, HIDDEN), position) for sid in sids[:3]]
        gate.release.set()
        held.result(30)
        concurrent.futures.wait(early, timeout=0.5)
        assert not any(f.done() for f in early)  # waiting for the fourth
        last = scheduler.submit(sids[3], torch.randn(1, 1, HIDDEN), position)
        for future in (*early, last):
            future.result(30)
        assert gate.batch_sizes[-1] == 4
        # a relayed step of one session while the other three are expected: served after relay_wait_s
        relayed = scheduler.submit(sids[0], torch.randn(1, 1, HIDDEN), position + 1, relayed=True)
        relayed.result(5)  # far less than max_wait_s
        assert gate.batch_sizes[-1] == 1


def test_a_wave_starts_at_its_fraction_and_the_oldest_step_bounds_the_wait(executor: ShardExecutor) -> None:
    with held_with_cadence(executor, "f", max_wait_s=0.3, wave_fraction=0.5) as (
            gate, scheduler, sids, position, held):
        pair = [scheduler.submit(sid, torch.randn(1, 1, HIDDEN), position) for sid in sids[:2]]
        gate.release.set()
        held.result(30)
        for future in pair:  # two of four: half, so no wait
            future.result(5)
        assert gate.batch_sizes[-1] == 2
        lone = scheduler.submit(sids[2], torch.randn(1, 1, HIDDEN), position)
        assert not concurrent.futures.wait([lone], timeout=0.1).done  # one of four: it waits ...
        lone.result(5)  # ... but no longer than max_wait_s
        assert gate.batch_sizes[-1] == 1


def test_one_active_session_or_a_closed_one_never_holds_a_step(executor: ShardExecutor) -> None:
    gate = GatedExecutor(executor)
    scheduler = Scheduler(gate, max_batch=8, max_wait_s=30, wave_fraction=1.0)  # type: ignore[arg-type]
    try:
        for sid in ("x", "y"):
            open_with_prompt(executor, sid)
        position = keep_cadence(scheduler, ["x", "y"], 3)
        executor.close_session("y")  # y's client went away: x alone is active
        for step in range(3):
            scheduler.submit("x", torch.randn(1, 1, HIDDEN), position + step).result(5)
    finally:
        scheduler.close()
