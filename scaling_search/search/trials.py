"""The plan (candidates x seeds -> units), and how one unit is trained into a ``TrialRecord``.

Both backends train through ``run_unit``, so their records are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..analysis.series import compound_config
from ..errors import UsageError
from ..models import EfficientNetConfig
from ..records import TrialRecord, TrialState, unit_key
from ..scaling import Coefficients
from ..space import SearchSpace
from ..train.recipe import Runtime
from .plan import baseline_config, search_candidates, units_for  # noqa: F401  (the candidate builder lives in plan.py)


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
        return unit_key(self.alpha, self.beta, self.gamma, self.seed)

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


def trial_config(space: SearchSpace, unit: Unit, num_classes: int):
    """The unit's ``TrialSpec``: its network, the space's data and proxy recipe, its seed."""
    from ..data.sources import DataSpec
    from ..train.loop import TrialSpec  # torch stays out of planning until a trial runs

    d = space.data
    data = DataSpec(name=d.name, data_dir=d.data_dir, storage_size=d.storage_size)
    return TrialSpec(trial_model(space, unit, num_classes), data, space.proxy, unit.seed)


def planned_record(space: SearchSpace, unit: Unit, num_classes: int) -> TrialRecord:
    """What is known of a unit before it trains: the network it builds and its cost."""
    from ..flops import count  # torch stays out of planning imports

    model = trial_model(space, unit, num_classes)
    counted = count(model)
    return TrialRecord(
        alpha=unit.alpha,
        beta=unit.beta,
        gamma=unit.gamma,
        seed=unit.seed,
        epochs=space.proxy.epochs,
        depth=round(model.depth, 6),
        width=round(model.width, 6),
        resolution=model.resolution,
        params=counted.params,
        macs=counted.macs,
        theoretical_ratio=unit.theoretical_ratio,
        measured_ratio=unit.measured_ratio,
    )


EpochReport = Callable[[int, float, float], None]


def run_unit(
    space: SearchSpace,
    planned: TrialRecord,
    data,
    runtime: Runtime,
    on_epoch: EpochReport | None = None,
) -> TrialRecord:
    """Train one unit; returns its finished record. Failures are results, not crashes."""
    from ..train.loop import TrialFailed, TrialPruned, train_trial

    unit = unit_of(planned)
    losses: list[float] = []
    accuracies: list[float] = []

    def track(epoch: int, loss: float, acc: float) -> None:
        losses.append(loss)
        accuracies.append(acc)
        if on_epoch is not None:
            on_epoch(epoch, loss, acc)

    def ended(state: TrialState, **fields) -> TrialRecord:
        return planned.replace(
            state=state,
            epochs_run=len(accuracies),
            epoch_accuracies=tuple(accuracies),
            epoch_losses=tuple(losses),
            attempts=planned.attempts + 1,
            **fields,
        )

    try:
        result = train_trial(trial_config(space, unit, len(data.classes)), runtime, dataset=data, on_epoch=track)
    except TrialPruned:
        return ended(TrialState.PRUNED, accuracy=accuracies[-1] if accuracies else None)
    except TrialFailed as exc:
        return ended(TrialState.FAIL, failure=exc.reason)
    except UsageError:
        raise
    except Exception as exc:  # a broken trial must not end a long search
        return ended(TrialState.FAIL, failure=f"unexpected error: {type(exc).__name__}: {exc}")
    return ended(
        TrialState.COMPLETE,
        accuracy=result.accuracy,
        params=result.params,
        macs=result.macs,
        images_per_second=round(result.images_per_second, 2),
        wall_seconds=round(result.wall_seconds, 3),
        device=result.device,
    )


def unit_of(record: TrialRecord) -> Unit:
    return Unit(record.alpha, record.beta, record.gamma, record.seed, record.theoretical_ratio, record.measured_ratio)
