"""Everything a run folder keeps: trials.csv, best.json, coefficients.md, the
extrapolated B- and D-series, and the plots. Every file is written atomically,
so a run killed while reporting leaves the previous files intact."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import atomic_write_text
from ..records import TrialRecord, write_trials
from ..scaling import Coefficients, parse_budget
from ..space import SearchSpace
from .ranking import Ranking, rank
from .tables import Column, millions, num, ratio, render, to_csv, to_markdown

OUTPUTS = (
    "trials.csv",
    "best.json",
    "coefficients.md",
    "b_series.csv",
    "d_series.csv",
    "accuracy_vs_macs.png",
    "alpha_beta.png",
    "b_series_macs.png",
    "COLUMNS.md",
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


RANKING_COLUMNS = [
    Column("rank", "rank", num),
    Column("alpha", "alpha", num),
    Column("beta", "beta", num),
    Column("gamma", "gamma", num),
    Column("seeds", "seeds", num),
    Column("accuracy_mean", "accuracy", lambda v: "" if v is None or v != v else f"{v:.4f}"),
    Column("ci95", "95% CI", str),
    Column("params", "params", millions),
    Column("macs", "MMACs", lambda v: "" if v is None else f"{v / 1e6:.1f}"),
    Column("resolution", "res", num),
    Column("theoretical_ratio", "a*b^2*g^2", ratio),
    Column("measured_ratio", "measured", ratio),
    Column("pruned", "pruned", num),
    Column("failed", "failed", num),
    Column("paper", "", lambda v: "paper" if v else ""),
]


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def write_report(
    run_dir: Path, trials: Sequence[TrialRecord], space: SearchSpace, info: dict, *, extrapolate: bool = True
) -> Ranking:
    """Rank, extrapolate the winner and write every output file. Returns the ranking."""
    from . import plots

    write_trials(run_dir, trials)
    ranking = rank(trials, space.proxy.epochs)
    budget = parse_budget(space.constraint.budget)
    finished = sum(r.state.finished for r in trials)
    win = ranking.winner
    best: dict[str, Any] = {
        "alpha": None,
        "beta": None,
        "gamma": None,
        "accuracy_mean": None,
        "accuracy_ci_low": None,
        "accuracy_ci_high": None,
        "seeds": 0,
        "budget": budget,
        "space": space.name,
        "units_total": int(len(trials)),
        "units_finished": finished,
        "complete": finished == len(trials),
        "statements": list(ranking.statements),
        **info,
    }
    rank_rows = _records(ranking.table)
    for r in rank_rows:
        r["ci95"] = f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if r.get("ci_low") is not None else ""
    best.update(mark_upsampled(rank_rows, trials, info))
    b_rows: list[dict] = []
    d_rows: list[dict] = []
    if win is not None:
        best.update(
            alpha=float(win["alpha"]),
            beta=float(win["beta"]),
            gamma=float(win["gamma"]),
            accuracy_mean=float(win["accuracy_mean"]),
            accuracy_ci_low=_clean(float(win["ci_low"])),
            accuracy_ci_high=_clean(float(win["ci_high"])),
            seeds=int(win["seeds"]),
            params=_clean(win["params"]),
            macs=_clean(win["macs"]),
            theoretical_ratio=float(win["theoretical_ratio"]),
            measured_ratio=float(win["measured_ratio"]),
        )
        paper = ranking.table[ranking.table["paper"]]
        best["paper_rank"] = None if paper.empty or pd.isna(paper.iloc[0]["rank"]) else int(paper.iloc[0]["rank"])
        if extrapolate:
            b_rows, d_rows = _extrapolate(Coefficients(best["alpha"], best["beta"], best["gamma"]), space, budget)
    atomic_write_text(run_dir / "best.json", json.dumps(best, indent=2) + "\n")
    if b_rows:
        atomic_write_text(run_dir / "b_series.csv", to_csv(b_rows))
    if d_rows:
        atomic_write_text(run_dir / "d_series.csv", to_csv(d_rows))
    atomic_write_text(run_dir / "coefficients.md", _coefficients_md(space, best, rank_rows, ranking, b_rows, d_rows))
    atomic_write_text(run_dir / "COLUMNS.md", data_dictionary(b_rows, d_rows))
    title = f"{space.name}: {space.data.name}, budget {space.constraint.budget}"
    plots.accuracy_vs_macs(ranking.table, run_dir / "accuracy_vs_macs.png", title)
    plots.alpha_beta_plane(ranking.table, run_dir / "alpha_beta.png", title)
    if b_rows:
        plots.b_series_macs(
            b_rows,
            run_dir / "b_series_macs.png",
            budget,
            f"winner ({best['alpha']:g}, {best['beta']:g}, {best['gamma']:g})",
        )
    return ranking


def _extrapolate(coeffs: Coefficients, space: SearchSpace, budget: float) -> tuple[list[dict], list[dict]]:
    from ..models import EfficientNetConfig
    from .series import b_series

    e = space.extrapolation
    base = EfficientNetConfig(resolution=e.base_resolution)
    b_rows = b_series(
        coeffs, max_phi=e.max_phi, base=base, multiple=e.resolution_multiple, budget=budget, num_classes=e.num_classes
    )
    d_rows: list[dict] = []
    if e.detection:
        from .series import d_series

        d_rows = d_series(coeffs, max_phi=e.max_phi)
    return b_rows, d_rows


def _coefficients_md(
    space: SearchSpace, best: dict, rank_rows: list[dict], ranking: Ranking, b_rows: list[dict], d_rows: list[dict]
) -> str:
    p, c = space.proxy, space.constraint
    lines = [f"# Compound-scaling coefficients: {space.name}", ""]
    if best["alpha"] is not None:
        ci = ""
        if best.get("accuracy_ci_low") is not None:
            ci = f", 95% CI [{best['accuracy_ci_low']:.4f}, {best['accuracy_ci_high']:.4f}]"
        lines += [
            f"**alpha = {best['alpha']:g}, beta = {best['beta']:g}, gamma = {best['gamma']:g}** "
            f"(alpha*beta^2*gamma^2 = {best['theoretical_ratio']:.3f}, measured {best['measured_ratio']:.2f}x) — "
            f"held-out accuracy {best['accuracy_mean']:.4f}{ci} over {best['seeds']} seed(s).",
            "",
        ]
    lines += [f"- {s}" for s in ranking.statements]
    lines += [f"- {s}" for s in run_notes(best)]
    lines += [
        "",
        f"Units finished: {best['units_finished']} of {best['units_total']}"
        + ("" if best["complete"] else " (the study is not complete: run the same command again to resume)."),
        "",
        "## Protocol",
        "",
        f"- data: {space.data.name}; baseline {space.baseline.model} at {space.baseline.resolution} px",
        f"- grid: {space.grid.kind}, constraint {c.mode} {c.budget} within {c.tolerance:g}, resolutions to "
        f"multiples of {c.resolution_multiple}",
        f"- proxy: {p.epochs} epochs, batch {p.batch_size}, {p.optimizer} lr {p.lr:g}, {p.schedule} schedule, "
        f"label smoothing {p.label_smoothing:g}, "
        f"train subset {p.train_subset or 'all'}, test subset {p.test_subset or 'all'}",
        f"- seeds: {', '.join(str(s) for s in space.seeds)}; pruning: "
        + (
            f"successive halving from {space.pruning.min_epochs} epoch(s), factor {space.pruning.reduction_factor}"
            if space.pruning.enabled
            else "off"
        ),
        "",
        "## Ranking",
        "",
        to_markdown(rank_rows, [*RANKING_COLUMNS, UPSAMPLED_COLUMN]),
    ]
    if b_rows:
        from .series import b_series_columns

        lines += [
            render(
                "md",
                b_rows,
                b_series_columns(),
                title="B-series from the winner (ImageNet scale) beside the official table",
            ),
            "",
        ]
    if d_rows:
        from .series import d_series_columns

        lines += [
            render("md", d_rows, d_series_columns(), title="D-series from the winner beside the official table"),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------ data, stale trials, data dictionary

UPSAMPLED_COLUMN = Column("upsampled", "", lambda v: "upsampled" if v else "")


def mark_upsampled(rank_rows: list[dict], trials: Sequence[TrialRecord], info: dict) -> dict:
    """Flag ranking rows trained above the images' real detail; returns best.json's data fields.

    ``info["native_size"]`` and ``info["stored_size"]`` come from run.json;
    without them (a folder from an older release) nothing is claimed.
    """
    from ..data.sources import resolution_statement, upsampled

    native, stored = info.get("native_size"), info.get("stored_size")
    if not native or not stored:
        return {"upsampled": None}
    detail = min(native, stored)
    for r in rank_rows:
        r["upsampled"] = bool(r.get("resolution")) and upsampled(int(r["resolution"]), detail)
    resolutions = [r.resolution for r in trials if r.resolution]
    above = sorted({r.candidate for r in trials if r.resolution and upsampled(r.resolution, detail)})
    return {
        "native_size": int(native),
        "stored_size": int(stored),
        "resolution_statement": resolution_statement(int(native), int(stored), resolutions),
        "upsampled": above,
    }


def run_notes(best: dict) -> list[str]:
    """Lines of coefficients.md about the data and the study itself, beside the ranking's statements."""
    notes = []
    if best.get("resolution_statement"):
        s = best["resolution_statement"]
        notes.append(f"Data: {s[0].upper()}{s[1:]}")
    stale = best.get("stale_running") or []
    if stale:
        notes.append(
            f"{len(stale)} trial(s) were left RUNNING by a worker that stopped (no heartbeat since): "
            f"{', '.join(stale)}; the next run of the same command trains them again."
        )
    requeued = best.get("stale_requeued") or []
    if requeued:
        notes.append(f"Re-queued at resume, left RUNNING by a stopped worker: {', '.join(requeued)}.")
    return notes


def data_dictionary(b_rows: Sequence[dict], d_rows: Sequence[dict]) -> str:
    """COLUMNS.md: every column of trials.csv, b_series.csv and d_series.csv, described."""
    from ..records import COLUMN_DESCRIPTIONS, COLUMNS
    from .series import B_SERIES_DESCRIPTIONS, D_SERIES_DESCRIPTIONS

    def table(name: str, columns: Sequence[str], described: dict[str, str], intro: str) -> list[str]:
        rows = [f"| `{c}` | {described.get(c, '')} |" for c in columns]
        return [f"## {name}", "", intro, "", "| column | meaning |", "|---|---|", *rows, ""]

    def keys(rows: Sequence[dict]) -> list[str]:
        return list(dict.fromkeys(k for r in rows for k in r))

    lines = [
        "# Columns of this run folder's tables",
        "",
        "Integers are written as integers; an empty field is a missing value (a trial not run, no official "
        "network of that phi). Load with `pandas.read_csv`.",
        "",
    ]
    lines += table(
        "trials.csv", COLUMNS, COLUMN_DESCRIPTIONS, "One row per trial (candidate x seed), sorted by coefficients."
    )
    if b_rows:
        lines += table(
            "b_series.csv",
            keys(b_rows),
            B_SERIES_DESCRIPTIONS,
            "The winner extrapolated to B0-B7 at ImageNet scale, beside the official EfficientNets "
            "(`official_*`, same phi).",
        )
    if d_rows:
        lines += table(
            "d_series.csv",
            keys(d_rows),
            D_SERIES_DESCRIPTIONS,
            "The winner's B-phi as EfficientDet backbones, beside the official EfficientDets (`official_*`).",
        )
    return "\n".join(lines).rstrip() + "\n"
