"""What one search trial is, how it is trained, and the row it leaves behind.

Both backends use these, so their ``trials.csv`` share one schema.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from ..analysis.series import compound_config
from ..errors import UsageError
from ..models import EfficientNetConfig
from ..scaling import Coefficients
from ..space import SearchSpace

# The candidate builder lives in plan.py; these names stay importable from here.
from .plan import baseline_config, search_candidates, units_for  # noqa: F401

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
