"""A spending budget for a long-running client (the gateway's `--budget`): before a generation starts, the most
it can cost (route price × (prompt + max new tokens), plus what spot checks may add) is held against what is
left; when it ends, the hold is replaced by what it actually cost. A generation whose most possible cost does
not fit is refused before anything is paid. Thread-safe; pure bookkeeping, no I/O."""

from __future__ import annotations

import threading
from dataclasses import dataclass


class OverBudget(Exception):
    """The generation's most possible cost does not fit in what is left of the budget."""

    def __init__(self, needed_wei: int, left_wei: int, budget_wei: int) -> None:
        super().__init__(f"this request may cost up to {needed_wei} wei; {left_wei} wei of the {budget_wei} wei "
                         "budget is left")
        self.needed_wei = needed_wei
        self.left_wei = left_wei
        self.budget_wei = budget_wei


@dataclass(frozen=True)
class Hold:
    amount_wei: int


class Budget:
    """`total_wei` None: unlimited (spending is still counted)."""

    def __init__(self, total_wei: int | None) -> None:
        if total_wei is not None and total_wei < 0:
            raise ValueError(f"a budget cannot be negative, got {total_wei}")
        self.total_wei = total_wei
        self.spent_wei = 0
        self.held_wei = 0
        self._lock = threading.Lock()

    @property
    def left_wei(self) -> int | None:
        """What new generations may still hold (None: unlimited)."""
        with self._lock:
            return None if self.total_wei is None else self.total_wei - self.spent_wei - self.held_wei

    def hold(self, amount_wei: int) -> Hold:
        """Reserve `amount_wei` for one generation, or raise OverBudget."""
        if amount_wei < 0:
            raise ValueError(f"a hold cannot be negative, got {amount_wei}")
        with self._lock:
            if self.total_wei is not None:
                left = self.total_wei - self.spent_wei - self.held_wei
                if amount_wei > left:
                    raise OverBudget(amount_wei, left, self.total_wei)
            self.held_wei += amount_wei
        return Hold(amount_wei)

    def settle(self, hold: Hold, cost_wei: int) -> None:
        """The generation behind `hold` cost `cost_wei` (it may exceed the hold only by what failover added)."""
        if cost_wei < 0:
            raise ValueError(f"a cost cannot be negative, got {cost_wei}")
        with self._lock:
            self.held_wei -= hold.amount_wei
            self.spent_wei += cost_wei
