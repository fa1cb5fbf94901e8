"""What one search trial is, how it is trained, and the row it leaves behind.

Both backends use these, so their ``trials.csv`` share one schema.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from ..analysis.series import compound_config, measured_ratio
from ..errors import UsageError
from ..models import EfficientNetConfig, get_config
from ..scaling import PAPER, Candidate, Coefficients, candidate_grid, derived_step_default
from ..space import SearchSpace

# The one results schema (trials.csv columns, in order) shared by all backends.
TRIAL_COLUMNS = (
    "unit",
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
    "images_per_second",
    "wall_seconds",
    "device",
    "failure",
    "epoch_accuracies",
    "epoch_losses",
    "attempts",
)

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass(frozen=True)
class Unit:
    """One candidate trained with one seed: the unit of work that runs exactly once."""

    alpha: float
    beta: float
    gamma: float
    seed: int
    theoretical_ratio: float
    measured_ratio: float

    @property
    def key(self) -> str:
        return f"a{self.alpha:g}-b{self.beta:g}-g{self.gamma:g}-s{self.seed}"

    @property
    def coefficients(self) -> Coefficients:
        return Coefficients(self.alpha, self.beta, self.gamma)

    def attrs(self) -> dict:
        return {
            "unit": self.key,
            "alpha": self.alpha,
            "beta": self.beta,
            "gamma": self.gamma,
            "seed": self.seed,
            "theoretical_ratio": self.theoretical_ratio,
            "measured_ratio": self.measured_ratio,
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> Unit:
        return cls(**{k: attrs[k] for k in ("alpha", "beta", "gamma", "seed", "theoretical_ratio", "measured_ratio")})


def baseline_config(space: SearchSpace, num_classes: int) -> EfficientNetConfig:
    b = space.baseline
    options = {"resolution": b.resolution, "num_classes": num_classes, "dropout": b.dropout, "drop_path": b.drop_path}
    if b.model == "efficientnet":
        options.update(width=b.width or 1.0, depth=b.depth or 1.0)
    config = get_config(b.model, **options)
    if not isinstance(config, EfficientNetConfig):
        raise UsageError(f"baseline.model {b.model!r} is not an EfficientNet: only that family can be searched")
    return config


def search_candidates(space: SearchSpace) -> list[Candidate]:
    """The space's candidates, with the paper's triple added when it satisfies the constraint."""
    c, g = space.constraint, space.grid
    base = baseline_config(space, 10)  # MACs ratios do not depend on the classifier size enough to matter
    measure = lambda coeffs: measured_ratio(coeffs, base, c.resolution_multiple)  # noqa: E731
    cands = candidate_grid(
        c.budget,
        step=derived_step_default(g.kind, g.step),
        tolerance=c.tolerance,
        max_alpha=g.max_alpha,
        max_beta=g.max_beta,
        max_gamma=g.max_gamma,
        grid=g.kind,
        constraint=c.mode,
        measure=measure,
    )
    if not any(x.is_paper for x in cands):
        from ..scaling import parse_budget

        budget = parse_budget(c.budget)
        ratio = PAPER.flops_ratio if c.mode == "theoretical" else measure(PAPER)
        if abs(ratio / budget - 1) < c.tolerance:
            cands.append(Candidate(PAPER, PAPER.flops_ratio, measure(PAPER)))
    if not cands:
        raise UsageError(
            f"no (alpha, beta, gamma) satisfies a {c.budget} budget within {c.tolerance:g} on this grid: "
            "widen constraint.tolerance, refine grid.step or raise the grid bounds"
        )
    return cands


def units_for(space: SearchSpace, candidates: list[Candidate]) -> list[Unit]:
    return [
        Unit(
            c.coefficients.alpha,
            c.coefficients.beta,
            c.coefficients.gamma,
            seed,
            c.theoretical_ratio,
            float(c.measured_ratio),
        )
        for seed in space.seeds
        for c in candidates
    ]


def trial_model(space: SearchSpace, unit: Unit, num_classes: int) -> EfficientNetConfig:
    """The phi = 1 network of a candidate at the proxy task's scale."""
    return compound_config(
        unit.coefficients, 1, baseline_config(space, num_classes), space.constraint.resolution_multiple
    )


def trial_config(space: SearchSpace, unit: Unit, num_classes: int, device: str):
    from ..data.sources import DataSpec
    from ..train.loop import TrialConfig

    p, d = space.proxy, space.data
    return TrialConfig(
        model=trial_model(space, unit, num_classes),
        data=DataSpec(name=d.name, data_dir=d.data_dir, storage_size=d.storage_size),
        epochs=p.epochs,
        batch_size=p.batch_size,
        optimizer=p.optimizer,
        lr=p.lr,
        momentum=p.momentum,
        weight_decay=p.weight_decay,
        schedule=p.schedule,
        warmup_epochs=p.warmup_epochs,
        label_smoothing=p.label_smoothing,
        seed=unit.seed,
        train_subset=p.train_subset,
        test_subset=p.test_subset,
        device=device,
    )


def empty_row(unit: Unit, space: SearchSpace, num_classes: int) -> dict:
    model = trial_model(space, unit, num_classes)
    row = {k: None for k in TRIAL_COLUMNS}
    row.update(unit.attrs())
    row.update(
        {
            "epochs": space.proxy.epochs,
            "depth": round(model.depth, 6),
            "width": round(model.width, 6),
            "resolution": model.resolution,
            "epochs_run": 0,
            "attempts": 0,
        }
    )
    return row


def result_fields(result) -> dict:
    """The columns a finished ``TrialResult`` fills in."""
    return {
        "accuracy": result.accuracy,
        "epochs_run": result.epochs,
        "params": result.params,
        "macs": result.macs,
        "images_per_second": round(result.images_per_second, 2),
        "wall_seconds": round(result.wall_seconds, 3),
        "device": result.device,
        "epoch_accuracies": json.dumps([round(a, 6) for a in result.epoch_accuracies]),
        "epoch_losses": json.dumps([round(x, 6) for x in result.epoch_losses]),
    }


def run_unit(
    space: SearchSpace,
    unit: Unit,
    data,
    device: str,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[str, dict]:
    """Train one unit; returns (state, fields). Failures are results, not crashes."""
    from ..train.loop import TrialFailed, TrialPruned, train_trial

    history: list[tuple[float, float]] = []

    def track(epoch: int, loss: float, acc: float) -> None:
        history.append((loss, acc))
        if on_epoch is not None:
            on_epoch(epoch, loss, acc)

    try:
        result = train_trial(trial_config(space, unit, len(data.classes), device), data=data, on_epoch=track)
    except TrialPruned:
        return "PRUNED", {
            "accuracy": history[-1][1] if history else math.nan,
            "epochs_run": len(history),
            "epoch_accuracies": json.dumps([round(a, 6) for _, a in history]),
            "epoch_losses": json.dumps([round(x, 6) for x, _ in history]),
        }
    except TrialFailed as exc:
        return "FAIL", {"failure": exc.reason, "epochs_run": len(history)}
    except UsageError:
        raise
    except Exception as exc:  # a broken trial must not end a long search
        return "FAIL", {"failure": f"unexpected error: {type(exc).__name__}: {exc}", "epochs_run": len(history)}
    return "COMPLETE", result_fields(result)
