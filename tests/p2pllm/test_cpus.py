"""CPU lists parse and format as `taskset -c` writes them; pinning really changes every thread's affinity."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pllm.cpus import (
    CpuListError,
    allowed_cpus,
    format_cpu_list,
    parse_cpu_list,
    parse_cpu_option,
    pin_process,
)


@pytest.mark.parametrize(("text", "cpus"), [
    ("0", {0}),
    ("0-3,6", {0, 1, 2, 3, 6}),
    (" 1 , 2 ", {1, 2}),
    ("5-5", {5}),
    ("2,0-1", {0, 1, 2}),
])
def test_parse_cpu_list(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    (" ", "empty"),
    ("a", "bad CPU list item 'a'"),
    ("1-", "bad CPU list item '1-'"),
    ("-1", "bad CPU list item '-1'"),
    ("0,,1", "bad CPU list item ''"),
    ("3-1", "descending range '3-1'"),
    ("5000", "above 4095"),
])
def test_parse_cpu_list_rejects(text: str, message: str) -> None:
    with pytest.raises(CpuListError, match=message.replace("(", r"\(")):
        parse_cpu_list(text)


def test_parse_cpu_option() -> None:
    assert parse_cpu_option("none") is None
    assert parse_cpu_option("auto") == {max(os.sched_getaffinity(0))}
    assert parse_cpu_option("0-1") == {0, 1}
    with pytest.raises(CpuListError):
        parse_cpu_option("automatic")


def test_format_cpu_list() -> None:
    assert format_cpu_list({0, 1, 2, 5}) == "0-2,5"
    assert format_cpu_list(frozenset({3})) == "3"
    with pytest.raises(CpuListError):
        format_cpu_list(set())


@given(st.frozensets(st.integers(0, 300), min_size=1))
def test_format_then_parse_round_trips(cpus: frozenset[int]) -> None:
    text = format_cpu_list(cpus)
    assert parse_cpu_list(text) == cpus
    assert len(text.split(",")) <= len(cpus)


def _affinities() -> dict[int, set[int]]:
    return {int(t.name): os.sched_getaffinity(int(t.name)) for t in Path("/proc/self/task").iterdir()}


@pytest.fixture
def restore_affinity() -> Iterator[frozenset[int]]:
    before = allowed_cpus()
    try:
        yield before
    finally:
        pin_process(before)


def test_pin_process_moves_every_thread_and_later_ones(restore_affinity: frozenset[int]) -> None:
    target = frozenset({max(restore_affinity)})
    release = threading.Event()
    earlier = threading.Thread(target=release.wait, daemon=True)
    earlier.start()
    try:
        pin_process(target)
        later_affinity: list[set[int]] = []
        later = threading.Thread(target=lambda: later_affinity.append(os.sched_getaffinity(0)))
        later.start()
        later.join()
        assert later_affinity == [set(target)]
        assert all(cpus == set(target) for cpus in _affinities().values())
        pin_process(restore_affinity)  # widening again is allowed
        assert all(cpus == set(restore_affinity) for cpus in _affinities().values())
    finally:
        release.set()
        earlier.join()


def test_pin_process_refuses_cpus_the_machine_lacks(restore_affinity: frozenset[int]) -> None:
    missing = frozenset({(os.cpu_count() or 1) + 64})
    with pytest.raises(CpuListError, match="cannot run on CPUs"):
        pin_process(missing)
    assert allowed_cpus() == restore_affinity
    with pytest.raises(CpuListError, match="empty"):
        pin_process(frozenset())
