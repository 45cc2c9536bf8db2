"""Sessions over a shard: exact generation through executors, every typed error, budget, TTL, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest
import torch
from transformers import AutoModelForCausalLM

from node.executor import (
    CacheBudgetExceeded,
    DtypeMismatch,
    LengthExceeded,
    PositionMismatch,
    SessionExists,
    ShapeMismatch,
    ShardExecutor,
    UnknownSession,
)
from p2pllm.head import Head, load_head
from p2pllm.models import ModelSource
from p2pllm.shard import Shard, load_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [1, 17, 99, 250, 3, 77, 402, 11, 5, 300, 42, 8]
HIDDEN = 256


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def llama_shards(tiny_llama_source: ModelSource) -> tuple[Shard, Shard, Shard]:
    return (
        load_shard(tiny_llama_source, 0, 3),
        load_shard(tiny_llama_source, 3, 7),
        load_shard(tiny_llama_source, 7, 8),
    )


@pytest.fixture(scope="module")
def head(tiny_llama_source: ModelSource) -> Head:
    return load_head(tiny_llama_source)


@pytest.fixture
def executor(llama_shards: tuple[Shard, Shard, Shard]) -> ShardExecutor:
    return ShardExecutor(llama_shards[0], budget_tokens=100, ttl_s=60.0, clock=FakeClock())


def hidden(tokens: int, batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, tokens, HIDDEN, generator=torch.Generator().manual_seed(tokens)).to(dtype)


def positions(start: int, count: int) -> torch.Tensor:
    return torch.arange(start, start + count)


Hop = Callable[[ShardExecutor, str, torch.Tensor, torch.Tensor], torch.Tensor]


def generate_through(
    executors: Sequence[ShardExecutor], head: Head, prompt: Sequence[int], new_tokens: int,
    hop: Hop = lambda ex, sid, h, pos: ex.forward(sid, h, pos),
) -> list[int]:
    """Greedy decoding where every hop is an executor session, as a node would serve it; `hop` runs one."""
    sessions = [ex.open_session(len(prompt) + new_tokens).session_id for ex in executors]
    ids = torch.tensor([list(prompt)])
    start, out = 0, []
    with torch.inference_mode():
        while len(out) < new_tokens:
            h = head.embed(ids)
            for ex, sid in zip(executors, sessions, strict=True):
                h = hop(ex, sid, h, positions(start, ids.shape[1]))
            token = int(head.logits(h[:, -1:])[0, -1].argmax())
            out.append(token)
            start += ids.shape[1]
            ids = torch.tensor([[token]])
    for ex, sid in zip(executors, sessions, strict=True):
        ex.close_session(sid)
    return out


# ------------------------------------------------------------------------------------------ exactness


def test_generation_through_executors_matches_transformers(
    tiny_llama_source: ModelSource, llama_shards: tuple[Shard, Shard, Shard], head: Head
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_source.path, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = model.generate(
            torch.tensor([PROMPT]),
            attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
            do_sample=False,
            max_new_tokens=24,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(PROMPT) :].tolist()
    executors = [ShardExecutor(s, budget_tokens=1000) for s in llama_shards]
    assert generate_through(executors, head, PROMPT, 24) == expected
    assert all(ex.in_use_tokens == 0 and ex.sessions() == [] for ex in executors)


def test_prefill_then_decode_equals_one_long_prefill(executor: ShardExecutor) -> None:
    x = hidden(6)
    a = executor.open_session(6).session_id
    b = executor.open_session(6).session_id
    whole = executor.forward(a, x, positions(0, 6))
    first = executor.forward(b, x[:, :4], positions(0, 4))
    rest = [executor.forward(b, x[:, i : i + 1], positions(i, 1)) for i in (4, 5)]
    assert torch.allclose(torch.cat([first, *rest], dim=1), whole, rtol=1e-4, atol=1e-4)
    assert executor.session(b).length == 6



def test_prompts_prefilled_together_equal_alone(executor: ShardExecutor) -> None:
    """Prompts of 5, 2 and 7 tokens in one batch: each output and each cache (the next decode) as when alone;
    the prompt of a session that has computed already and that of an unknown session fail alone."""
    prompts = [hidden(n) * (1 + n) for n in (5, 2, 7)]
    solo = [executor.open_session(8).session_id for _ in prompts]
    together = [executor.open_session(8).session_id for _ in prompts]
    used = executor.open_session(8).session_id
    executor.forward(used, hidden(3), positions(0, 3))
    alone = [executor.forward(sid, x, positions(0, x.shape[1])) for sid, x in zip(solo, prompts, strict=True)]
    results = executor.prefill_batch([*((sid, x, 0) for sid, x in zip(together, prompts, strict=True)),
                                      (used, hidden(3), 0), ("nobody", hidden(2), 0)])
    for got, want in zip(results[:3], alone, strict=True):
        assert isinstance(got, torch.Tensor) and got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert isinstance(results[3], PositionMismatch) and isinstance(results[4], UnknownSession)
    assert [executor.session(sid).length for sid in together] == [5, 2, 7]
    assert executor.session(used).length == 3
    step = hidden(1)
    for a, b, x in zip(solo, together, prompts, strict=True):
        n = x.shape[1]
        assert torch.allclose(executor.forward(b, step, positions(n, 1)), executor.forward(a, step, positions(n, 1)),
                              rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ errors


def test_unknown_session(executor: ShardExecutor) -> None:
    with pytest.raises(UnknownSession) as info:
        executor.forward("nope", hidden(1), positions(0, 1))
    assert info.value.session_id == "nope"
    with pytest.raises(UnknownSession):
        executor.close_session("nope")
    with pytest.raises(UnknownSession):
        executor.session("nope")


def test_closed_session_is_unknown(executor: ShardExecutor) -> None:
    sid = executor.open_session(8).session_id
    executor.close_session(sid)
    with pytest.raises(UnknownSession):
        executor.forward(sid, hidden(1), positions(0, 1))
    with pytest.raises(UnknownSession):
        executor.close_session(sid)


def test_session_ids_are_unique(executor: ShardExecutor) -> None:
    executor.open_session(4, session_id="0xabc")
    with pytest.raises(SessionExists) as info:
        executor.open_session(4, session_id="0xabc")
    assert info.value.session_id == "0xabc"
    assert len({executor.open_session(1).session_id for _ in range(10)}) == 10


def test_length_exceeded(executor: ShardExecutor) -> None:
    sid = executor.open_session(5).session_id
    executor.forward(sid, hidden(4), positions(0, 4))
    with pytest.raises(LengthExceeded) as info:
        executor.forward(sid, hidden(2), positions(4, 2))
    assert (info.value.session_id, info.value.max_length, info.value.requested) == (sid, 5, 6)
    executor.forward(sid, hidden(1), positions(4, 1))  # the session is still usable up to its length
    with pytest.raises(LengthExceeded):
        executor.forward(sid, hidden(1), positions(5, 1))


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1, 3, 128), (1, None, HIDDEN)),
        ((2, 3, HIDDEN), (1, None, HIDDEN)),
        ((3, HIDDEN), (1, None, HIDDEN)),
        ((1, 0, HIDDEN), (1, None, HIDDEN)),
    ],
)
def test_hidden_shape_mismatch(executor: ShardExecutor, shape: tuple[int, ...], expected: tuple) -> None:
    sid = executor.open_session(8).session_id
    with pytest.raises(ShapeMismatch) as info:
        executor.forward(sid, torch.zeros(shape), positions(0, 3))
    assert info.value.expected == expected and info.value.got == shape


def test_positions_shape_mismatch(executor: ShardExecutor) -> None:
    sid = executor.open_session(8).session_id
    with pytest.raises(ShapeMismatch) as info:
        executor.forward(sid, hidden(3), positions(0, 2))
    assert (info.value.expected, info.value.got) == ((3,), (2,))
    with pytest.raises(ShapeMismatch):
        executor.forward(sid, hidden(3), positions(0, 3).view(1, 3))


def test_dtype_mismatch(executor: ShardExecutor) -> None:
    sid = executor.open_session(8).session_id
    with pytest.raises(DtypeMismatch) as info:
        executor.forward(sid, hidden(2, dtype=torch.bfloat16), positions(0, 2))
    assert (info.value.expected, info.value.got) == ("float32", "bfloat16")
    with pytest.raises(DtypeMismatch) as info:
        executor.forward(sid, hidden(2), positions(0, 2).float())
    assert (info.value.expected, info.value.got) == ("int64", "float32")


def test_positions_must_continue_the_cache(executor: ShardExecutor) -> None:
    sid = executor.open_session(16).session_id
    with pytest.raises(PositionMismatch) as info:
        executor.forward(sid, hidden(2), positions(1, 2))
    assert (info.value.session_id, info.value.expected_start, info.value.got) == (sid, 0, (1, 2))
    executor.forward(sid, hidden(3), positions(0, 3))
    for bad in (positions(2, 1), positions(4, 1), torch.tensor([3, 5])):
        with pytest.raises(PositionMismatch) as info:
            executor.forward(sid, hidden(len(bad)), bad)
        assert info.value.expected_start == 3
    assert executor.session(sid).length == 3  # rejected calls leave the cache untouched


def test_cache_budget(executor: ShardExecutor) -> None:
    a = executor.open_session(60).session_id
    executor.open_session(30)
    with pytest.raises(CacheBudgetExceeded) as info:
        executor.open_session(20)
    assert (info.value.budget_tokens, info.value.in_use, info.value.requested) == (100, 90, 20)
    with pytest.raises(CacheBudgetExceeded) as info:
        executor.open_session(6, batch_size=2)
    assert info.value.requested == 12
    executor.close_session(a)
    assert executor.in_use_tokens == 30 and executor.free_tokens == 70
    executor.open_session(70)
    with pytest.raises(CacheBudgetExceeded):
        executor.open_session(1)


def test_batched_session(executor: ShardExecutor) -> None:
    info = executor.open_session(4, batch_size=2)
    assert info.reserved_tokens == 8
    out = executor.forward(info.session_id, hidden(3, batch=2), positions(0, 3))
    assert out.shape == (2, 3, HIDDEN)


def test_invalid_arguments(llama_shards: tuple[Shard, Shard, Shard]) -> None:
    with pytest.raises(ValueError):
        ShardExecutor(llama_shards[0], budget_tokens=0)
    with pytest.raises(ValueError):
        ShardExecutor(llama_shards[0], budget_tokens=10, ttl_s=0)
    with pytest.raises(ValueError):
        ShardExecutor(llama_shards[0], budget_tokens=10).open_session(0)


# ------------------------------------------------------------------------------------------ TTL


def test_idle_sessions_are_evicted(llama_shards: tuple[Shard, Shard, Shard]) -> None:
    clock = FakeClock()
    ex = ShardExecutor(llama_shards[0], budget_tokens=20, ttl_s=10.0, clock=clock)
    idle = ex.open_session(10).session_id
    busy = ex.open_session(10).session_id
    clock.now += 8
    ex.forward(busy, hidden(1), positions(0, 1))
    clock.now += 5  # idle: 13 s since open; busy: 5 s since its forward
    assert ex.evict_idle() == [idle]
    assert [s.session_id for s in ex.sessions()] == [busy]
    with pytest.raises(UnknownSession):
        ex.forward(idle, hidden(1), positions(0, 1))
    clock.now += 11
    assert ex.open_session(20).max_length == 20  # opening sweeps idle sessions before checking the budget
    assert ex.in_use_tokens == 20


def test_failed_forward_drops_the_session(
    llama_shards: tuple[Shard, Shard, Shard], monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = ShardExecutor(llama_shards[1], budget_tokens=10)
    sid = ex.open_session(10).session_id

    def explode(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(type(llama_shards[1]), "forward", explode)
    with pytest.raises(RuntimeError):
        ex.forward(sid, hidden(2), positions(0, 2))
    assert ex.in_use_tokens == 0
    with pytest.raises(UnknownSession):
        ex.session(sid)


# ------------------------------------------------------------------------------------------ threads


def run_chunked(ex: ShardExecutor, x: torch.Tensor) -> torch.Tensor:
    """A session that prefills two tokens and then decodes the rest one by one."""
    sid = ex.open_session(x.shape[1]).session_id
    parts = [ex.forward(sid, x[:, :2], positions(0, 2))]
    parts += [ex.forward(sid, x[:, j : j + 1], positions(j, 1)) for j in range(2, x.shape[1])]
    ex.close_session(sid)
    return torch.cat(parts, dim=1)


def test_concurrent_sessions_match_sequential_results(llama_shards: tuple[Shard, Shard, Shard]) -> None:
    ex = ShardExecutor(llama_shards[1], budget_tokens=10_000)
    inputs = [hidden(4 + i) for i in range(6)]
    sequential = [run_chunked(ex, x) for x in inputs]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = run_chunked(ex, inputs[i])
        except BaseException as err:  # collected and re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, expected in enumerate(sequential):
        assert torch.allclose(results[i], expected, rtol=1e-6, atol=1e-6)
    assert ex.in_use_tokens == 0


def test_concurrent_opens_never_overcommit_the_budget(llama_shards: tuple[Shard, Shard, Shard]) -> None:
    ex = ShardExecutor(llama_shards[2], budget_tokens=50)
    opened: list[str] = []
    refused: list[CacheBudgetExceeded] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            sid = ex.open_session(7).session_id
            with lock:
                opened.append(sid)
        except CacheBudgetExceeded as err:
            with lock:
                refused.append(err)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 7 and len(refused) == 13
    assert ex.in_use_tokens == 49


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_hops_through_the_wire_codec_match_transformers(tiny_llama_source: ModelSource) -> None:
    """A node on CUDA in bf16, as `p2pnode serve --device cuda --dtype bfloat16` runs it: every hop's input
    arrives through the wire codec as a CPU tensor and its output leaves through it, as bytes."""
    from p2pllm import codec

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_source.path, dtype=torch.bfloat16).to("cuda").eval()
    with torch.inference_mode():
        expected = model.generate(
            torch.tensor([PROMPT], device="cuda"),
            attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long, device="cuda"),
            do_sample=False, max_new_tokens=16, eos_token_id=None, pad_token_id=0,
        )[0, len(PROMPT) :].tolist()
    head = load_head(tiny_llama_source, device="cuda", dtype="bfloat16")
    executors = [ShardExecutor(load_shard(tiny_llama_source, a, b, device="cuda", dtype="bfloat16"), budget_tokens=100)
                 for a, b in ((0, 3), (3, 8))]

    def over_the_wire(ex: ShardExecutor, sid: str, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = codec.decode(codec.encode(h), expected_dtype=torch.bfloat16, expected_trailing_dim=HIDDEN)
        assert x.device.type == "cpu"
        y = ex.forward(sid, x, pos)
        assert y.device.type == "cuda" and y.dtype == torch.bfloat16
        assert torch.equal(codec.decode(codec.encode(y), expected_dtype=torch.bfloat16).to("cuda"), y)
        return y

    assert generate_through(executors, head, PROMPT, 16, over_the_wire) == expected
