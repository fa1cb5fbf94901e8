"""The search from Python: the same run as ``scaling-search run``, with the baseline given as a function.

    from scaling_search import load_run, run_search

    def build(width: float, depth: float, num_classes: int) -> torch.nn.Module: ...

    run = run_search("smoke", model=build, out="runs/mine")   # trains, ranks, extrapolates, writes the run folder
    run.records()    # trials.csv as a DataFrame
    run.decision()   # best.json: the winner, the verdict and its statistics
    run.series()     # b_series.csv: the winner extrapolated to phi = 0..max_phi, params and MACs measured

A function handed over from Python is found by ``module:qualname`` in this
process only, so its trials train here (one job, the Optuna backend); the run
folder records that name, and ``load_run`` reads the stored numbers without it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class RunFolder:
    """A run folder's results, read from its files (no code of the searched network is imported)."""

    path: Path

    def records(self):
        """Every trial (candidate x seed, and halving rung), one row each: ``trials.csv``."""
        import pandas as pd

        return pd.read_csv(self._file("trials.csv"))

    def decision(self) -> dict[str, Any]:
        """``best.json``: the winner, its accuracy interval, the verdict and the statistics behind it."""
        return json.loads(self._file("best.json").read_text())

    def series(self):
        """``b_series.csv``: the winner extrapolated to phi = 0..max_phi (empty when none was made)."""
        import pandas as pd

        path = self.path / "b_series.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    def _file(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise UsageError(f"{self.path} holds no {name}: give a run folder written by 'scaling-search run'")
        return path


def load_run(path: str | Path) -> RunFolder:
    """A finished (or stopped) run folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"run folder {folder} does not exist")
    return RunFolder(folder)


def run_search(
    space: Any = "smoke",
    *,
    model: str | Callable[..., Any] | None = None,
    out: str | Path | None = None,
    budget: str | None = None,
    data_dir: str | None = None,
    seeds: int | None = None,
    epochs: int | None = None,
    device: str = "auto",
    quiet: bool = False,
    **options: Any,
) -> RunFolder:
    """Run (or resume) a search, as ``scaling-search run`` does, and return its folder.

    ``space``: a shipped preset's name, a YAML path or a ``SearchSpace``. ``model``: the baseline instead of
    the space's: a registered name, ``"module:build"``, ``"file.py:build"`` or the function
    ``build(width, depth, num_classes) -> nn.Module`` itself, at width 1 and depth 1 (the space's
    resolution, data and recipe are kept). ``options``: further ``RunOptions`` (``keep_weights``, ``storage``,
    ``jobs``, ...).
    """
    from rich.console import Console

    from .models import register_function
    from .search.runner import RunOptions, run
    from .space import SearchSpace, load_space, preset_path, presets

    if isinstance(space, SearchSpace):
        chosen = space
    elif isinstance(space, str | Path) and Path(space).is_file():
        chosen = load_space(space)
    elif isinstance(space, str) and space in presets():
        chosen = load_space(preset_path(space))
    else:
        raise UsageError(
            f"space {space!r} is neither a search space, a YAML file nor a preset ({', '.join(presets())})"
        )
    in_process = callable(model)
    if in_process:
        model = register_function(model)
        for key, value in (("jobs", 1), ("backend", "optuna")):
            if options.get(key, value) != value:
                raise UsageError(
                    f"{key}={options[key]!r}: a function handed over from Python trains in this process only; name "
                    "it 'module:build' or 'file.py:build' for other processes"
                )
        options["jobs"] = 1
    chosen = chosen.with_overrides(
        constraint={"budget": budget}, data={"data_dir": data_dir}, proxy={"epochs": epochs}
    ).with_model(model)
    if seeds:
        chosen = dataclasses.replace(chosen, seeds=tuple(range(seeds)))
    from .scaling import parse_budget

    folder = Path(out) if out else Path("runs") / f"{chosen.name}-{parse_budget(chosen.constraint.budget):g}x"
    run(chosen, RunOptions(out=folder, device=device, **options), Console(quiet=quiet, highlight=False))
    return RunFolder(folder)
