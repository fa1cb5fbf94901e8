"""Racing seeds: more seeds only where the answer is still open.

The first round trains every candidate with the space's seeds. After each
round a *look* compares the candidates still in contention, and the next
round gives one more seed (the next unused integer) to those still in, so
every comparison is paired: one seed draws the same training subset and batch
order for every candidate.

The rule (Bonferroni-corrected sequential paired t-tests with a pooled
variance, and an intersection-union equivalence test), at a look with n seeds:

- noise: one variance for every candidate, the residual mean square of the
  two-way model score = candidate + seed over every score so far (the seed
  effect is shared, so it cancels in paired differences); its degrees of
  freedom are (cells) - (candidates + seeds - 1), (k - 1)(n - 1) when all k
  candidates have all n seeds: 21 with 22 candidates at 2 seeds;
- elimination: candidate i leaves the race when the leader's paired mean
  difference over i exceeds ``c_elim`` standard errors, ``c_elim`` the
  one-sided t quantile at alpha / 2 / ((K - 1) L) (K candidates at the start,
  L the most looks the race can take): P(the best candidate is ever
  eliminated) <= alpha / 2, over every look together;
- *best*: one candidate is left;
- *equivalent*: every pair of those left has |difference| + ``c_equiv``
  standard errors < delta, ``c_equiv`` the t quantile at
  alpha / 2 / (K (K - 1) / 2 L): P(declaring a set equivalent that holds two
  candidates delta or more apart) <= alpha / 2;
- *undecided*: max_seeds or max_trainings would be exceeded by the next round.

Together: P(a wrong decision) <= alpha (a best that is not the best, or an
equivalent set whose members differ by delta or more), whatever the means;
when the best leads every other by delta or more, the race names it unless
its limits run out first. The paper's triple is a contender while it is in
contention; once eliminated it is still trained in every round (as a
reference, so its difference to the winner has every seed) and never blocks
a decision.

Everything here is a pure function of the scores; ``look`` works on a batch
of races at once (numpy), which is how ``simulate`` checks the guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from ..records import TrialRecord, TrialState, candidate_key
from ..scaling import Candidate
from ..space import RacingSpec, SearchSpace
from .plan import units_for
from .rounds import Step
from .trials import Unit

RULE = (
    "sequential paired t-tests against the leader with the seed-to-seed variance pooled over candidates (two-way "
    "candidate + seed model), Bonferroni-corrected over the comparisons and the looks; equivalence by "
    "intersection-union tests within +-delta"
)
CONTINUE, BEST, EQUIVALENT, UNDECIDED = 0, 1, 2, 3
OUTCOMES = {CONTINUE: "continue", BEST: "best", EQUIVALENT: "equivalent", UNDECIDED: "undecided"}
POWER_Z = 0.8416  # the 80% power quantile, for "how many more seeds"


# ------------------------------------------------------------------ statistics (batched)


def pooled_variance(y: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residual variance and its degrees of freedom of score = candidate + seed, per race.

    ``y`` is (..., candidates, seeds), ``present`` marks the cells with a
    score. Least squares with the seed effects solved out (a candidates x
    candidates system per race), so a batch of races costs little.
    """
    m = present.astype(float)
    yv = np.where(present, y, 0.0)
    rows, cols = m.sum(-1), m.sum(-2)
    inv_cols = np.divide(1.0, cols, out=np.zeros_like(cols), where=cols > 0)
    a_mat = _diag(rows) - (m * inv_cols[..., None, :]) @ np.swapaxes(m, -1, -2)
    rhs = yv.sum(-1) - (m @ (inv_cols * yv.sum(-2))[..., None])[..., 0]
    effects = (np.linalg.pinv(a_mat, rcond=1e-9) @ rhs[..., None])[..., 0]
    seed_effects = inv_cols * (yv.sum(-2) - (np.swapaxes(m, -1, -2) @ effects[..., None])[..., 0])
    resid = np.where(present, yv - effects[..., :, None] - seed_effects[..., None, :], 0.0)
    df = m.sum((-1, -2)) - ((rows > 0).sum(-1) + (cols > 0).sum(-1) - 1)
    rss = (resid**2).sum((-1, -2))
    var = np.divide(rss, df, out=np.full_like(rss, np.nan), where=df > 0)
    return var, df


def _diag(v: np.ndarray) -> np.ndarray:
    out = np.zeros((*v.shape, v.shape[-1]))
    idx = np.arange(v.shape[-1])
    out[..., idx, idx] = v
    return out


def critical_values(df: np.ndarray, contenders: int, looks: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(c_elim, c_equiv): one-sided t quantiles for elimination and for equivalence, Bonferroni over the
    comparisons and the looks, each spending alpha / 2. Infinite without degrees of freedom."""
    df = np.asarray(df, dtype=float)
    comparisons = max(1, contenders - 1)
    pairs = max(1, contenders * (contenders - 1) // 2)
    ok = df > 0
    safe = np.where(ok, df, 1.0)
    c_elim = np.where(ok, sps.t.ppf(1 - alpha / 2 / (comparisons * looks), safe), np.inf)
    c_equiv = np.where(ok, sps.t.ppf(1 - alpha / 2 / (pairs * looks), safe), np.inf)
    return c_elim, c_equiv


def pair_differences(y: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean paired difference row - column over the seeds both have, and that seed count: (..., k, k) each."""
    m = present.astype(float)
    s = np.where(present, y, 0.0)
    mt = np.swapaxes(m, -1, -2)
    count = m @ mt
    total = s @ mt - m @ np.swapaxes(s, -1, -2)
    diff = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    return diff, count


def row_means(y: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Each candidate's mean over its scores (NaN without any)."""
    count = present.sum(-1)
    total = np.where(present, y, 0.0).sum(-1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


@dataclass(frozen=True)
class LookArrays:
    """One look over a batch of races."""

    alive: np.ndarray  # (B, k): contenders after the look
    outcome: np.ndarray  # (B,): CONTINUE, BEST, EQUIVALENT or UNDECIDED (nobody left with a score)
    leader: np.ndarray  # (B,): index of the best mean among the contenders before the look (-1: none)
    var: np.ndarray  # (B,) pooled variance
    df: np.ndarray  # (B,)
    c_elim: np.ndarray  # (B,)
    c_equiv: np.ndarray  # (B,)
    diff: np.ndarray  # (B, k, k) paired mean differences row - column
    count: np.ndarray  # (B, k, k) seeds they share


def look(
    y: np.ndarray, present: np.ndarray, alive: np.ndarray, *, delta: float, alpha: float, contenders: int, looks: int
) -> LookArrays:
    """Eliminate, then decide, for a batch of races (see the module's docstring for the rule)."""
    var, df = pooled_variance(y, present)
    c_elim, c_equiv = critical_values(df, contenders, looks, alpha)
    diff, count = pair_differences(y, present)
    scored = present.any(-1)
    contending = alive & scored
    means = np.where(contending, row_means(y, present), -np.inf)
    leader = np.where(contending.any(-1), np.argmax(means, axis=-1), -1)
    batch = np.arange(len(leader))
    lead = np.where(leader[:, None] >= 0, diff[batch, np.maximum(leader, 0), :], np.nan)  # leader - i
    n_lead = count[batch, np.maximum(leader, 0), :]
    se = np.sqrt(2 * var[:, None] / np.maximum(n_lead, 1))
    worse = (n_lead > 0) & (lead > c_elim[:, None] * se)
    new_alive = contending & ~worse
    left = new_alive.sum(-1)
    pair_se = np.sqrt(2 * var[:, None, None] / np.maximum(count, 1))
    within = (np.abs(diff) + c_equiv[:, None, None] * pair_se < delta) & (count > 0)
    both = new_alive[:, :, None] & new_alive[:, None, :]
    eye = np.eye(y.shape[-2], dtype=bool)[None]
    equivalent = (left >= 2) & np.all(within | ~both | eye, axis=(-1, -2))
    outcome = np.where(left == 0, UNDECIDED, np.where(left == 1, BEST, np.where(equivalent, EQUIVALENT, CONTINUE)))
    return LookArrays(new_alive, outcome, leader, var, df, c_elim, c_equiv, diff, count)


# ------------------------------------------------------------------ one race, as the runner drives it


def seed_sequence(first: Sequence[int], count: int) -> list[int]:
    """The first round's seeds, then the next unused integers from 0, up to ``count`` seeds."""
    seeds = list(first)
    candidate = 0
    while len(seeds) < count:
        if candidate not in seeds:
            seeds.append(candidate)
        candidate += 1
    return seeds[:count] if count >= len(first) else list(first)


def max_looks(spec: RacingSpec, first_seeds: int) -> int:
    """The most looks a race can take: one after each round, from the first round's seeds up to max_seeds."""
    return max(1, spec.max_seeds - first_seeds + 1)


@dataclass(frozen=True)
class Difference:
    candidate: str
    difference: float  # candidate - winner, paired over the seeds both have
    low: float  # simultaneous interval (c_equiv standard errors): every pair covered with 1 - alpha / 2
    high: float
    seeds: int


@dataclass(frozen=True)
class Look:
    """The race after one round: who is still in, what was decided, and the numbers behind it."""

    round: int
    seeds: tuple[int, ...]  # seeds trained so far (by the candidates still in)
    alive: tuple[str, ...]  # contenders after this look, best mean first
    eliminated: tuple[str, ...]  # left the race at this look
    carried: tuple[str, ...]  # trained in the next round as a reference only (the paper's triple once out)
    leader: str | None
    outcome: str  # continue | best | equivalent | undecided
    reason: str  # why the race stopped or goes on, in words
    sigma: float  # pooled seed-to-seed standard deviation of one score
    df: int
    c_elim: float
    c_equiv: float
    trainings: int  # units trained so far
    next_seed: int | None
    differences: tuple[Difference, ...]  # every scored candidate against the leader
    more_seeds: int | None = None  # undecided: seeds per remaining candidate the observed noise calls for

    @property
    def decided(self) -> bool:
        return self.outcome in ("best", "equivalent")

    def line(self) -> str:
        """One console line for this look."""
        head = f"round {self.round + 1} ({len(self.seeds)} seeds, {self.trainings} trainings):"
        out = f" {len(self.eliminated)} out" if self.eliminated else " none out"
        return f"{head}{out}, {len(self.alive)} in contention; {self.reason}"


def score_matrix(records: Sequence[TrialRecord], keys: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    """Candidates x seeds of full-schedule held-out accuracy; NaN where a unit has no score."""
    found = {
        (r.candidate, r.seed): float(r.accuracy)
        for r in records
        if r.rung is None and r.state is TrialState.COMPLETE and r.accuracy is not None
    }
    return np.array([[found.get((k, s), math.nan) for s in seeds] for k in keys], dtype=float).reshape(
        len(keys), len(seeds)
    )


def decide(
    keys: Sequence[str],
    matrix: np.ndarray,
    alive_before: Sequence[str],
    *,
    spec: RacingSpec,
    first_seeds: int,
    seeds: Sequence[int],
    trainings: int,
    round_index: int,
    reference: str | None = None,
) -> Look:
    """One look of one race, from its score matrix (``keys`` x ``seeds``, NaN where no score)."""
    k = len(keys)
    present = np.isfinite(matrix)
    alive = np.array([key in set(alive_before) for key in keys])
    res = look(
        matrix[None],
        present[None],
        alive[None],
        delta=spec.delta,
        alpha=spec.alpha,
        contenders=k,
        looks=max_looks(spec, first_seeds),
    )
    now = res.alive[0]
    means = row_means(matrix, present)
    order = sorted((i for i in range(k) if now[i]), key=lambda i: (-means[i], keys[i]))
    alive_keys = tuple(keys[i] for i in order)
    eliminated = tuple(sorted(keys[i] for i in range(k) if alive[i] and not now[i]))
    var, df = float(res.var[0]), int(res.df[0])
    c_elim, c_equiv = float(res.c_elim[0]), float(res.c_equiv[0])
    leader = alive_keys[0] if alive_keys else None
    outcome = OUTCOMES[int(res.outcome[0])]
    carried = tuple(sorted(k_ for k_ in (reference,) if k_ is not None and k_ in keys and k_ not in alive_keys))
    next_cost = len(alive_keys) + len(carried)
    n = len(seeds)
    next_seed = None
    more = None
    if outcome == "best":
        reason = f"decided: {leader} is better than every other candidate"
    elif outcome == "equivalent":
        reason = f"decided: the {len(alive_keys)} left are equivalent within +-{spec.delta:g}"
    elif outcome == "undecided":
        reason = "no candidate in contention has a score"
    elif n >= spec.max_seeds:
        outcome, reason = "undecided", f"racing.max_seeds ({spec.max_seeds}) reached"
    elif spec.max_trainings is not None and trainings + next_cost > spec.max_trainings:
        outcome = "undecided"
        reason = f"racing.max_trainings ({spec.max_trainings}) would be exceeded by the next round ({next_cost} more)"
    else:
        next_seed = seed_sequence(seeds, n + 1)[-1]
        reason = f"next: seed {next_seed} for the {len(alive_keys)} in contention" + (
            f" and the reference {', '.join(carried)}" if carried else ""
        )
    differences = ()
    if leader is not None:
        li = keys.index(leader)
        rows = []
        for i in range(k):
            shared = int(res.count[0, i, li])
            if i == li or shared == 0:
                continue
            d = float(res.diff[0, i, li])
            half = c_equiv * math.sqrt(2 * var / shared) if math.isfinite(var) else math.nan
            rows.append(Difference(keys[i], d, d - half, d + half, shared))
        differences = tuple(sorted(rows, key=lambda r: (-r.difference, r.candidate)))
    if outcome == "undecided" and len(alive_keys) >= 2 and math.isfinite(var):
        more = seeds_needed(var, [d.difference for d in differences if d.candidate in alive_keys], c_elim, spec.delta)
    return Look(
        round=round_index,
        seeds=tuple(seeds),
        alive=alive_keys,
        eliminated=eliminated,
        carried=carried if next_seed is not None else (),
        leader=leader,
        outcome=outcome,
        reason=reason,
        sigma=math.sqrt(var) if math.isfinite(var) else math.nan,
        df=df,
        c_elim=c_elim,
        c_equiv=c_equiv,
        trainings=trainings,
        next_seed=next_seed,
        differences=differences,
        more_seeds=more,
    )


def seeds_needed(var: float, gaps: Sequence[float], c_elim: float, delta: float) -> int | None:
    """Seeds per candidate for the leader to beat its closest contender at 80% power, if their gap is what
    was observed (a gap under delta counts as delta: below it the answer is 'equivalent', no cheaper)."""
    if not gaps or not math.isfinite(c_elim):
        return None
    gap = max(abs(max(gaps)), delta)
    return int(math.ceil(2 * var * (c_elim + POWER_Z) ** 2 / gap**2))


class Racing:
    """The race as a policy of the rounds driver: its state is only what the records say."""

    name = "racing"

    def __init__(self, space: SearchSpace, candidates: Sequence[Candidate], *, reference: Candidate | None = None):
        self.space = space
        self.candidates = list(candidates)
        self.keys = [candidate_key(*c.coefficients.as_tuple()) for c in self.candidates]
        self.reference = candidate_key(*reference.coefficients.as_tuple()) if reference is not None else None
        self.alive = list(self.keys)
        self.seeds = list(space.seeds)

    def first(self) -> list[Unit]:
        return units_for(self.space, self.candidates, seeds=self.seeds)

    def after(self, index: int, records: Sequence[TrialRecord]) -> Step:
        result = decide(
            self.keys,
            score_matrix(records, self.keys, self.seeds),
            self.alive,
            spec=self.space.racing,
            first_seeds=len(self.space.seeds),
            seeds=self.seeds,
            trainings=sum(r.state.finished for r in records),
            round_index=index,
            reference=self.reference,
        )
        self.alive = list(result.alive)
        if result.next_seed is None:
            return Step((), result)
        self.seeds.append(result.next_seed)
        trained = set(result.alive) | set(result.carried)
        chosen = [c for c, key in zip(self.candidates, self.keys) if key in trained]
        return Step(tuple(units_for(self.space, chosen, seeds=[result.next_seed], stage=index + 1)), result)


# ------------------------------------------------------------------ simulation


@dataclass(frozen=True)
class Simulation:
    outcome: np.ndarray  # (races,) BEST, EQUIVALENT or UNDECIDED
    winner: np.ndarray  # (races,) index of the leader at the end (-1: none)
    alive: np.ndarray  # (races, k) the candidates left at the end
    trainings: np.ndarray  # (races,)
    seeds: np.ndarray  # (races,) seeds per candidate still in at the end


def simulate(
    means: Sequence[float],
    *,
    sigma: float,
    seed_sd: float,
    spec: RacingSpec,
    first_seeds: int,
    races: int,
    rng: np.random.Generator,
    reference: int | None = None,
) -> Simulation:
    """Many races at once over Gaussian scores mean + seed effect + noise, through ``look``, as ``Racing`` runs them.

    The seed effect is shared by every candidate at that seed (one subset and batch order); the reference
    (an index) is trained in every round once out, like the paper's triple.
    """
    mu = np.asarray(means, dtype=float)
    k, n_max = len(mu), spec.max_seeds
    seed_fx = rng.normal(0, seed_sd, (races, 1, n_max))
    y = mu[None, :, None] + seed_fx + rng.normal(0, sigma, (races, k, n_max))
    trained = np.zeros((races, k, n_max), dtype=bool)
    trained[:, :, :first_seeds] = True
    alive = np.ones((races, k), dtype=bool)
    running = np.ones(races, dtype=bool)
    outcome = np.full(races, UNDECIDED)
    winner = np.full(races, -1)
    seeds = np.full(races, first_seeds)
    looks = max_looks(spec, first_seeds)
    ref = np.zeros(k, dtype=bool)
    if reference is not None:
        ref[reference] = True
    for n in range(first_seeds, n_max + 1):
        idx = np.flatnonzero(running)  # only the races still running are looked at
        res = look(
            np.where(trained[idx], y[idx], np.nan),
            trained[idx],
            alive[idx],
            delta=spec.delta,
            alpha=spec.alpha,
            contenders=k,
            looks=looks,
        )
        alive[idx] = res.alive
        means_now = np.where(res.alive, row_means(y[idx], trained[idx]), -np.inf)
        winner[idx] = np.where(res.alive.any(-1), np.argmax(means_now, -1), -1)
        stopped = res.outcome != CONTINUE
        outcome[idx[stopped]] = res.outcome[stopped]
        running[idx[stopped]] = False
        if spec.max_trainings is not None:
            cost = (alive | ref[None]).sum(-1)
            running &= ~(trained.sum((-1, -2)) + cost > spec.max_trainings)
        if n == n_max or not running.any():
            break
        trained[:, :, n] = running[:, None] & (alive | ref[None])
        seeds = np.where(running, n + 1, seeds)
    return Simulation(outcome, winner, alive, trained.sum((-1, -2)), seeds)


# ------------------------------------------------------------------ the race, as the report keeps it


def race_summary(rounds: Sequence, records: Sequence[TrialRecord], spec: RacingSpec) -> dict | None:
    """best.json's ``race``: the decision, the rule, every round's contenders, the compute spent against uniform
    allocation at the same final seed count, and the paired differences to the winner (``rounds`` are the
    driver's ``RoundResult``s, each with its ``Look``)."""
    looks = [r.decision for r in rounds if isinstance(r.decision, Look)]
    if not rounds:
        return None
    spent = sum(r.state.finished for r in records)
    candidates = sorted({r.candidate for r in records})
    seeds_of: dict[str, int] = {}
    for r in records:
        if r.state is TrialState.COMPLETE:
            seeds_of[r.candidate] = seeds_of.get(r.candidate, 0) + 1
    last = looks[-1] if looks else None
    stopped = not rounds[-1].complete
    final_seeds = max(seeds_of.values(), default=0)
    uniform = len(candidates) * final_seeds
    out = {
        "decision": None if last is None or stopped else last.outcome,
        "rule": RULE,
        "guarantee": (
            f"P(a wrong decision) <= {spec.alpha:g}: a best that is not the best, or an equivalent set whose members "
            f"differ by {spec.delta:g} or more"
        ),
        "delta": spec.delta,
        "alpha": spec.alpha,
        "max_seeds": spec.max_seeds,
        "max_trainings": spec.max_trainings,
        "reason": "stopped before the round was complete: run the same command again to resume the race"
        if stopped or last is None
        else last.reason,
        "winner": None if last is None else last.leader,
        "in_contention": [] if last is None else list(last.alive),
        "rounds": [
            {
                "round": r.index + 1,
                "seeds": list(r.seeds),
                "trainings": r.units,
                "complete": r.complete,
                "in_contention": None if r.decision is None else list(r.decision.alive),
                "eliminated": None if r.decision is None else list(r.decision.eliminated),
                "carried_as_reference": None if r.decision is None else list(r.decision.carried),
            }
            for r in rounds
        ],
        "seeds_per_candidate": dict(sorted(seeds_of.items())),
        "trainings": int(spent),
        "uniform_trainings": int(uniform),
        "compute_saved": round(1 - spent / uniform, 4) if uniform else None,
    }
    if last is not None:
        out.update(
            sigma=_finite(last.sigma),
            df=last.df,
            c_elim=_finite(last.c_elim),
            c_equiv=_finite(last.c_equiv),
            differences=[
                {
                    "candidate": d.candidate,
                    "difference": _finite(d.difference),
                    "low": _finite(d.low),
                    "high": _finite(d.high),
                    "seeds": d.seeds,
                }
                for d in last.differences
            ],
            more_seeds=last.more_seeds,
            more_trainings=None
            if last.more_seeds is None
            else max(0, last.more_seeds - len(last.seeds)) * len(last.alive),
        )
    return out


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
