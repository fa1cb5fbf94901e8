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


def accuracy_vs_macs(ranking: pd.DataFrame, path: Path, title: str) -> None:
    """Every ranked candidate's mean accuracy (with its interval) against its MACs."""
    ranked = ranking[ranking["seeds"] > 0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    yerr = [
        (ranked["accuracy_mean"] - ranked["ci_low"]).fillna(0).clip(lower=0),
        (ranked["ci_high"] - ranked["accuracy_mean"]).fillna(0).clip(lower=0),
    ]
    ax.errorbar(
        ranked["macs"] / 1e6,
        ranked["accuracy_mean"],
        yerr=yerr,
        fmt="o",
        color="0.45",
        ecolor="0.75",
        ms=5,
        label="candidates (mean, 95% CI)",
    )
    paper = ranked[ranked["paper"]]
    if not paper.empty:
        ax.scatter(
            paper["macs"] / 1e6,
            paper["accuracy_mean"],
            marker="s",
            s=90,
            facecolors="none",
            edgecolors="tab:blue",
            linewidths=2,
            label="paper (1.2, 1.1, 1.15)",
            zorder=3,
        )
    if not ranked.empty:
        win = ranked.iloc[0]
        ax.scatter(
            [win["macs"] / 1e6],
            [win["accuracy_mean"]],
            marker="*",
            s=220,
            color="tab:red",
            label=f"winner ({win['alpha']:g}, {win['beta']:g}, {win['gamma']:g})",
            zorder=4,
        )
    ax.set_xlabel("MACs of the phi = 1 network at the proxy resolution (M)")
    ax.set_ylabel("held-out top-1 accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def alpha_beta_plane(ranking: pd.DataFrame, path: Path, title: str) -> None:
    """Mean accuracy over the alpha-beta plane (gamma written beside each point)."""
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
    paper = ranked[ranked["paper"]]
    if not paper.empty:
        ax.scatter(
            paper["alpha"],
            paper["beta"],
            marker="s",
            s=260,
            facecolors="none",
            edgecolors="tab:blue",
            linewidths=2,
            label="paper",
            zorder=3,
        )
    fig.colorbar(sc, ax=ax, label="held-out top-1 accuracy")
    ax.set_xlabel("alpha (depth)")
    ax.set_ylabel("beta (width)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if not ranked.empty:
        ax.legend(fontsize=8, loc="best")
    _save(fig, path)


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
