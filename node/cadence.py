"""Which sessions a node expects a decode step from soon: each session's cadence (the gaps between its decode
steps, smoothed), and the rule that forms waves from it. Pure logic over times the caller passes in; no clock,
no threads, no I/O.

A session is *expected* from its second decode step on, for as long as its last step came less than
`2 × its smoothed gap + slack` ago: a session that stops stepping (its client paused, finished or died) drops
out after missing about one step, so it holds no wave back for longer than that.

`wave_size(expected, fraction, cap)` is how many ready sessions start a round: `ceil(fraction × expected)`,
at least 1 and at most `cap`.
"""

from __future__ import annotations

import math
from collections.abc import Container

SMOOTHING = 0.3  # weight of the newest gap in a session's smoothed gap
FORGET_S = 60.0  # a session silent this long is dropped from the books


class Cadence:
    """Per-session smoothed gaps between decode steps."""

    def __init__(self, slack_s: float = 0.0) -> None:
        if slack_s < 0:
            raise ValueError(f"slack_s must be >= 0, got {slack_s}")
        self.slack_s = slack_s
        self._last: dict[str, float] = {}
        self._gap: dict[str, float] = {}

    def note(self, session_id: str, now: float) -> None:
        """A decode step of `session_id` arrived at `now`."""
        last = self._last.get(session_id)
        if last is not None:
            gap = max(now - last, 0.0)
            old = self._gap.get(session_id)
            self._gap[session_id] = gap if old is None else (1 - SMOOTHING) * old + SMOOTHING * gap
        self._last[session_id] = now

    def gap(self, session_id: str) -> float | None:
        return self._gap.get(session_id)

    def expected(self, now: float, open_sessions: Container[str]) -> set[str]:
        """The sessions of `open_sessions` that keep their cadence at `now` (forgetting long-silent ones)."""
        out: set[str] = set()
        for session_id, last in list(self._last.items()):
            silent = now - last
            if silent > FORGET_S or session_id not in open_sessions:
                del self._last[session_id]
                self._gap.pop(session_id, None)
                continue
            gap = self._gap.get(session_id)
            if gap is not None and silent <= 2 * gap + self.slack_s:
                out.add(session_id)
        return out

    def __len__(self) -> int:
        return len(self._last)


def wave_size(expected: int, fraction: float, cap: int) -> int:
    """Ready sessions that start a round when `expected` sessions keep their cadence."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, min(cap, math.ceil(fraction * expected - 1e-9)))
