"""Everything a run folder keeps: trials.csv, best.json, coefficients.md, the
extrapolated B- and D-series, and the plots. Every file is written atomically,
so a run killed while reporting leaves the previous files intact."""

from __future__ import annotations

import dataclasses
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
from .fidelity import FidelityCheck, compare, select
from .ranking import NetworkClassLike, Ranking, class_spread, rank
from .tables import COEFFICIENT_COLUMNS, Column, millions, num, ratio, render, to_csv, to_markdown

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


def _p(v) -> str:
    return "" if v is None or v != v else f"{v:.2f}"


RANKING_COLUMNS = [
    Column("rank", "rank", num),
    Column("class", "class", str),
    *COEFFICIENT_COLUMNS,
    Column("seeds", "seeds", num),
    Column("accuracy_mean", "accuracy", lambda v: "" if v is None or v != v else f"{v:.4f}"),
    Column("ci95", "95% CI", str),
    Column("p_best", "P(best)", _p),
    Column("confidence_set", "in 90% set", lambda v: "yes" if v else ""),
    Column("params", "params", millions),
    Column("macs", "MMACs", lambda v: "" if v is None else f"{v / 1e6:.1f}"),
    Column("resolution", "res", num),
    Column("theoretical_ratio", "a*b^2*g^2", ratio),
    Column("measured_ratio", "measured", ratio),
    Column("effective_alpha", "eff. alpha", lambda v: "" if v is None else f"{v:.3f}"),
    Column("effective_beta", "eff. beta", lambda v: "" if v is None else f"{v:.3f}"),
    Column("effective_gamma", "eff. gamma", lambda v: "" if v is None else f"{v:.3f}"),
    Column("off_budget", "off budget", lambda v: "OFF" if v else ""),
    Column("stopped_rung", "stopped at rung", num),
    Column("pruned", "pruned", num),
    Column("failed", "failed", num),
    Column("paper", "reference", lambda v: "paper" if v else ""),
    Column("coefficients", "stands for", str),
]


def init_description(recipe) -> str:
    """How the proxy initialises residual blocks, in words (the depth-fair init decides what depth is worth)."""
    if recipe.zero_init_residual:
        return "zero-init residual: every residual block starts as the identity (last BN scale at zero)"
    return "standard: residual branches start random (He normal convolutions, BN scale 1)"


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def write_report(
    run_dir: Path,
    trials: Sequence[TrialRecord],
    space: SearchSpace,
    info: dict,
    *,
    classes: Sequence[NetworkClassLike] = (),
    extrapolate: bool = True,
    fidelity: Sequence[TrialRecord] | None = None,
    decision: Sequence[str] | None = None,
) -> Ranking:
    """Rank, extrapolate the winner and write every output file. Returns the ranking (its statements
    with the fidelity check's).

    ``fidelity``: the fidelity check's records (a longer schedule, after the decision), None when it did not run;
    ``decision``: the allocation's decision set when it made one (a race's), else the confidence set stands for it.
    """
    from . import plots

    write_trials(run_dir, [*trials, *(fidelity or ())])
    budget = parse_budget(space.constraint.budget)
    race = info.get("race")
    ranking = rank(
        trials,
        space.proxy.epochs,
        seeds=sorted(set(space.seeds) | {r.seed for r in trials}),  # a race adds seeds round by round
        budget=budget,
        tolerance=space.constraint.tolerance,
        classes=classes,
        bootstrap_seed=space.order_seed,
    )
    check = None
    if fidelity is not None:
        check = compare(
            ranking,
            select(ranking, decision),
            trials,
            fidelity,
            factor=space.fidelity.epochs_factor,
            short_epochs=space.proxy.epochs,
            decision=decision,
            winner=(race or {}).get("winner"),
        )
        said = tuple(check.statements())
        # A decision that does not survive the longer schedule is the first thing the verdict says.
        statements = (*said, *ranking.statements) if check.decision_changes else (*ranking.statements, *said)
        ranking = dataclasses.replace(ranking, statements=statements)
    finished = sum(r.state.finished for r in trials)
    win = ranking.winner
    if race is not None and race.get("winner") and not ranking.table.empty:
        # The race's leader: the best mean among the candidates still in contention, all on the same seeds.
        row = ranking.table[ranking.table["candidate"] == race["winner"]]
        win = row.iloc[0] if not row.empty else win
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
        "fidelity": None if check is None else check.to_dict(),
        "schedule_dependent": None if check is None else check.decision_changes,
        "order_seed": space.order_seed,
        "init": init_description(space.proxy),
        "zero_init_residual": space.proxy.zero_init_residual,
        **_statistics(ranking),
        **info,
    }
    if race is not None:
        best["decision"] = race["decision"]
        race.update(_race_details(race, ranking, classes, space))
    best["noise"] = _noise(ranking, race, info.get("held_out_images"))
    rank_rows = _records(ranking.table)
    for r in rank_rows:
        r["ci95"] = f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]" if r.get("ci_low") is not None else ""
    best.update(mark_upsampled(rank_rows, trials, info))
    b_rows: list[dict] = []
    d_rows: list[dict] = []
    series_notes: list[str] = []
    b_effective: list[dict] = []
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
        best["class"] = _class_entry(win, classes, space)
        best["effective"] = effective_entry(
            Coefficients(best["alpha"], best["beta"], best["gamma"]),
            tuple(_clean(win.get(f"effective_{k}")) for k in ("alpha", "beta", "gamma")),
            space.extrapolation.max_phi,
        )
        _with_statement(best)
        best["extrapolation_multipliers"] = "nominal"
        if extrapolate:
            coeffs = Coefficients(best["alpha"], best["beta"], best["gamma"])
            b_rows, d_rows, series_notes = _extrapolate(coeffs, space, budget)
            if series_notes:
                best["series_notes"] = series_notes
            effective = best["effective"]
            if effective is not None and effective["differs"] and b_rows:
                b_effective = _extrapolate(Coefficients(*effective["coefficients"]), space, budget, detection=False)[0]
    atomic_write_text(run_dir / "best.json", json.dumps(best, indent=2) + "\n")
    if b_rows:
        atomic_write_text(run_dir / "b_series.csv", to_csv(b_rows))
    if b_effective:
        atomic_write_text(run_dir / EFFECTIVE_B_SERIES, to_csv(b_effective))
    elif (run_dir / EFFECTIVE_B_SERIES).exists():
        (run_dir / EFFECTIVE_B_SERIES).unlink()  # an earlier winner's: it no longer applies
    if d_rows:
        atomic_write_text(run_dir / "d_series.csv", to_csv(d_rows))
    atomic_write_text(
        run_dir / "coefficients.md",
        _coefficients_md(space, best, rank_rows, ranking, b_rows, d_rows, b_effective, check),
    )
    base = extrapolation_base(space)
    atomic_write_text(run_dir / "COLUMNS.md", data_dictionary(b_rows, d_rows, effective=bool(b_effective), base=base))
    title = f"{space.name}: {space.data.name}, budget {space.constraint.budget}"
    plots.accuracy_vs_macs(
        ranking.table, run_dir / "accuracy_vs_macs.png", title, budget=budget, tolerance=space.constraint.tolerance
    )
    plots.alpha_beta_plane(ranking.table, run_dir / "alpha_beta.png", title)
    if b_rows:
        plots.b_series_macs(
            b_rows,
            run_dir / "b_series_macs.png",
            budget,
            f"winner ({best['alpha']:g}, {best['beta']:g}, {best['gamma']:g})",
        )
    return ranking


def _fields(record: Any, *names: str | tuple[str, str]) -> dict:
    """best.json's view of an analysis record: attribute names, or (key, attribute) where best.json renames one."""
    pairs = [(name, name) if isinstance(name, str) else name for name in names]
    return {key: getattr(record, attribute) for key, attribute in pairs}


def _statistics(ranking: Ranking) -> dict:
    """best.json's statistics: the verdict and what it rests on (None where the data cannot say)."""
    a = ranking.analysis
    out: dict[str, Any] = {
        "verdict": None if a is None else ("conclusive" if a.verdict.conclusive else "inconclusive"),
        "rank_agreement": None,
        "snr": None,
        "anova_p": None,
        "anova_f": None,
        "p_best": {},
        "confidence_set": [],
        "response_surface": None,
        "paper": None,
        "rung_agreement": [
            {"rungs": list(r.rungs), "candidates": r.candidates, "kendall_tau_b": r.kendall_tau_b}
            for r in ranking.rungs
        ],
    }
    if a is None:
        return out
    out["verdict_statements"] = list(a.verdict.statements)
    if a.agreement is not None:
        out["rank_agreement"] = _fields(a.agreement, "kendall_tau_b", "spearman", ("seed_pairs", "pairs"), "candidates")
    if a.anova is not None:
        out.update(snr=_clean(a.anova.snr), anova_p=_clean(a.anova.p), anova_f=_clean(a.anova.f))
    out["p_best"] = {c.key: c.p_best for c in a.candidates}
    out["confidence_set"] = list(a.confidence_set)
    out["confidence_level"] = 0.90
    if a.surface is not None:
        f = a.surface
        surface = _fields(
            f, "alpha", "beta", "gamma", ("predicted_accuracy", "predicted"), "region_alpha", "region_beta"
        )
        surface.update(region_alpha=list(f.region_alpha), region_beta=list(f.region_beta), on_edge=f.on_edge)
        out["response_surface"] = surface
    if a.paper is not None:
        p = a.paper
        paper = _fields(p, ("candidate", "key"), "rank", "p_best", ("difference_to_winner", "difference"))
        paper.update(difference_ci_low=_clean(p.low), difference_ci_high=_clean(p.high), measured_ratio=p.cost)
        out["paper"] = paper
    out["bootstrap"] = {"seed": a.bootstrap_seed, "samples": a.bootstrap_samples}
    return out


def _class_entry(win: pd.Series, classes: Sequence[NetworkClassLike], space: SearchSpace) -> dict | None:
    """The winner's class: the coefficients it stands for and how their B-series differ at the largest phi."""
    from ..models.plugin import NotStored

    cls = next((c for c in classes if c.label == win["class"]), None)
    if cls is None:
        return None
    e = space.extrapolation
    try:
        spread = class_spread(
            [m.coefficients for m in cls.members], e.max_phi, extrapolation_base(space), e.resolution_multiple
        )
    except NotStored:  # a report over a user's network, whose code it never runs
        spread = None
    return {
        "label": cls.label,
        "members": len(cls.members),
        "coefficients": cls.describe(),
        "spread_at_max_phi": None
        if spread is None
        else {k: list(v) if isinstance(v, tuple) else v for k, v in spread.items()},
    }


def _statistics_md(best: dict) -> list[str]:
    lines: list[str] = []
    if best.get("confidence_set"):
        lines += [
            "## Confidence set of the best",
            "",
            f"At {best.get('confidence_level', 0.9):.0%}: {', '.join(best['confidence_set'])}. P(best) per candidate "
            f"from {best['bootstrap']['samples']} bootstrap resamples of pooled residuals (seed "
            f"{best['bootstrap']['seed']}).",
            "",
        ]
    paper = best.get("paper")
    if paper:
        pb = "" if paper["p_best"] is None else f", P(best) {paper['p_best']:.2f}"
        ci = (
            ""
            if paper["difference_ci_low"] is None
            else f" (95% interval {paper['difference_ci_low']:+.4f} to {paper['difference_ci_high']:+.4f})"
        )
        cost = "" if paper["measured_ratio"] is None else f"; real cost {paper['measured_ratio']:.2f}x the baseline"
        lines += [
            "## The paper's (1.2, 1.1, 1.15)",
            "",
            f"Rank {paper['rank']}{pb}; {paper['difference_to_winner']:+.4f} from the winner{ci}{cost}.",
            "",
        ]
    surface = best.get("response_surface")
    if surface:
        edge = " (on the grid's edge: the optimum may lie outside it)" if surface["on_edge"] else ""
        lines += [
            "## Response surface",
            "",
            f"Quadratic over (alpha, beta): argmax alpha {surface['alpha']:.3f}, beta {surface['beta']:.3f}, gamma "
            f"{surface['gamma']:.3f}{edge}; 90% bootstrap region alpha {surface['region_alpha'][0]:.3f}-"
            f"{surface['region_alpha'][1]:.3f}, beta {surface['region_beta'][0]:.3f}-{surface['region_beta'][1]:.3f}. "
            "Beside the grid winner, not instead of it.",
            "",
        ]
    cls = best.get("class")
    if cls and cls["members"] > 1:
        text = (
            f"The winner's class {cls['label']} holds {cls['members']} coefficient triples ({cls['coefficients']}) "
            "that build the same phi = 1 network: the proxy cannot tell them apart."
        )
        spread = cls.get("spread_at_max_phi")
        if spread:
            text += (
                f" At phi = {spread['phi']} their B-series differ: {spread['macs'][0] / 1e9:.2f}-"
                f"{spread['macs'][1] / 1e9:.2f} GMACs, {spread['resolution'][0]}-{spread['resolution'][1]} px, depth "
                f"x{spread['depth'][0]:.2f}-{spread['depth'][1]:.2f}, width x{spread['width'][0]:.2f}-"
                f"{spread['width'][1]:.2f}."
            )
        lines += ["## Coefficients the proxy cannot tell apart", "", text, ""]
    return lines


def extrapolation_base(space: SearchSpace) -> Any:
    """The network the series grows from: the baseline's family at width 1 and depth 1, at ImageNet scale."""
    from ..models import family_root, get_config

    return get_config(family_root(space.baseline.model), resolution=space.extrapolation.base_resolution)


# The nominal coefficients of a winner "differ" from its effective multipliers when compounding
# either to the largest phi gives a depth, width or resolution more than this far apart.
EFFECTIVE_MARGIN = 0.10
EFFECTIVE_B_SERIES = "b_series_effective.csv"


def effective_entry(nominal: Coefficients, effective: tuple, max_phi: int) -> dict | None:
    """best.json's ``effective``: the winner's real multipliers beside its nominal coefficients, and whether
    extrapolating one or the other to ``max_phi`` parts by more than ``EFFECTIVE_MARGIN``; None when unknown."""
    if any(v is None for v in effective):
        return None
    real = tuple(max(1.0, float(v)) for v in effective)  # a grown network never shrinks; float noise aside
    apart = {
        name: (eff / nom) ** max_phi - 1 for name, nom, eff in zip(("alpha", "beta", "gamma"), nominal.as_tuple(), real)
    }
    differs = [name for name, gap in apart.items() if abs(gap) > EFFECTIVE_MARGIN]
    return {
        "coefficients": [round(v, 4) for v in real],
        "apart_at_max_phi": {k: round(v, 4) for k, v in apart.items()},
        "max_phi": max_phi,
        "margin": EFFECTIVE_MARGIN,
        "differs": bool(differs),
        "differing": differs,
    }


def _with_statement(best: dict) -> dict:
    if best.get("effective"):
        best["effective"]["statement"] = effective_statement(best)
    return best


def effective_statement(best: dict) -> str | None:
    """The plain words for nominal against effective multipliers, or None when unknown."""
    e = best.get("effective")
    if not e:
        return None
    a, b, g = e["coefficients"]
    real = f"effective alpha {a:.3f} (blocks), beta {b:.3f} (MACs-weighted channels), gamma {g:.3f} (input side)"
    nominal = f"({best['alpha']:g}, {best['beta']:g}, {best['gamma']:g})"
    if not e["differs"]:
        return (
            f"The winner's nominal coefficients {nominal} are what its network really multiplies over the baseline "
            f"({real}): compounded to phi = {e['max_phi']} they stay within {e['margin']:.0%}. The B-series uses "
            "the nominal coefficients."
        )
    gaps = ", ".join(f"{k} {100 * e['apart_at_max_phi'][k]:+.0f}%" for k in e["differing"])
    return (
        f"At the proxy's base the winner's coefficients {nominal} are labels more than multipliers: after rounding, "
        f"its network has {real}. Compounded to phi = {e['max_phi']} they part by more than {e['margin']:.0%} "
        f"({gaps}). The B-series below applies the nominal coefficients to B0, as the paper does; the second table "
        f"applies the effective ones ({EFFECTIVE_B_SERIES})."
    )


FIDELITY_COLUMNS = [
    Column("candidate", "candidate", str),
    Column("reasons", "checked as", lambda v: ", ".join(v)),
    Column("leaning", "leaning", lambda v: v or ""),
    Column("seeds", "seeds", lambda v: ", ".join(str(s) for s in v)),
    Column("short", "top-1 (search)", lambda v: "" if v is None else f"{v:.4f}"),
    Column("long", "top-1 (longer)", lambda v: "" if v is None else f"{v:.4f}"),
    Column("gain", "gain", lambda v: "" if v is None else f"{v:+.4f}"),
    Column("short_rank", "rank (search)", num),
    Column("long_rank", "rank (longer)", num),
]


def _fidelity_md(check: FidelityCheck) -> list[str]:
    rows = [{**dataclasses.asdict(r), "gain": r.gain} for r in check.rows]
    return [
        f"## Fidelity check: {check.long_epochs} epochs against the search's {check.short_epochs}",
        "",
        "The decision set, the paper's triple and the best candidate of each leaning (the dimension that takes "
        "the largest share of its real MACs growth), trained again with the same seeds at "
        f"{check.factor}x the epochs; means over the seeds scored at both schedules.",
        "",
        *[f"- {s}" for s in check.statements()],
        "",
        to_markdown(rows, FIDELITY_COLUMNS),
        "",
    ]


def _extrapolate(
    coeffs: Coefficients, space: SearchSpace, budget: float, detection: bool = True
) -> tuple[list[dict], list[dict], list[str]]:
    """B- and D-series rows of ``coeffs`` from the space's family, and why a series is not made where one is not."""
    from ..models.plugin import NotStored
    from .series import b_series, d_series_unavailable

    e = space.extrapolation
    base = extrapolation_base(space)
    notes: list[str] = []
    try:
        b_rows = b_series(
            coeffs,
            max_phi=e.max_phi,
            base=base,
            multiple=e.resolution_multiple,
            budget=budget,
            num_classes=e.num_classes,
        )
    except NotStored as exc:
        b_rows = []
        notes.append(
            f"Series not made: {exc}; run the same 'scaling-search run' command on this folder to extrapolate this "
            "winner."
        )
    d_rows: list[dict] = []
    if e.detection and detection:
        why = d_series_unavailable(base)
        if why:
            notes.append(f"D-series not made: {why}.")
        else:
            from .series import d_series

            d_rows = d_series(coeffs, max_phi=e.max_phi)
    return b_rows, d_rows, notes


def _coefficients_md(
    space: SearchSpace,
    best: dict,
    rank_rows: list[dict],
    ranking: Ranking,
    b_rows: list[dict],
    d_rows: list[dict],
    b_effective: Sequence[dict] = (),
    check: FidelityCheck | None = None,
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
    verdict = best.get("verdict")
    race = best.get("race")
    if race is not None:
        lines += ["## Decision", "", f"**{race['decision'] or 'not reached yet'}**", ""]
        lines += [f"- {s}" for s in race_statements(race)]
        fid = best.get("fidelity") or {}
        if fid.get("decision_changes"):  # the race's decision did not survive the longer schedule: said here too
            lines += [f"- {fid['statements'][0]}"]
        lines += ["", "## Supporting statistics", "", f"Over every score: {verdict or 'no verdict'}.", ""]
    else:
        lines += ["## Verdict", "", f"**{verdict or 'no verdict'}**", ""]
    lines += [f"- {s}" for s in ranking.statements]
    noise = best.get("noise")
    if noise and noise.get("statement"):
        lines += [f"- {noise['statement']}"]
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
        f"multiples of {c.resolution_multiple}; candidates that build the same network are trained once, as a class",
        f"- proxy: {p.epochs} epochs (complete schedule), batch {p.batch_size}, {p.optimizer} lr {p.lr:g}, "
        f"{p.schedule} schedule, label smoothing {p.label_smoothing:g}, dropout {p.dropout:g}, drop path "
        f"{p.drop_path:g}, train subset {p.train_subset or 'all'}, test subset {p.test_subset or 'all'}",
        f"- initialisation: {init_description(p)}",
        f"- runtime: {best.get('device') or 'device not recorded'}, precision {best.get('precision') or 'not recorded'}"
        f" (asked: {space.precision}), {best.get('jobs') or 1} job(s)",
        f"- seeds: {', '.join(str(s) for s in space.seeds)}; run order interleaved by seed, shuffled with order "
        f"seed {space.order_seed}",
        "- allocation: "
        + (
            f"racing seeds (one more seed per round for the candidates in contention, up to "
            f"{space.racing.max_seeds} seeds"
            + ("" if space.racing.max_trainings is None else f" and {space.racing.max_trainings} trainings")
            + f"; delta {space.racing.delta:g}, alpha {space.racing.alpha:g}; {race['rule'] if race else ''})"
            if space.racing.enabled
            else ("synchronous successive halving" if space.pruning.enabled else "uniform: every candidate x seed")
        ),
        "- pruning: "
        + (
            f"synchronous successive halving, rungs from {space.pruning.min_epochs} epoch(s) by factor "
            f"{space.pruning.reduction_factor} up to {p.epochs}, each a complete schedule; promotion on seed means "
            "with ties kept, the paper's triple always carried"
            if space.pruning.enabled
            else "off (every candidate x seed trains the full schedule)"
        ),
        "",
        "## Ranking",
        "",
        to_markdown(rank_rows, [*RANKING_COLUMNS, UPSAMPLED_COLUMN]),
        "",
    ]
    lines += _statistics_md(best)
    if check is not None:
        lines += _fidelity_md(check)
    statement = effective_statement(best)
    if statement:
        lines += ["## Nominal and effective multipliers", "", statement, ""]
    if b_rows:
        from ..models import family_of
        from .series import b_series_columns

        base = extrapolation_base(space)
        family = family_of(base)
        title = (
            "B-series from the winner's nominal coefficients (ImageNet scale) beside the official table"
            if family.official(1)
            else f"{space.baseline.model} series from the winner (ImageNet scale, phi 0-{space.extrapolation.max_phi})"
        )
        lines += [render("md", b_rows, b_series_columns(base), title=title), ""]
    if b_effective:
        from .series import b_series_columns

        a, b, g = best["effective"]["coefficients"]
        lines += [
            render(
                "md",
                b_effective,
                b_series_columns(extrapolation_base(space)),
                title=f"B-series from the winner's effective multipliers ({a:.3f}, {b:.3f}, {g:.3f}) beside the "
                "official table",
            ),
            "",
        ]
    if best.get("series_notes"):
        lines += ["## Series not made", "", *(f"- {n}" for n in best["series_notes"]), ""]
    if d_rows:
        from .series import d_series_columns

        lines += [
            render("md", d_rows, d_series_columns(), title="D-series from the winner beside the official table"),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------ the race


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{x:+.4f}"


def race_statements(race: dict) -> list[str]:
    """The race's decision in plain words, with the numbers behind it."""
    out = []
    d, winner = race["decision"], race.get("winner")
    alive = race.get("in_contention") or []
    if d == "best":
        out.append(f"Best: {winner} is better than every other candidate ({race['rule']}).")
    elif d == "equivalent":
        out.append(
            f"Equivalent: the {len(alive)} candidates left ({', '.join(alive)}) are within +-{race['delta']:g} top-1 "
            "of one another; the answer is that set."
        )
        if race.get("shared"):
            out.append(f"They share {race['shared']}.")
        if race.get("series_spread"):
            out.append(race["series_spread"])
    elif d == "undecided":
        more = race.get("more_seeds")
        extra = (
            f" The observed noise calls for about {more} seeds per remaining candidate (about "
            f"{race.get('more_trainings')} more trainings) to separate the leader from its closest contender."
            if more
            else ""
        )
        out.append(
            f"Undecided: {race['reason']}; {len(alive)} candidates remain in contention: {', '.join(alive)} "
            f"(leader {winner}).{extra}"
        )
    else:
        out.append(f"No decision yet: {race['reason']}.")
    out.append(
        f"Guarantee: {race['guarantee']} (delta {race['delta']:g}, alpha {race['alpha']:g}). Rounds: "
        + "; ".join(
            f"{r['round']}: {r['trainings']} trained, {len(r['in_contention'] or [])} in contention"
            for r in race["rounds"]
        )
        + "."
    )
    saved = race.get("compute_saved")
    if saved is not None:
        out.append(
            f"Trainings: {race['trainings']} against {race['uniform_trainings']} for uniform allocation at the same "
            f"final seed count ({saved:.0%} saved)."
        )
    if race.get("sigma") is not None:
        out.append(
            f"Pooled seed-to-seed standard deviation {race['sigma']:.4f} ({race['df']} degrees of freedom); a "
            f"candidate leaves when it trails the leader by more than {race['c_elim']:.2f} standard errors of the "
            "paired difference."
        )
    diffs = [x for x in race.get("differences") or [] if x["candidate"] in alive or x.get("paper")]
    if diffs:
        out.append(
            f"Paired differences to {winner} (simultaneous intervals): "
            + "; ".join(
                f"{x['candidate']} {_pct(x['difference'])} [{_pct(x['low'])}, {_pct(x['high'])}]" for x in diffs
            )
            + "."
        )
    paper = race.get("paper")
    if paper:
        out.append(f"The paper's triple {paper['candidate']}: {paper['status']}.")
    return out


def _race_details(race: dict, ranking: Ranking, classes: Sequence[NetworkClassLike], space: SearchSpace) -> dict:
    """What the race's record needs from the ranking: the paper's row, and what an equivalent set shares."""
    from ..records import candidate_key
    from ..scaling import PAPER

    out: dict[str, Any] = {}
    paper_key = candidate_key(*PAPER.as_tuple())
    diffs = {x["candidate"]: x for x in race.get("differences") or []}
    for key, x in diffs.items():
        x["paper"] = key == paper_key
    if not ranking.table.empty and paper_key in set(ranking.table["candidate"]):
        if paper_key == race.get("winner"):
            status = "the race's leader"
        elif paper_key in (race.get("in_contention") or []):
            status = "still in contention"
        else:
            out_at = next((r["round"] for r in race["rounds"] if paper_key in (r.get("eliminated") or [])), None)
            status = (
                f"out of contention at round {out_at}, trained in every round as a reference"
                if out_at
                else "out of contention"
            )
        d = diffs.get(paper_key)
        if d is not None:
            status += (
                f"; {_pct(d['difference'])} from {race.get('winner')} over {d['seeds']} paired seeds "
                f"[{_pct(d['low'])}, {_pct(d['high'])}]"
            )
        out["paper"] = {"candidate": paper_key, "status": status, **({} if d is None else d)}
    if race.get("decision") == "equivalent":
        members = [m for k in race["in_contention"] for m in _members(k, ranking, classes)]
        names = ("alpha", "beta", "gamma")
        out["shared"] = ", ".join(_span(name, [getattr(m, name) for m in members]) for name in names)
        from ..models import EfficientNetConfig

        e = space.extrapolation
        spread = class_spread(
            members, e.max_phi, EfficientNetConfig(resolution=e.base_resolution), e.resolution_multiple
        )
        if spread:
            out["series_spread"] = (
                f"Their B-series at phi = {spread['phi']} differ: {spread['macs'][0] / 1e9:.2f}-"
                f"{spread['macs'][1] / 1e9:.2f} GMACs, {spread['resolution'][0]}-{spread['resolution'][1]} px, depth "
                f"x{spread['depth'][0]:.2f}-{spread['depth'][1]:.2f}, width x{spread['width'][0]:.2f}-"
                f"{spread['width'][1]:.2f}."
            )
    return out


def _members(key: str, ranking: Ranking, classes: Sequence[NetworkClassLike]) -> list[Coefficients]:
    """The coefficient triples a trained candidate stands for (its class's members, else itself)."""
    row = ranking.table[ranking.table["candidate"] == key]
    if row.empty:
        return []
    r = row.iloc[0]
    cls = next((c for c in classes if c.label == r["class"]), None)
    if cls is not None:
        return [m.coefficients for m in cls.members]
    return [Coefficients(float(r["alpha"]), float(r["beta"]), float(r["gamma"]))]


def _span(name: str, values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{name} {lo:g}" if lo == hi else f"{name} {lo:g}-{hi:g}"


def _noise(ranking: Ranking, race: dict | None, held_out: int | None) -> dict:
    """The held-out size and the share of the seed-to-seed variance that sampling the held-out images explains
    (binomial p(1-p)/n at the candidates' mean accuracy, against the pooled variance)."""
    a = ranking.analysis
    var = None
    if race is not None and race.get("sigma") is not None:
        var = race["sigma"] ** 2
    elif a is not None and a.anova is not None:
        var = a.anova.ms_within
    out: dict[str, Any] = {"held_out_images": held_out, "pooled_variance": var}
    if not held_out or not var or a is None:
        return out
    p = sum(c.mean for c in a.candidates) / len(a.candidates)
    binomial = p * (1 - p) / held_out
    out.update(binomial_variance=binomial, binomial_share=round(min(1.0, binomial / var), 3))
    out["statement"] = (
        f"Held-out set: {held_out} images; at the mean accuracy {p:.3f} sampling them alone (binomial p(1-p)/n) "
        f"has standard deviation {math.sqrt(binomial):.4f}, {out['binomial_share']:.0%} of the pooled seed-to-seed "
        f"variance ({math.sqrt(var):.4f} standard deviation); an upper bound, as every candidate is scored on the "
        "same images and their errors partly coincide."
    )
    return out


# ------------------------------------------------------------ data, stale trials, data dictionary

UPSAMPLED_COLUMN = Column("upsampled", "detail", lambda v: "upsampled" if v else "")


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


def data_dictionary(b_rows: Sequence[dict], d_rows: Sequence[dict], effective: bool = False, base: Any = None) -> str:
    """COLUMNS.md: every column of trials.csv, b_series.csv and d_series.csv, described (``base``: the
    series' phi = 0 network, EfficientNet B0 by default)."""
    from ..models import family_of
    from ..records import COLUMN_DESCRIPTIONS, COLUMNS
    from .series import B_SERIES_DESCRIPTIONS, D_SERIES_DESCRIPTIONS, SERIES_DESCRIPTIONS

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
        "trials.csv",
        COLUMNS,
        COLUMN_DESCRIPTIONS,
        "One row per trial (candidate x seed), sorted by coefficients. A race trains every candidate at the first "
        "seeds and later seeds only for the candidates still in contention, so candidates have different seed "
        "counts; compare them on the seeds they share (best.json's `race.differences` are paired that way).",
    )
    if b_rows and (base is None or family_of(base).official(1)):
        lines += table(
            "b_series.csv",
            keys(b_rows),
            B_SERIES_DESCRIPTIONS,
            "The winner extrapolated to B0-B7 at ImageNet scale, beside the official EfficientNets "
            "(`official_*`, same phi)."
            + (
                f" `{EFFECTIVE_B_SERIES}` has the same columns for the winner's effective multipliers (best.json "
                "`effective`)."
                if effective
                else ""
            ),
        )
    elif b_rows:
        lines += table(
            "b_series.csv",
            keys(b_rows),
            B_SERIES_DESCRIPTIONS | SERIES_DESCRIPTIONS,
            f"The winner extrapolated to phi = 0..{len(b_rows) - 1} at ImageNet scale ({family_of(base).name}; "
            "no published series to set beside it).",
        )
    if d_rows:
        lines += table(
            "d_series.csv",
            keys(d_rows),
            D_SERIES_DESCRIPTIONS,
            "The winner's B-phi as EfficientDet backbones, beside the official EfficientDets (`official_*`).",
        )
    return "\n".join(lines).rstrip() + "\n"
