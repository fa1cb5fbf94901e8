"""How one unit (``plan.Unit``) is trained into a ``TrialRecord``.

Both backends train through ``run_unit``, so their records are the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models import compound, family_of
from ..records import TrialRecord, TrialState
from ..space import SearchSpace
from ..train.recipe import Runtime
from .plan import Unit, baseline_config


class OutputNotSaved(UsageError):
    """A unit trained to its end whose weights file the disk refused: the record is whole and is stored
    (a resumed run does not train it again); the run stops with the disk's message."""

    def __init__(self, message: str, record: TrialRecord):
        super().__init__(f"{message} (the trial's result is stored; its weights file is not)")
        self.record = record


def trial_model(space: SearchSpace, unit: Unit, num_classes: int) -> Any:
    """The phi = 1 network of a candidate at the proxy task's scale."""
    return compound(baseline_config(space, num_classes), unit.coefficients, 1, space.constraint.resolution_multiple)


def unit_recipe(space: SearchSpace, epochs: int | None):
    """The proxy recipe as a complete schedule of ``epochs`` (a halving rung's own length)."""
    p = space.proxy
    if epochs is None or epochs == p.epochs:
        return p
    return dataclasses.replace(p, epochs=epochs, warmup_epochs=p.warmup_epochs * epochs / p.epochs)  # same shape


def trial_config(space: SearchSpace, unit: Unit, num_classes: int):
    """The unit's ``TrialSpec``: its network, the space's data and proxy recipe, its seed."""
    from ..data.sources import DataSpec
    from ..train.loop import TrialSpec  # torch stays out of planning until a trial runs

    d = space.data
    data = DataSpec(name=d.name, data_dir=d.data_dir, storage_size=d.storage_size)
    return TrialSpec(trial_model(space, unit, num_classes), data, unit_recipe(space, unit.epochs), unit.seed)


def planned_record(space: SearchSpace, unit: Unit, num_classes: int) -> TrialRecord:
    """What is known of a unit before it trains: the network it builds and its cost."""
    from ..flops import count  # torch stays out of planning imports

    model = trial_model(space, unit, num_classes)
    counted = count(model)
    effective = family_of(model).effective(model, baseline_config(space, num_classes))
    return TrialRecord(
        alpha=unit.alpha,
        beta=unit.beta,
        gamma=unit.gamma,
        seed=unit.seed,
        epochs=unit.epochs or space.proxy.epochs,
        rung=unit.rung,
        fidelity=unit.fidelity,
        depth=round(model.depth, 6),
        width=round(model.width, 6),
        resolution=model.resolution,
        params=counted.params,
        macs=counted.macs,
        theoretical_ratio=unit.theoretical_ratio,
        measured_ratio=unit.measured_ratio,
        # The family's real multipliers after rounding; None where it does not say (a user's function).
        effective_alpha=None if effective is None else round(effective.depth, 6),
        effective_beta=None if effective is None else round(effective.width, 6),
        effective_gamma=None if effective is None else round(effective.resolution, 6),
    )


EpochReport = Callable[[int, float, float], None]


def run_unit(
    space: SearchSpace,
    planned: TrialRecord,
    data,
    runtime: Runtime,
    on_epoch: EpochReport | None = None,
    *,
    weights_dir: Path | None = None,
) -> TrialRecord:
    """Train one unit; returns its finished record. The candidate's failures are results, not crashes;
    the machine's (``DeviceFault``) are raised with the unit's key, and nothing is recorded for it.

    With ``weights_dir`` (a run folder), a completed full-schedule trial's final weights are saved
    there as safetensors (``weights.trial_weights_path``), atomically, by the process
    that trained it.
    """
    from ..train.faults import DeviceFault
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

    config = trial_config(space, unit, len(data.classes))
    # Only the search's full schedules leave weights: a shorter halving rung is a screening score, and the
    # fidelity check's longer schedule would overwrite the searched model's file.
    keep = weights_dir is not None and unit.rung is None and unit.fidelity is None
    try:
        result = train_trial(config, runtime, dataset=data, on_epoch=track, keep_state=keep)
    except TrialPruned:
        return ended(TrialState.PRUNED, accuracy=accuracies[-1] if accuracies else None)
    except TrialFailed as exc:
        return ended(TrialState.FAIL, failure=exc.reason)
    except UsageError:
        raise
    except DeviceFault as exc:  # the machine's failure: no result, the unit is trained again
        exc.unit = planned.unit
        raise
    except Exception as exc:  # a broken trial must not end a long search
        return ended(TrialState.FAIL, failure=f"unexpected error: {type(exc).__name__}: {exc}")
    record = ended(
        TrialState.COMPLETE,
        accuracy=result.accuracy,
        params=result.params,
        macs=result.macs,
        images_per_second=round(result.images_per_second, 2),
        wall_seconds=round(result.wall_seconds, 3),
        device=result.device,
    )
    if keep:
        from ..atomic import OutputRefused
        from ..weights import save_trained, trial_weights_path

        path = trial_weights_path(weights_dir, unit.alpha, unit.beta, unit.gamma, unit.seed)
        try:
            save_trained(path, config, result, {"alpha": unit.alpha, "beta": unit.beta, "gamma": unit.gamma})
        except OutputRefused as exc:
            raise OutputNotSaved(str(exc), record) from None
    return record


def unit_of(record: TrialRecord) -> Unit:
    return Unit(
        record.alpha,
        record.beta,
        record.gamma,
        record.seed,
        record.theoretical_ratio,
        record.measured_ratio,
        rung=record.rung,
        epochs=record.epochs,
        fidelity=record.fidelity,
    )
