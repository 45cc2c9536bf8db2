"""The gateway's spending budget: holds refuse what does not fit, settling replaces a hold by the real cost,
and under any sequence spent + held never exceeds the budget through holds alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.budget import Budget, OverBudget


def test_hold_settle_and_refuse() -> None:
    budget = Budget(1000)
    first = budget.hold(600)
    assert budget.left_wei == 400
    with pytest.raises(OverBudget) as refused:
        budget.hold(401)
    assert (refused.value.needed_wei, refused.value.left_wei, refused.value.budget_wei) == (401, 400, 1000)
    budget.settle(first, 250)
    assert (budget.spent_wei, budget.held_wei, budget.left_wei) == (250, 0, 750)
    budget.settle(budget.hold(750), 750)
    assert budget.left_wei == 0
    with pytest.raises(OverBudget):
        budget.hold(1)
    budget.settle(budget.hold(0), 0)


def test_unlimited_counts_spending() -> None:
    budget = Budget(None)
    budget.settle(budget.hold(10**30), 5)
    assert budget.left_wei is None and budget.spent_wei == 5


def test_negative_amounts_are_refused() -> None:
    with pytest.raises(ValueError):
        Budget(-1)
    with pytest.raises(ValueError):
        Budget(5).hold(-1)


@given(st.integers(0, 10**6), st.lists(st.tuples(st.integers(0, 10**5), st.floats(0, 1)), max_size=40))
def test_holds_never_overcommit(total: int, requests: list[tuple[int, float]]) -> None:
    budget = Budget(total)
    for amount, used in requests:
        try:
            hold = budget.hold(amount)
        except OverBudget:
            assert amount > total - budget.spent_wei - budget.held_wei
            continue
        assert budget.spent_wei + budget.held_wei <= total
        budget.settle(hold, int(amount * used))
        assert budget.spent_wei <= total and budget.held_wei == 0
