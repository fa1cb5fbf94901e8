"""The run folder's figures, drawn headless (Agg) and written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..atomic import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _mark_paper(ax, ranked: pd.DataFrame, x: str, y: str, *, size: float, label: str) -> None:
    """Box the paper's (1.2, 1.1, 1.15) where it is among the ranked candidates."""
    paper = ranked[ranked["paper"]]
    if not paper.empty:
        ax.scatter(
            paper[x],
            paper[y],
            marker="s",
            s=size,
            facecolors="none",
            edgecolors="tab:blue",
            linewidths=2,
            label=label,
            zorder=3,
        )


def _finish(fig, ax, path: Path, title: str, xlabel: str, ylabel: str, *, legend: bool, outside: bool = False) -> None:
    """Axis labels, title, grid and (``legend``) the legend of a candidate plot, then the file.

    ``outside`` puts the legend right of the axes, where a dozen lines' labels cover no point."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend and outside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    elif legend:
        ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def accuracy_vs_macs(
    ranking: pd.DataFrame, path: Path, title: str, *, budget: float | None = None, tolerance: float | None = None
) -> None:
    """Every ranked candidate's mean accuracy (with its interval) against its real MACs over the baseline.

    The budget's tolerance band is shaded; candidates outside it (the paper's
    triple under a measured constraint, say) are circled in red and named.
    """
    ranked = ranking[ranking["seeds"] > 0] if not ranking.empty else ranking
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if budget is not None and tolerance is not None:
        ax.axvspan(budget * (1 - tolerance), budget * (1 + tolerance), color="tab:green", alpha=0.12, lw=0)
        ax.axvline(budget, color="tab:green", lw=1, ls="--", label=f"budget {budget:g}x +/- {tolerance:.0%}")
    if not ranked.empty:
        yerr = [
            (ranked["accuracy_mean"] - ranked["ci_low"]).fillna(0).clip(lower=0),
            (ranked["ci_high"] - ranked["accuracy_mean"]).fillna(0).clip(lower=0),
        ]
        ax.errorbar(
            ranked["measured_ratio"],
            ranked["accuracy_mean"],
            yerr=yerr,
            fmt="o",
            color="0.45",
            ecolor="0.75",
            ms=5,
            label="candidates (mean, 95% CI)",
        )
        off = ranked[ranked["off_budget"]] if "off_budget" in ranked else ranked.iloc[0:0]
        if not off.empty:
            ax.scatter(
                off["measured_ratio"],
                off["accuracy_mean"],
                s=160,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=1.5,
                label="off the budget",
                zorder=3,
            )
            for _, r in off.iterrows():
                ax.annotate(
                    f"({r['alpha']:g}, {r['beta']:g}, {r['gamma']:g}) {r['measured_ratio']:.2f}x",
                    (r["measured_ratio"], r["accuracy_mean"]),
                    textcoords="offset points",
                    xytext=(6, -12),
                    fontsize=7,
                    color="tab:red",
                )
        _mark_paper(ax, ranked, "measured_ratio", "accuracy_mean", size=90, label="paper (1.2, 1.1, 1.15)")
        win = ranked.iloc[0]
        ax.scatter(
            [win["measured_ratio"]],
            [win["accuracy_mean"]],
            marker="*",
            s=220,
            color="tab:red",
            label=f"winner ({win['alpha']:g}, {win['beta']:g}, {win['gamma']:g})",
            zorder=4,
        )
    xlabel = "real MACs of the phi = 1 network over the baseline's (at the proxy resolution)"
    _finish(fig, ax, path, title, xlabel, "held-out top-1 accuracy", legend=True)


def alpha_beta_plane(ranking: pd.DataFrame, path: Path, title: str) -> None:
    """Mean accuracy over the alpha-beta plane (gamma written beside each point)."""
    if ranking.empty:
        ranking = pd.DataFrame(columns=["seeds", "alpha", "beta", "gamma", "accuracy_mean", "paper"])
    ranked = ranking[ranking["seeds"] > 0]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    sc = ax.scatter(ranked["alpha"], ranked["beta"], c=ranked["accuracy_mean"], cmap="viridis", s=160, edgecolors="k")
    for _, r in ranked.iterrows():
        ax.annotate(
            f"g={r['gamma']:g}",
            (r["alpha"], r["beta"]),
            textcoords="offset points",
            xytext=(0, 9),
            ha="center",
            fontsize=7,
        )
    if not ranked.empty:
        win = ranked.iloc[0]
        ax.scatter([win["alpha"]], [win["beta"]], marker="*", s=300, color="tab:red", label="winner", zorder=3)
    _mark_paper(ax, ranked, "alpha", "beta", size=260, label="paper")
    fig.colorbar(sc, ax=ax, label="held-out top-1 accuracy")
    _finish(fig, ax, path, title, "alpha (depth)", "beta (width)", legend=not ranked.empty)


def b_series_macs(rows: list[dict], path: Path, budget: float, label: str) -> None:
    """Measured MACs over B0 of the extrapolated and the official series against budget^phi."""
    phis = [r["phi"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(phis, [budget**p for p in phis], "k--", label=f"{budget:g}^phi (target)")
    ax.plot(phis, [r["macs_ratio"] for r in rows], "o-", color="tab:red", label=label)
    off = [r for r in rows if r.get("official_macs_ratio") is not None]
    if off:
        ax.plot(
            [r["phi"] for r in off],
            [r["official_macs_ratio"] for r in off],
            "s-",
            color="tab:blue",
            label="official b0-b7",
        )
    ax.set_yscale("log", base=2)
    ax.set_xlabel("phi")
    ax.set_ylabel("MACs / B0 (measured)")
    ax.set_title("B-series FLOPs growth")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)


def strategy_curves(series: dict[str, list[dict]], path: Path, title: str, *, x: str, xlabel: str) -> None:
    """Accuracy against ``x`` (real MACs, or measured training images/s), one line per scaling strategy from the
    baseline up (the paper's Fig. 8 in form); the seeds' range as bars, upsampled networks hollow."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    singles = {"depth": "tab:blue", "width": "tab:orange", "resolution": "tab:green"}
    # a line that is a single dimension keeps its colour whatever else it is equal to
    first = {name: name.split(" = ")[0] for name in series}
    tab20 = plt.get_cmap("tab20").colors  # pairs: a hue, then its light shade
    others = iter([tab20[2 * hue + light] for light in (0, 1) for hue in range(3, 10)] * 4)  # not the singles' hues
    for name, points in series.items():
        points = [p for p in points if p[x] == p[x]]  # NaN: not measured
        if not points:
            continue
        points = sorted(points, key=lambda p: p["s"])  # from the baseline up, whatever the axis
        color = singles.get(first[name]) or next(others)
        style = "--" if first[name] in singles else "-"
        xs, ys = [p[x] for p in points], [p["accuracy"] for p in points]
        ax.plot(xs, ys, style, color=color, lw=1.5, label=name)
        ax.errorbar(
            xs,
            ys,
            yerr=[[p["accuracy"] - p["low"] for p in points], [p["high"] - p["accuracy"] for p in points]],
            fmt="none",
            ecolor=color,
            alpha=0.5,
        )
        for p in points:
            hollow = p["upsampled"]
            ax.scatter([p[x]], [p["accuracy"]], s=36, color="white" if hollow else color, edgecolors=color, zorder=3)
            if p["s"] > 1:
                ax.annotate(
                    f"{p['s']:g}x", (p[x], p["accuracy"]), textcoords="offset points", xytext=(4, 3), fontsize=7
                )
    if any(p["upsampled"] for points in series.values() for p in points):
        ax.scatter([], [], s=36, color="white", edgecolors="0.3", label="upsampled (above native size)")
    if x == "images_per_second":
        ax.invert_xaxis()  # slower to the right, as cost grows
    ylabel = "held-out top-1 accuracy (mean; bars: seeds' range)"
    _finish(fig, ax, path, title, xlabel, ylabel, legend=bool(series), outside=True)
