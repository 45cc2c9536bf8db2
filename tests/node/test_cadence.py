"""Session cadence and wave size: literals for the rules, properties for their bounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.cadence import FORGET_S, Cadence, wave_size

OPEN = frozenset({"a", "b", "c"})


def test_a_session_is_expected_from_its_second_step_while_it_keeps_its_cadence() -> None:
    cadence = Cadence(slack_s=0.125)
    cadence.note("a", 10.0)
    assert cadence.expected(10.01, OPEN) == set()  # one step: no cadence yet
    cadence.note("a", 10.25)
    assert cadence.gap("a") == 0.25
    assert cadence.expected(10.5, OPEN) == {"a"}
    assert cadence.expected(10.25 + 2 * 0.25 + 0.125, OPEN) == {"a"}  # the bound itself
    assert cadence.expected(10.25 + 2 * 0.25 + 0.126, OPEN) == set()  # missed about one step: not waited for


def test_the_gap_is_smoothed() -> None:
    cadence = Cadence()
    for t in (0.0, 0.1, 0.2, 1.2):
        cadence.note("a", t)
    assert cadence.gap("a") == pytest.approx(0.7 * 0.1 + 0.3 * 1.0)


def test_closed_and_long_silent_sessions_are_forgotten() -> None:
    cadence = Cadence()
    for t in (0.0, 0.1):
        cadence.note("a", t)
        cadence.note("b", t)
        cadence.note("c", t)
    assert cadence.expected(0.15, frozenset({"a", "c"})) == {"a", "c"}  # b closed
    assert len(cadence) == 2
    cadence.note("a", FORGET_S)
    assert cadence.expected(FORGET_S + 0.5, OPEN) == {"a"}  # a stepped again (its gap is now long)
    assert len(cadence) == 1  # c, silent for FORGET_S, is dropped from the books


def test_wave_size_literals() -> None:
    assert wave_size(0, 0.5, 32) == 1
    assert wave_size(1, 0.5, 32) == 1
    assert wave_size(2, 0.5, 32) == 1
    assert wave_size(3, 0.5, 32) == 2
    assert wave_size(8, 0.5, 32) == 4
    assert wave_size(8, 1.0, 32) == 8
    assert wave_size(100, 0.5, 32) == 32
    with pytest.raises(ValueError):
        wave_size(4, 0.0, 32)
    with pytest.raises(ValueError):
        wave_size(4, 1.5, 32)
    with pytest.raises(ValueError):
        Cadence(slack_s=-1)


@given(st.integers(0, 500), st.floats(0.01, 1.0), st.integers(1, 64))
def test_wave_size_bounds(expected: int, fraction: float, cap: int) -> None:
    size = wave_size(expected, fraction, cap)
    assert 1 <= size <= cap
    assert size <= max(expected, 1)
    assert size >= min(cap, math.floor(fraction * expected))
    assert wave_size(expected + 1, fraction, cap) >= size  # more sessions never shrink a wave


@given(st.lists(st.floats(0.001, 5.0), min_size=1, max_size=30))
def test_the_smoothed_gap_stays_within_the_gaps_seen(gaps: list[float]) -> None:
    cadence = Cadence()
    t = 0.0
    cadence.note("a", t)
    for gap in gaps:
        t += gap
        cadence.note("a", t)
    got = cadence.gap("a")
    assert got is not None and min(gaps) - 1e-9 <= got <= max(gaps) + 1e-9
    assert cadence.expected(t, OPEN) == {"a"}  # just stepped: expected

