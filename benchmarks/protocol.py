"""The measurement protocol every benchmark here follows, so figures hold on a noisy machine.

- the machine and its load average are printed before and after: a figure
  measured under load says so;
- every path is run once untimed (imports, allocator, first-shape caches);
- then ``repeats`` rounds, each running every path once, in an order that
  rotates from round to round: a burst of outside load falls on all paths
  alike instead of on whichever ran last;
- each path's figure is its best round (the least disturbed), printed with
  min / median / max; ratios are best against best, with the per-round
  ratios beside them (the two paths of one round shared the machine's load).

A figure reproduces when a re-run on the same machine lands inside the
printed min..max of the first.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Series:
    """One path's figure over the repeats: seconds (lower is better) or a rate (higher is better)."""

    name: str
    values: tuple[float, ...]
    unit: str = "s"
    higher_is_better: bool = False

    @property
    def best(self) -> float:
        return max(self.values) if self.higher_is_better else min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """(max - min) / best: how far a re-run may land from this one."""
        return (max(self.values) - min(self.values)) / self.best

    def line(self) -> str:
        v = sorted(self.values)
        return (
            f"{self.name:<44} best {_fmt(self.best):>9} {self.unit:<6} "
            f"(min {_fmt(v[0])}, median {_fmt(self.median)}, max {_fmt(v[-1])}; spread {100 * self.spread:.0f}%)"
        )


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The hardware and software a figure belongs to."""
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count() or 1
    state = "quiet" if five < 0.25 * cores else "UNDER LOAD"
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {cores} cores: {state}"


def header(title: str) -> None:
    print(title)
    print(f"machine     {machine()}")
    print(f"before      {load()}", flush=True)


def footer() -> None:
    print(f"after       {load()}", flush=True)


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """A path whose figure is its wall-clock seconds."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def interleave(
    paths: dict[str, Callable[[], float]],
    repeats: int,
    *,
    warmup: int = 1,
    unit: str = "s",
    higher_is_better: bool = False,
    progress: bool = True,
) -> dict[str, Series]:
    """Warm each path up, then run ``repeats`` rounds of all paths in rotating order."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    names = list(paths)
    for _ in range(warmup):
        for name in names:
            paths[name]()
    values: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            values[name].append(float(paths[name]()))
        if progress:
            done = ", ".join(f"{n} {_fmt(values[n][-1])}" for n in names)
            print(f"  round {r + 1}/{repeats}: {done} {unit}", flush=True)
    return {n: Series(n, tuple(v), unit, higher_is_better) for n, v in values.items()}


@dataclass(frozen=True)
class Verdict:
    figure: str
    goal: str
    met: bool

    def line(self) -> str:
        return f"{'MEETS' if self.met else 'MISSES'} goal {self.goal}: {self.figure}"


def ratio(fast: Series, slow: Series, goal: float, what: str) -> Verdict:
    """How many times better ``fast`` is than ``slow`` (best against best), against a goal."""
    if fast.higher_is_better:
        best = fast.best / slow.best
        rounds = [f / s for f, s in zip(fast.values, slow.values)]
    else:
        best = slow.best / fast.best
        rounds = [s / f for f, s in zip(fast.values, slow.values)]
    figure = f"{what}: {best:.2f}x (per round {min(rounds):.2f}x..{max(rounds):.2f}x; {fast.name} vs {slow.name})"
    return Verdict(figure, f">= {goal:g}x", best >= goal)


def limit(series: Series, most: float, what: str) -> Verdict:
    """A figure that must stay under a ceiling (seconds) or above a floor (rates)."""
    if series.higher_is_better:
        return Verdict(f"{what}: {_fmt(series.best)} {series.unit}", f">= {most:g} {series.unit}", series.best >= most)
    return Verdict(f"{what}: {_fmt(series.best)} {series.unit}", f"< {most:g} {series.unit}", series.best < most)


def report(series: dict[str, Series], verdicts: list[Verdict]) -> None:
    for s in series.values():
        print("  " + s.line())
    for v in verdicts:
        print(v.line())
