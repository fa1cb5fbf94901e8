"""What a trial leaves behind: its state, its ``TrialRecord`` and the one
reader and writer of ``trials.csv``.

Every backend returns ``TrialRecord``s; ranking, report and plots read them.
The module sits low (it imports nothing of the package) so that the search
and analysis layers can both use it without importing each other.

``trials.csv`` encoding, one row per unit (candidate x seed), columns in
``COLUMNS`` order:

- ints (``seed``, ``epochs``, ``epochs_run``, ``resolution``, ``params``,
  ``macs``, ``attempts``) are written as integers, never ``1234.0``;
- floats with Python's shortest round-trip ``repr``;
- a missing value (accuracy of a trial that has not run, a failure reason of
  one that did not fail) is an empty field;
- the per-epoch lists ``epoch_accuracies`` and ``epoch_losses`` are JSON
  arrays of numbers, one column each (``[0.292, 0.345]``);
- ``state`` is a ``TrialState`` name.

The reader also reads files written before the ``candidate`` column existed
(it is derived from the coefficients) and integer columns written as floats.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import UsageError

TRIALS_CSV = "trials.csv"


class TrialState(str, Enum):
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    RUNNING = "RUNNING"
    WAITING = "WAITING"

    @property
    def finished(self) -> bool:
        """A result that stays: a resumed run does not train this unit again."""
        return self in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def candidate_key(alpha: float, beta: float, gamma: float) -> str:
    return f"a{alpha:g}-b{beta:g}-g{gamma:g}"


def unit_key(
    alpha: float, beta: float, gamma: float, seed: int, rung: int | None = None, fidelity: int | None = None
) -> str:
    """A unit's name; a shorter halving rung is its own unit (``-r0``), and so is the fidelity check's
    longer schedule (``-f3``: 3x the epochs); the search's full schedule has no suffix."""
    return (
        f"{candidate_key(alpha, beta, gamma)}-s{seed}"
        + ("" if rung is None else f"-r{rung}")
        + ("" if fidelity is None else f"-f{fidelity}")
    )


@dataclass(frozen=True)
class TrialRecord:
    """One unit (candidate x seed): what it is, what was trained, how it ended.

    The first block is known from the plan before any training, so waiting
    and pruned units carry it too.
    """

    alpha: float
    beta: float
    gamma: float
    seed: int
    epochs: int  # of the full schedule
    depth: float  # multipliers and resolution of the trained phi = 1 network
    width: float
    resolution: int
    params: int | None
    macs: int | None
    theoretical_ratio: float
    measured_ratio: float
    state: TrialState = TrialState.WAITING
    accuracy: float | None = None  # held-out top-1 after the last epoch run
    epochs_run: int = 0
    epoch_accuracies: tuple[float, ...] = ()
    epoch_losses: tuple[float, ...] = ()
    images_per_second: float | None = None
    wall_seconds: float | None = None
    device: str | None = None
    failure: str | None = None
    attempts: int = 0  # trainings started for this unit, over every run of the study
    # Synchronous halving: the index of a shorter rung (a complete schedule of ``epochs``);
    # None for the full schedule, which is what the ranking reads.
    rung: int | None = None
    # The real multipliers of the built network over the baseline (rounding included): blocks,
    # MACs-weighted channel ratio, input side. None in records of earlier releases.
    effective_alpha: float | None = None
    effective_beta: float | None = None
    effective_gamma: float | None = None
    # The fidelity check's longer schedule: its factor over the proxy's epochs; None for the search's units.
    fidelity: int | None = None

    @property
    def candidate(self) -> str:
        return candidate_key(self.alpha, self.beta, self.gamma)

    @property
    def unit(self) -> str:
        return unit_key(self.alpha, self.beta, self.gamma, self.seed, self.rung, self.fidelity)

    def replace(self, **changes: Any) -> TrialRecord:
        return dataclasses.replace(self, **changes)

    def row(self) -> dict[str, Any]:
        """The record as plain values, in ``COLUMNS`` order (lists stay lists)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(unit=self.unit, candidate=self.candidate, state=self.state.value)
        values["epoch_accuracies"] = list(self.epoch_accuracies)
        values["epoch_losses"] = list(self.epoch_losses)
        return {c: values[c] for c in COLUMNS}


COLUMNS = (
    "unit",
    "candidate",
    "alpha",
    "beta",
    "gamma",
    "seed",
    "state",
    "accuracy",
    "epochs_run",
    "epochs",
    "depth",
    "width",
    "resolution",
    "params",
    "macs",
    "theoretical_ratio",
    "measured_ratio",
    "effective_alpha",
    "effective_beta",
    "effective_gamma",
    "images_per_second",
    "wall_seconds",
    "device",
    "failure",
    "epoch_accuracies",
    "epoch_losses",
    "attempts",
    "rung",
    "fidelity",
)
# What each column of trials.csv means (written into every run folder's COLUMNS.md).
COLUMN_DESCRIPTIONS = {
    "unit": "one trial's key: candidate and seed, e.g. a1-b1.1-g1.3-s0",
    "candidate": "the candidate's key, a{alpha}-b{beta}-g{gamma}: group by it to average over seeds",
    "alpha": "depth coefficient of the candidate (phi = 1 multiplies the baseline's depth by alpha)",
    "beta": "width coefficient (channels times beta, rounded to multiples of 8)",
    "gamma": "resolution coefficient (input side times gamma, rounded to constraint.resolution_multiple)",
    "seed": "training seed of this trial (int); a race adds the next unused seeds round by round, for the candidates "
    "still in contention only",
    "state": "COMPLETE, PRUNED (stopped early by the asynchronous pruning of earlier releases), FAIL (failure "
    "says why), RUNNING or WAITING (not trained yet)",
    "accuracy": "held-out top-1 accuracy (0..1) after the last epoch run; empty when the trial has not run",
    "epochs_run": "epochs this trial trained (fewer than epochs when pruned) (int)",
    "epochs": "epochs of the full proxy schedule (int)",
    "depth": "depth multiplier of the trained phi = 1 network over EfficientNet-B0's stage table",
    "width": "width multiplier of the trained phi = 1 network",
    "resolution": "input side in pixels the network was trained and scored at (int)",
    "params": "parameters of the trained network, counted on the built model (int, every row)",
    "macs": "multiply-adds of one forward pass at resolution, conv + linear (int, every row)",
    "theoretical_ratio": "alpha * beta^2 * gamma^2: the FLOPs multiplier the compound rule promises",
    "measured_ratio": "MACs of the rounded phi = 1 network over the baseline's, at the proxy's resolution",
    "effective_alpha": "the depth the network really has over the baseline: its MBConv blocks over the baseline's "
    "(per-stage rounding makes it differ from alpha)",
    "effective_beta": "the width it really has: each part's channel ratio over the baseline (stem, every stage's "
    "output channels, head), weighted by the baseline's MACs in that part (channels round to multiples of 8, at "
    "least 8)",
    "effective_gamma": "the resolution it really has: its input side over the baseline's (rounded to "
    "constraint.resolution_multiple); its real MACs over the baseline's are measured_ratio",
    "images_per_second": "training throughput of the trial, images per second",
    "wall_seconds": "wall-clock seconds of the trial (training and evaluation)",
    "device": "the device that trained it, e.g. cpu or cuda:0 (the card's name)",
    "failure": "why a FAIL trial failed; empty otherwise",
    "epoch_accuracies": "held-out top-1 after each epoch run, a JSON list",
    "epoch_losses": "mean training loss of each epoch run, a JSON list",
    "rung": "synchronous successive-halving rung of this trial (0 = shortest); empty for the full schedule without "
    "halving (int)",
    "fidelity": "the fidelity check's units: the factor of their longer schedule over the proxy's epochs (int); "
    "empty for the search's own units, the only ones the ranking reads",
    "attempts": "trainings started for this unit over every run of the study; above 1 after an interrupted "
    "trial was re-queued (int)",
}
_INTS = frozenset({"seed", "epochs", "epochs_run", "resolution", "params", "macs", "attempts", "rung", "fidelity"})
_FLOATS = frozenset(
    {
        "alpha",
        "beta",
        "gamma",
        "accuracy",
        "depth",
        "width",
        "theoretical_ratio",
        "measured_ratio",
        "effective_alpha",
        "effective_beta",
        "effective_gamma",
        "images_per_second",
        "wall_seconds",
    }
)
_LISTS = frozenset({"epoch_accuracies", "epoch_losses"})
_DERIVED = frozenset({"unit", "candidate"})  # properties of the record, written for readers of the file
_REQUIRED = ("alpha", "beta", "gamma", "seed", "state")


def sort_key(record: TrialRecord) -> tuple:
    rung = math.inf if record.rung is None else record.rung  # the full schedule after the shorter rungs
    fidelity = 0 if record.fidelity is None else record.fidelity  # the fidelity check's longer one after both
    return (record.alpha, record.beta, record.gamma, fidelity, rung, record.seed)


# ------------------------------------------------------------------ writing


def stored_fields(record: TrialRecord) -> dict[str, Any]:
    """The record's results as JSON-ready values, for a backend to store (lists stay lists)."""
    row = record.row()
    return {k: v for k, v in row.items() if k not in _DERIVED and v is not None}


def _cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in _LISTS:
        return json.dumps([round(float(v), 6) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


def trials_csv(records: Iterable[TrialRecord]) -> str:
    """The text of ``trials.csv``: one row per record, sorted by coefficients and seed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in sorted(records, key=sort_key):
        writer.writerow([_cell(name, value) for name, value in record.row().items()])
    return buffer.getvalue()


# ------------------------------------------------------------------ reading


def _parse(name: str, text: str, where: str) -> Any:
    if text == "":
        return () if name in _LISTS else None
    try:
        if name in _INTS:
            number = float(text)  # an older release wrote 1234.0 next to empty fields
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        if name in _FLOATS:
            return float(text)
        if name in _LISTS:
            values = json.loads(text)
            if not isinstance(values, list):
                raise ValueError(text)
            return tuple(float(v) for v in values)
        if name == "state":
            return TrialState(text)
    except (ValueError, TypeError):
        raise UsageError(f"{where}: column {name!r} holds {text!r}, which is not a valid value") from None
    return text


def _coerce(name: str, value: Any, where: str) -> Any:
    """A stored value (a CSV cell, an Optuna attribute, a Tune metric) as the record's type."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return () if name in _LISTS else None
    if name in _LISTS and isinstance(value, (list, tuple)):
        return tuple(float(v) for v in value)
    if isinstance(value, TrialState):
        return value
    return _parse(name, value if isinstance(value, str) else json.dumps(value), where)


def updated(planned: TrialRecord, stored: dict[str, Any], where: str = "stored trial") -> TrialRecord:
    """``planned`` with the fields a backend stored for it (any subset of ``COLUMNS``)."""
    names = {f.name for f in dataclasses.fields(TrialRecord)} - _DERIVED
    changes = {k: _coerce(k, v, where) for k, v in stored.items() if k in names}
    return planned.replace(**{k: v for k, v in changes.items() if v is not None and v != ()})


def parse_trials(text: str, source: str = TRIALS_CSV) -> list[TrialRecord]:
    """Records from the text of a ``trials.csv`` (this release's or an earlier one's)."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise UsageError(f"{source} has no column {', '.join(missing)}: it is not a trials.csv of a run")
    fields = {f.name for f in dataclasses.fields(TrialRecord)}
    records = []
    for line, row in enumerate(reader, start=2):
        where = f"{source} line {line}"
        values = {k: _parse(k, v or "", where) for k, v in row.items() if k in fields and k not in _DERIVED}
        for key in _REQUIRED:
            if values.get(key) is None:
                raise UsageError(f"{where}: column {key!r} is empty")
        values.setdefault("epochs", values.get("epochs_run") or 0)
        for key in ("depth", "width", "theoretical_ratio", "measured_ratio"):
            values.setdefault(key, math.nan)
        values.setdefault("resolution", 0)
        values.setdefault("params", None)
        values.setdefault("macs", None)
        for key in ("epochs", "epochs_run", "attempts", "resolution"):
            if values.get(key) is None:
                values[key] = 0
        records.append(TrialRecord(**values))
    return records


def write_trials(run_dir: Path, records: Sequence[TrialRecord]) -> None:
    atomic_write_text(run_dir / TRIALS_CSV, trials_csv(records))


def read_trials(run_dir: Path) -> list[TrialRecord]:
    path = run_dir / TRIALS_CSV
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path} cannot be read ({exc.strerror}): nothing to rebuild the report from") from None
    return parse_trials(text, str(path))
