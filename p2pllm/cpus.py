"""CPU affinity: parse a Linux CPU list (``"0"``, ``"0-3,6"``) and pin the whole current process to it.

Why a node or client would pin itself: a route is a pipeline, so for one generation only one process computes at
a time. When several nodes and a client share a small host, keeping them all on the same core turns each hop's
hand-off into a switch on one CPU instead of waking another (possibly halted) one, and the caches stay warm.
`parse_cpu_list` is pure; `pin_process` is the only function here that touches the OS."""

from __future__ import annotations

import os
from pathlib import Path

MAX_CPU = 4095  # Linux's CONFIG_NR_CPUS ceiling; anything above is a typo


class CpuListError(ValueError):
    """A CPU list that does not parse, or names CPUs this process may not use."""


def parse_cpu_list(text: str) -> frozenset[int]:
    """``"0-2,5"`` -> {0, 1, 2, 5}; ranges are inclusive, as in `taskset -c` and /proc."""
    cpus: set[int] = set()
    if not text.strip():
        raise CpuListError("empty CPU list")
    for part in text.split(","):
        item = part.strip()
        low_text, sep, high_text = item.partition("-")
        if not low_text.isdigit() or (sep and not high_text.isdigit()):
            raise CpuListError(f"bad CPU list item {item!r} in {text!r} (expected N or N-M, e.g. 0-3,6)")
        low, high = int(low_text), int(high_text) if sep else int(low_text)
        if high < low:
            raise CpuListError(f"descending range {item!r} in {text!r}")
        if high > MAX_CPU:
            raise CpuListError(f"CPU {high} in {text!r} is above {MAX_CPU}")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The inverse of `parse_cpu_list`, with ranges collapsed: {0, 1, 2, 5} -> ``"0-2,5"``."""
    if not cpus:
        raise CpuListError("empty CPU set")
    ordered = sorted(cpus)
    runs: list[tuple[int, int]] = []
    for cpu in ordered:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], cpu)
        else:
            runs.append((cpu, cpu))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def parse_cpu_option(text: str) -> frozenset[int] | None:
    """A benchmark's ``--cpus``: ``auto`` = the last CPU this process may use, ``none`` = no pinning (None),
    otherwise a CPU list."""
    if text == "none":
        return None
    if text == "auto":
        return frozenset({max(allowed_cpus())})
    return parse_cpu_list(text)


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process runs on now (its affinity)."""
    return frozenset(os.sched_getaffinity(0))


def pin_process(cpus: frozenset[int]) -> None:
    """Restrict every thread of this process (and threads it starts later) to `cpus`; may also widen a narrower
    affinity inherited from the parent, within what the OS (cpuset) permits."""
    if not cpus:
        raise CpuListError("empty CPU set")
    for task in _thread_ids():
        try:
            os.sched_setaffinity(task, cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except OSError as exc:
            raise CpuListError(f"cannot run on CPUs {format_cpu_list(cpus)}: {exc.strerror} "
                               f"(this machine has {os.cpu_count()} CPUs, numbered from 0)") from exc


def _thread_ids() -> list[int]:
    tasks = Path("/proc/self/task")
    return [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
