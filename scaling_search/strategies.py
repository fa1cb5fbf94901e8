"""Scaling strategies at equal real cost: how a cost multiple s is spent on depth, width and resolution.

Every strategy is a split of log s (Dollar, Singh, Girshick 2021, pycls ``scaler.py``): with shares
e_d + e_w + e_r = 1, depth grows by s^e_d, width by s^(e_w / 2) and resolution by s^(e_r / 2), so
that d * w^2 * r^2 = s before rounding. Single dimensions put the whole of log s on one axis; a
compound triple (alpha, beta, gamma) is the split ln alpha : 2 ln beta : 2 ln gamma, its phi
being log s / log(alpha * beta^2 * gamma^2).

Rounding (blocks per stage, channels to multiples of 8, resolution to a multiple of pixels) moves
the real cost off s, and by different amounts for different strategies; comparing them at nominal
s would compare unequal networks. ``solve`` therefore walks the strategy's own path, a continuous
factor t giving (t^e_d, t^(e_w / 2), t^(e_r / 2)), to where the rounded network's real MACs (the
caller's counter) cross s times the baseline's; where one rounding step jumps over the whole
tolerance (a depth multiplier just above 1 adds a block to every stage at once), it also re-solves
one growing dimension alone, and keeps the network within the tolerance nearest the strategy's
unrounded point. It says whether the network it returns is within the tolerance; the caller decides
what to do when none is (the ``curves`` command refuses, naming the nearest network and its cost).

Pure Python on purpose: the network and its counter come in as one function, so any family (and
its own rounding) can be scaled this way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from .errors import UsageError
from .scaling import PAPER, Coefficients, round_resolution

# Published splits (shares of log s over depth, width, resolution).
UNIFORM_SPLIT = (1 / 3, 1 / 3, 1 / 3)  # Dollar et al.'s "dwr": each dimension an equal share
FAST_SPLIT = (0.1, 0.8, 0.1)  # Dollar et al.'s fast "dWr" (pycls "d1_w8_g8_r1"): d s^0.1, w s^0.4, r s^0.05

SINGLE = "single"  # one dimension
MIXED = "mixed"  # a fixed split of all three (uniform, dWr)
COMPOUND = "compound"  # EfficientNet's rule from a coefficient triple


@dataclass(frozen=True)
class Strategy:
    """One way of spending a cost multiple: shares of log s over depth, width and resolution (sum 1)."""

    name: str
    depth: float  # e_d
    width: float  # e_w (channels grow by s^(e_w / 2): MACs go with width squared)
    resolution: float  # e_r (the side grows by s^(e_r / 2))
    kind: str = MIXED
    coefficients: Coefficients | None = None  # the triple of a compound strategy

    def __post_init__(self) -> None:
        shares = (self.depth, self.width, self.resolution)
        if any(not math.isfinite(e) or e < 0 for e in shares) or not math.isclose(sum(shares), 1.0, abs_tol=1e-9):
            raise UsageError(f"strategy {self.name}: shares of log s must be >= 0 and sum to 1, got {shares}")

    def multipliers(self, factor: float) -> tuple[float, float, float]:
        """Depth, width and resolution multipliers at continuous factor t (before rounding)."""
        return factor**self.depth, factor ** (self.width / 2), factor ** (self.resolution / 2)

    @property
    def activation_exponent(self) -> float:
        """Activations (conv outputs) grow about as s to this power: depth x width x resolution^2."""
        return self.depth + self.width / 2 + self.resolution

    def phi(self, s: float) -> float | None:
        """A compound strategy's phi at cost multiple s, from its theoretical ratio (None for the others)."""
        if self.coefficients is None:
            return None
        return math.log(s) / math.log(self.coefficients.flops_ratio)

    def describe(self) -> str:
        if self.coefficients is not None:
            c = self.coefficients
            return f"compound ({c.alpha:g}, {c.beta:g}, {c.gamma:g})"
        d, w, r = (f"{e:.3g}" for e in (self.depth, self.width / 2, self.resolution / 2))
        return f"depth s^{d}, width s^{w}, resolution s^{r}"


DEPTH = Strategy("depth", 1.0, 0.0, 0.0, SINGLE)
WIDTH = Strategy("width", 0.0, 1.0, 0.0, SINGLE)
RESOLUTION = Strategy("resolution", 0.0, 0.0, 1.0, SINGLE)
UNIFORM = Strategy("uniform", *UNIFORM_SPLIT, MIXED)
FAST = Strategy("dWr", *FAST_SPLIT, MIXED)
BUILT_IN: dict[str, Strategy] = {s.name: s for s in (DEPTH, WIDTH, RESOLUTION, UNIFORM, FAST)}


def compound(coefficients: Coefficients, name: str | None = None) -> Strategy:
    """EfficientNet's compound rule as a split: ln alpha : 2 ln beta : 2 ln gamma of log(alpha beta^2 gamma^2)."""
    c = coefficients
    total = math.log(c.flops_ratio)
    if total <= 0:
        raise UsageError(f"compound ({c.alpha:g}, {c.beta:g}, {c.gamma:g}) does not grow the network: no split of s")
    shares = (math.log(c.alpha) / total, 2 * math.log(c.beta) / total, 2 * math.log(c.gamma) / total)
    label = name or f"compound({c.alpha:g},{c.beta:g},{c.gamma:g})"
    # The shares come from logs: renormalise so they sum to 1 exactly.
    norm = sum(shares)
    return Strategy(label, *(e / norm for e in shares), COMPOUND, c)


PAPER_STRATEGY = compound(PAPER, "paper")


def parse_compound(text: str) -> Coefficients:
    """``compound:A,B,G`` (or ``A,B,G``) as coefficients."""
    body = text.split(":", 1)[1] if text.startswith("compound:") else text
    parts = body.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise UsageError(
            f"strategy {text!r}: write a compound triple as compound:ALPHA,BETA,GAMMA, e.g. compound:1.2,1.1,1.15"
        )
    return Coefficients(*values)


# ------------------------------------------------------------------ equal real cost

# What the caller's family builds from (depth, width, resolution px): a signature of the rounded
# network (equal signatures: the same network) and its real MACs over the baseline's.
Build = Callable[[float, float, int], tuple[Hashable, float]]


@dataclass(frozen=True)
class Scaled:
    """The rounded network a strategy spends ``target`` on, and what it really costs."""

    strategy: Strategy
    target: float  # s
    depth: float  # multipliers handed to the builder
    width: float
    resolution: int  # pixels, rounded to the multiple
    gamma: float  # resolution over the base resolution
    cost: float  # real MACs over the baseline's
    tolerance: float
    departure: float = 0.0  # log distance of (depth, width, resolution) from the strategy's unrounded point

    @property
    def within(self) -> bool:
        """Strictly within the tolerance (as the candidate grid decides it)."""
        return abs(self.cost / self.target - 1) < self.tolerance

    @property
    def error(self) -> float:
        return self.cost / self.target - 1


def check_multiples(values: Sequence[float]) -> tuple[float, ...]:
    """Cost multiples as given: each at least 1 (1 is the baseline itself), sorted, repeats dropped."""
    out = []
    for v in values:
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 1:
            raise UsageError(f"cost multiple s = {v!r} must be at least 1 (s = 1 is the baseline; e.g. --s 2 4)")
        out.append(float(v))
    return tuple(sorted(set(out)))


def nominal(strategy: Strategy, target: float, base_resolution: int) -> tuple[float, float, float]:
    """The unrounded point of ``strategy`` at ``target``: depth, width multipliers and resolution in pixels."""
    d, w, r = strategy.multipliers(target)
    return d, w, base_resolution * r


# A line through network space: a parameter >= 1 -> (depth, width, resolution px); its cost never falls as it grows.
_Line = Callable[[float], tuple[float, float, int]]


@dataclass(frozen=True)
class _Option:
    depth: float
    width: float
    resolution: int
    signature: Hashable
    cost: float


def _bisect(low: float, high: float, above: Callable[[float], bool], steps: int = 48) -> float:
    """The smallest x in [low, high] (to float precision in log x) where ``above`` turns true."""
    lo, hi = math.log(low), math.log(high)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if above(math.exp(mid)):
            hi = mid
        else:
            lo = mid
    return math.exp(hi)


def _settle(line: _Line, x: float, build: Build) -> _Option:
    """The network at ``x``, handed on from the middle (in log) of the interval of x that builds it."""
    sig = build(*line(x))[0]
    same = lambda y: build(*line(y))[0] == sig  # noqa: E731
    low = 1.0 if same(1.0) else _bisect(1.0, x, same)
    high = x
    if not same(2 * x):
        high = _bisect(x, 2 * x, lambda y: not same(y))
    middle = math.sqrt(low * high)
    if not same(middle):  # a sliver of an interval: keep the point found
        middle = x
    d, w, r = _tidy(line(middle), sig, build)
    signature, cost = build(d, w, r)
    return _Option(d, w, r, signature, cost)


def _around(line: _Line, target: float, build: Build) -> list[_Option]:
    """The networks on ``line`` just below and at-or-above ``target`` (only one where the line starts above)."""
    cost = lambda x: build(*line(x))[1]  # noqa: E731
    if cost(1.0) >= target:
        return [_settle(line, 1.0, build)]
    high = max(2.0, target)
    while cost(high) < target:  # rounding down can need more than the nominal factor
        high *= 2
        if high > 2**40:
            return [_settle(line, high, build)]
    crossing = _bisect(1.0, high, lambda x: cost(x) >= target)
    below = crossing * (1 - 1e-12)
    return [_settle(line, x, build) for x in ((crossing, below) if below > 1.0 else (crossing,))]


def _tidy(point: tuple[float, float, int], sig: Hashable, build: Build) -> tuple[float, float, int]:
    """Multipliers to 4 decimals where that builds the same network (readable keys), else as they are."""
    d, w, r = point
    short = (round(d, 4), round(w, 4), r)
    if short[0] >= 1 and short[1] >= 1 and build(*short)[0] == sig:
        return short
    return d, w, r


def solve(
    strategy: Strategy,
    target: float,
    build: Build,
    *,
    base_resolution: int,
    multiple: int = 8,
    tolerance: float = 0.05,
) -> Scaled:
    """The rounded network that spends ``target`` x the baseline's real MACs the way ``strategy`` says.

    Candidates: the networks on the strategy's path t -> (t^e_d, t^(e_w / 2), t^(e_r / 2)) just
    below and above where its real cost crosses ``target``; and, because one rounding step of a
    mixed strategy can jump over the whole tolerance (each stage's depth rounds up at once), each
    of those with one of its growing dimensions re-solved alone (the others held) to cross
    ``target``. The candidate within the tolerance whose multipliers are nearest the strategy's
    unrounded point (log distance) wins; when none is within, the one nearest in cost is returned
    with ``within`` false. A single-dimension strategy has one line, its own path.
    """
    if not (isinstance(target, (int, float)) and math.isfinite(target) and target >= 1):
        raise UsageError(f"cost multiple s = {target!r} must be at least 1")
    build = _memo(build)

    def on_path(t: float) -> tuple[float, float, int]:
        d, w, r = strategy.multipliers(t)
        return d, w, round_resolution(base_resolution * r, multiple)

    if target == 1:
        found = [_settle(on_path, 1.0, build)]
    else:
        found = _around(on_path, target, build)
        for start in list(found):
            for line in _trims(strategy, start, base_resolution, multiple):
                found += _around(line, target, build)
    aim = nominal(strategy, target, base_resolution)

    def departure(o: _Option) -> float:
        got = (o.depth, o.width, o.resolution)
        return math.sqrt(sum(math.log(g / a) ** 2 for g, a in zip(got, aim)))

    inside = [o for o in found if abs(o.cost / target - 1) < tolerance]
    best = min(inside, key=departure) if inside else min(found, key=lambda o: abs(math.log(o.cost / target)))
    return Scaled(
        strategy=strategy,
        target=float(target),
        depth=best.depth,
        width=best.width,
        resolution=best.resolution,
        gamma=best.resolution / base_resolution,
        cost=best.cost,
        tolerance=tolerance,
        departure=departure(best),
    )


def _memo(build: Build) -> Build:
    """``build`` remembered per point: the interval searches ask for the same networks again and again."""
    seen: dict[tuple[float, float, int], tuple[Hashable, float]] = {}

    def cached(d: float, w: float, r: int) -> tuple[Hashable, float]:
        key = (d, w, r)
        if key not in seen:
            seen[key] = build(d, w, r)
        return seen[key]

    return cached


def _trims(strategy: Strategy, start: _Option, base_resolution: int, multiple: int) -> list[_Line]:
    """Lines through ``start`` along each dimension the strategy grows, the other two held."""
    d0, w0, r0 = start.depth, start.width, start.resolution
    lines: list[_Line] = []
    if strategy.width > 0:
        lines.append(lambda m: (d0, m, r0))
    if strategy.resolution > 0:
        lines.append(lambda m: (d0, w0, round_resolution(base_resolution * m, multiple)))
    if strategy.depth > 0:
        lines.append(lambda m: (m, w0, r0))
    return lines if len(lines) > 1 else []  # a single dimension's only line is its path
