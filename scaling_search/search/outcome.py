"""How a run ended: its units complete, failed and waiting, the failures by reason, and the exit status.

A failure is the candidate's when the network itself diverged or did not fit
in memory alone at the study's batch size: that is a result. Anything else
(an unexpected error stored as a FAIL, a device error or a stopped worker that
left units waiting) is the machine's, and the run says so with a non-zero exit
status, so a pipeline that runs the command does not read it as a success.
Pure: no torch, no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..records import TrialRecord, TrialState

# Exit statuses of ``run`` (README, "Failures and interruptions"); 2 is bad input (errors.UsageError).
EXIT_OK = 0
EXIT_NO_CANDIDATE = 1  # no candidate completed: every trial failed as the candidate's own result
EXIT_MACHINE = 3  # failures that are not the candidate's: resume, or look at the machine
EXIT_STOPPED = 130  # Ctrl-C: the trials under way finished
EXIT_TERMINATED = 143  # SIGTERM (a scheduler): the trials under way abandoned (stopping.py)

DIVERGED = "diverged"
OUT_OF_MEMORY = "out of memory"
CANDIDATE_REASONS = frozenset({DIVERGED, OUT_OF_MEMORY})


def failure_reason(text: str | None) -> str:
    """The group of a FAIL's ``failure`` text (the trainer's and the backends' wording)."""
    t = (text or "").strip().lower()
    if t.startswith("training loss became"):
        return DIVERGED
    if t.startswith("out of memory"):
        return OUT_OF_MEMORY
    if t.startswith("ray trial error"):
        return "ray trial error"
    return "unexpected error"


@dataclass(frozen=True)
class Outcome:
    total: int
    complete: int
    failed: int
    waiting: int  # not trained yet (WAITING or RUNNING): a resume trains them
    pruned: int
    failures: tuple[tuple[str, int], ...]  # (reason, count), most frequent first
    machine: tuple[str, ...]  # the machine's failures this run met (a stopped worker, a device error)
    candidate_completed: bool  # some unit of the full schedule is COMPLETE
    stopped: bool
    terminated: bool = False  # stopped by SIGTERM

    @property
    def finished(self) -> int:
        return self.complete + self.failed + self.pruned

    @property
    def not_the_candidates(self) -> int:
        """FAILs whose reason is not the candidate's."""
        return sum(n for reason, n in self.failures if reason not in CANDIDATE_REASONS)

    @property
    def status(self) -> int:
        if self.stopped:
            return EXIT_TERMINATED if self.terminated else EXIT_STOPPED
        if self.machine or self.not_the_candidates:
            return EXIT_MACHINE
        if not self.candidate_completed:
            return EXIT_NO_CANDIDATE
        return EXIT_OK

    @property
    def why(self) -> str:
        """The exit status in words."""
        status = self.status
        if status == EXIT_STOPPED:
            return "stopped early"
        if status == EXIT_TERMINATED:
            return "terminated by SIGTERM"
        if status == EXIT_MACHINE:
            parts = []
            if self.not_the_candidates:
                parts.append(f"{self.not_the_candidates} trial(s) failed for reasons that are not the candidate's")
            if self.machine:
                parts.append(f"the machine failed {len(self.machine)} time(s)")
            return "; ".join(parts)
        if status == EXIT_NO_CANDIDATE:
            return "no candidate completed"
        return "finished"

    def line(self) -> str:
        """The run's final count, e.g. '12 of 12 trials finished: 0 complete, 12 failed (out of memory 12), ...'."""
        failed = f"{self.failed} failed"
        if self.failures:
            failed += f" ({', '.join(f'{reason} {n}' for reason, n in self.failures)})"
        pruned = f", {self.pruned} pruned" if self.pruned else ""
        return (
            f"{self.finished} of {self.total} trials finished: {self.complete} complete, {failed}{pruned}, "
            f"{self.waiting} waiting; exit status {self.status} ({self.why})"
        )

    def to_json(self) -> dict:
        return {
            "exit_status": self.status,
            "ended": self.why,
            "complete": self.complete,
            "failed": self.failed,
            "waiting": self.waiting,
            "pruned": self.pruned,
            "failures_by_reason": dict(self.failures),
            "machine_failures": list(self.machine),
        }


def outcome_of(
    records: Sequence[TrialRecord], *, machine: Sequence[str] = (), stopped: bool = False, terminated: bool = False
) -> Outcome:
    """Count ``records`` (every unit of every rung reached) and read the exit status from them."""
    states = Counter(r.state for r in records)
    reasons = Counter(failure_reason(r.failure) for r in records if r.state is TrialState.FAIL)
    return Outcome(
        total=len(records),
        complete=states[TrialState.COMPLETE],
        failed=states[TrialState.FAIL],
        waiting=states[TrialState.WAITING] + states[TrialState.RUNNING],
        pruned=states[TrialState.PRUNED],
        failures=tuple(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        machine=tuple(machine),
        candidate_completed=any(r.state is TrialState.COMPLETE and r.rung is None for r in records),
        stopped=stopped,
        terminated=terminated,
    )
