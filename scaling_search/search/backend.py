"""What the runner asks of a backend: run a plan, return records.

The runner plans (the ordered units, each as its planned ``TrialRecord``),
hands the plan to a backend and reports on the records it gets back; it does
not know which backend ran them. Stopping, resuming and progress are the
same on every backend because they live in the runner and in ``Hooks``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..records import TrialRecord

EpochReport = Callable[[int, float, float], None]  # (epoch from 0, train loss, held-out top-1); may raise TrialPruned
Train = Callable[[TrialRecord, EpochReport | None], TrialRecord]  # planned record -> finished record


@dataclass(frozen=True)
class Hooks:
    """The runner's side of an execution: the stop request and the per-trial callbacks."""

    stop: threading.Event  # set: start no new unit, finish those under way
    on_done: Callable[[TrialRecord], None]  # each unit this process finished, as it finishes
    on_wait: Callable[[int], None] = lambda running: None  # queue empty, units running elsewhere


class Backend(Protocol):
    name: str

    def finished(self, plan: Sequence[TrialRecord]) -> set[str]:
        """Unit keys of the plan that already have a result (what a resumed run skips)."""
        ...

    def execute(self, plan: Sequence[TrialRecord], train: Train, hooks: Hooks) -> list[TrialRecord]:
        """Run the plan's units that have no result yet, in plan order, until done or stopped.

        Returns one record per unit of the plan: its result, or the planned
        record (WAITING) for a unit that has none yet.
        """
        ...

    def records(self, plan: Sequence[TrialRecord]) -> list[TrialRecord]:
        """The stored results over the plan, without running anything (``report``)."""
        ...


def merge(plan: Sequence[TrialRecord], found: dict[str, TrialRecord]) -> list[TrialRecord]:
    """One record per planned unit: what a backend found for it, else the plan itself."""
    return [found.get(p.unit, p) for p in plan]
