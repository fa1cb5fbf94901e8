"""``scaling-search curves``: the baseline scaled by several strategies at equal real cost, trained like the search.

Does compound scaling beat each single dimension at the same cost, and does the coefficient triple a
phi = 1 search found stay best at 2x, 4x, ...? Each strategy (``strategies.py``) is solved at each cost
multiple s so that its rounded network's real MACs are within the space's tolerance of s times the
baseline's; a strategy with no such network is refused before anything trains. Every network then
trains with the search's proxy recipe and seeds, as units of the project's backends (a unit is a
network x seed, so two strategies that round to one network share its trainings), in a study of its
own under ``curves/`` in the run folder: resumable, nothing trained twice.

The curves start at their own base resolution when the search's would push resolution-only scaling
above the images' native size at the largest s (Imagenette is stored at 128 px): the largest
multiple of the space's rounding at which the resolution-only network of the largest s stays within
the native size, unless that would be below ``MIN_BASE_RESOLUTION``; then the search's is kept and
the upsampled networks are marked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models import compound as compound_network
from ..models import family_of, network_key
from ..scaling import Coefficients
from ..space import SearchSpace, load_space
from ..strategies import (
    BUILT_IN,
    COMPOUND,
    PAPER_STRATEGY,
    Build,
    Scaled,
    Strategy,
    check_multiples,
    compound,
    parse_compound,
    solve,
)
from .plan import baseline_config

CURVES_DIR = "curves"
DEFAULT_TARGETS = (2.0, 4.0)
MIN_BASE_RESOLUTION = 32  # B0's stride 32 leaves a 1x1 last feature map there: no lower base for the curves
# What a strategy name on the command line may be; compound:A,B,G is any triple.
RUN_STRATEGIES = ("winner", "set")  # need a finished run folder
STRATEGY_NAMES = (*BUILT_IN, "paper", *RUN_STRATEGIES)
_KEY = re.compile(r"^a([0-9.]+)-b([0-9.]+)-g([0-9.]+)$")

BASELINE = Strategy("baseline", 1 / 3, 1 / 3, 1 / 3, "baseline")  # s = 1: every strategy's starting point


@dataclass(frozen=True)
class Source:
    """What the curves run over: a search space, and the finished search's winner and set when there is one."""

    space: SearchSpace
    run_dir: Path | None = None
    winner: Coefficients | None = None
    others: tuple[Coefficients, ...] = ()  # the rest of the winner's decision (or confidence) set, best first
    set_name: str = ""  # what the set is, in words
    native_size: int | None = None
    stored_size: int | None = None
    num_classes: int = 10

    @property
    def detail(self) -> int | None:
        """The side up to which the images hold real detail (None: unknown)."""
        sizes = [s for s in (self.native_size, self.stored_size) if s]
        return min(sizes) if sizes else None


def _coefficients_of(key: str) -> Coefficients | None:
    m = _KEY.match(key)
    return Coefficients(*(float(g) for g in m.groups())) if m else None


def load_run(run_dir: Path) -> Source:
    """A finished run folder: its space, data sizes, winner and decision set; refused when the search is not done."""
    meta_path, best_path = run_dir / "run.json", run_dir / "best.json"
    if not run_dir.is_dir() or not meta_path.is_file():
        raise UsageError(
            f"{run_dir} is not a run folder (no run.json): give the --out folder of a finished 'scaling-search run', "
            "or --space/--preset to scale a baseline without a search"
        )
    try:
        meta = json.loads(meta_path.read_text())
        best = json.loads(best_path.read_text()) if best_path.is_file() else {}
    except (OSError, ValueError):
        raise UsageError(f"{run_dir}: run.json or best.json is unreadable: the run folder is damaged") from None
    if not best.get("complete") or best.get("alpha") is None:
        done = f" ({best.get('units_finished', 0)} of {best.get('units_total', '?')} trials finished)" if best else ""
        raise UsageError(
            f"{run_dir} holds no finished search{done}: run the same 'scaling-search run' to completion first"
        )
    space = load_space(run_dir / "space.yaml")
    race = best.get("race") if isinstance(best.get("race"), dict) else None
    if race is not None and race.get("decision") is None:
        raise UsageError(
            f"{run_dir} holds a race that has not decided yet: run the same 'scaling-search run' to completion first"
        )
    winner = Coefficients(best["alpha"], best["beta"], best["gamma"])
    # The race's candidates still in contention when it stopped (its decision set), else the confidence set.
    keys = (race or {}).get("in_contention") or best.get("confidence_set") or []
    if race is not None and race.get("in_contention"):
        set_name = f"the race's decision set ({race['decision']})"
    else:
        set_name = "the 90% confidence set of the best"
    others = tuple(c for c in (_coefficients_of(k) for k in keys) if c is not None and c != winner)
    return Source(
        space=space,
        run_dir=run_dir,
        winner=winner,
        others=others,
        set_name=set_name,
        native_size=meta.get("native_size"),
        stored_size=meta.get("stored_size"),
        num_classes=int(meta.get("num_classes", 10)),
    )


def space_source(space: SearchSpace) -> Source:
    """A space without a search: its data sizes from the data spec (no winner, no set)."""
    from ..data.sources import DataSpec

    spec = DataSpec(name=space.data.name, data_dir=space.data.data_dir, storage_size=space.data.storage_size)
    return Source(space=space, native_size=spec.native_size, stored_size=spec.image_size)


# ------------------------------------------------------------------ strategies and networks


@dataclass(frozen=True)
class Entry:
    """One strategy of the curves, and its role: single, mixed, paper, winner, set or compound (given)."""

    strategy: Strategy
    role: str


def select(names: Sequence[str] | None, source: Source) -> list[Entry]:
    """The strategies asked for (default: every built-in, the paper's, and the run's winner and set)."""
    if names is None:
        names = [*BUILT_IN, "paper", *(RUN_STRATEGIES if source.winner is not None else ())]
    entries: list[Entry] = []
    for name in names:
        if name in BUILT_IN:
            entries.append(Entry(BUILT_IN[name], BUILT_IN[name].kind))
        elif name == "paper":
            entries.append(Entry(PAPER_STRATEGY, "paper"))
        elif name in RUN_STRATEGIES:
            if source.winner is None:
                raise UsageError(f"strategy {name!r} needs a finished run folder (DIR), not --space/--preset")
            if name == "winner":
                entries.append(Entry(compound(source.winner, "winner"), "winner"))
            else:
                entries += [Entry(compound(c), "set") for c in source.others]
        elif name.startswith("compound:"):
            entries.append(Entry(compound(parse_compound(name)), COMPOUND))
        else:
            raise UsageError(
                f"unknown strategy {name!r}: choose from {', '.join(STRATEGY_NAMES)} or compound:ALPHA,BETA,GAMMA"
            )
    # A triple named twice (the winner is the paper's, say) is one strategy, under its first name.
    seen: dict = {}
    for e in entries:
        key = e.strategy.coefficients or e.strategy.name
        seen.setdefault(key, e)
    return list(seen.values())


def network_builder(base: Any, multiple: int) -> Build:
    """(depth, width, resolution px) -> (the rounded network, its MACs over the baseline's), built the way a
    unit's network is (``trials.trial_model``: the baseline scaled by (depth, width, resolution / base) at phi 1),
    as ``base``'s family rounds and counts it."""
    family = family_of(base)
    base_macs = family.counts(base).macs

    def build(depth: float, width: float, resolution: int) -> tuple:
        coeffs = Coefficients(depth, width, resolution / base.resolution)
        config = compound_network(base, coeffs, 1, multiple)
        return network_key(coeffs, base, multiple), family.counts(config).macs / base_macs

    return build


@dataclass(frozen=True)
class Point:
    """One strategy at one cost multiple: the network it trains (shared with ``same_as`` when they coincide)."""

    entry: Entry
    scaled: Scaled
    same_as: str | None = None  # the first strategy at this s that builds the same network

    @property
    def coefficients(self) -> Coefficients:
        """The unit's (alpha, beta, gamma): the network's depth and width multipliers and resolution over the base."""
        s = self.scaled
        return Coefficients(s.depth, s.width, s.gamma)

    @property
    def name(self) -> str:
        return self.entry.strategy.name

    @property
    def target(self) -> float:
        return self.scaled.target


@dataclass(frozen=True)
class CurvePlan:
    space: SearchSpace  # the search's space with the curves' base resolution and rounding (what units train)
    source: Source
    targets: tuple[float, ...]  # s > 1
    base_resolution: int
    base_note: str  # why this base resolution
    multiple: int
    tolerance: float
    points: tuple[Point, ...]  # the baseline (s = 1) first, then every entry at every target

    def networks(self) -> list[Point]:
        """One point per distinct network (the first strategy that builds it)."""
        return [p for p in self.points if p.same_as is None]


def curve_space(space: SearchSpace, base_resolution: int, multiple: int, race: bool = False) -> SearchSpace:
    """The space the curves' units train under: the search's data, recipe and seeds, the curves' base and rounding,
    every unit a full schedule; with ``race``, a race per s with the space's racing settings."""
    return space.with_overrides(
        baseline={"resolution": base_resolution},
        constraint={"resolution_multiple": multiple},
        pruning={"enabled": False},
        racing={"enabled": race},
    )


def folder_fingerprint(space: SearchSpace) -> str:
    """What the curves folder's units mean: the curve space's fingerprint, racing aside (a race only adds seeds,
    so --race on or off resumes the same study)."""
    return space.with_overrides(racing={"enabled": False}).fingerprint()


def default_base_resolution(space: SearchSpace, top: float, detail: int | None, multiple: int) -> tuple[int, str]:
    """The search's base resolution, or a lower one where resolution-only scaling to ``top`` would leave the
    images' detail; and why, in words."""
    searched = space.baseline.resolution
    if detail is None or searched * math.sqrt(top) <= detail:
        return searched, f"the search's base resolution ({searched} px)"
    lower = int(detail / math.sqrt(top)) // multiple * multiple
    if lower < MIN_BASE_RESOLUTION:
        return searched, (
            f"the search's base resolution ({searched} px): resolution-only scaling to {top:g}x goes above the "
            f"images' {detail} px, and a base low enough to avoid it would be below {MIN_BASE_RESOLUTION} px; the "
            "networks above it are marked upsampled"
        )
    return lower, (
        f"{lower} px, not the search's {searched} px, so that resolution-only scaling to {top:g}x stays within the "
        f"images' {detail} px"
    )


def build_curve_plan(
    source: Source,
    targets: Sequence[float] = DEFAULT_TARGETS,
    names: Sequence[str] | None = None,
    *,
    base_resolution: int | None = None,
    multiple: int | None = None,
    race: bool = False,
) -> CurvePlan:
    """Every strategy solved at every s; refused (UsageError) when a strategy has no network within tolerance."""
    wanted = tuple(t for t in check_multiples(targets) if t > 1)
    if not wanted:
        raise UsageError("give at least one cost multiple above 1, e.g. --s 2 4 (s = 1, the baseline, always trains)")
    entries = select(names, source)
    space = source.space
    step = multiple or space.constraint.resolution_multiple
    if step < 1:
        raise UsageError(f"--multiple {step} must be a positive integer")
    tolerance = space.constraint.tolerance
    automatic = base_resolution is None
    if automatic:
        base_resolution, note = default_base_resolution(space, max(wanted), source.detail, step)
    else:
        note = f"{base_resolution} px, as asked (the search's is {space.baseline.resolution} px)"
    if base_resolution % step:
        raise UsageError(f"base resolution {base_resolution} px must be a multiple of {step} (the resolution rounding)")
    detail = source.detail
    # The automatic base nominally keeps every network within the images' detail; rounding can still take
    # resolution-only one step past it, and then the base goes one rounding step lower.
    adjustable = automatic and detail is not None and base_resolution * math.sqrt(max(wanted)) <= detail
    while True:
        plan = _solve_all(source, entries, wanted, base_resolution, step, tolerance, note, race)
        highest = max(p.scaled.resolution for p in plan.points)
        if not adjustable or highest <= detail or base_resolution - step < MIN_BASE_RESOLUTION:
            return plan
        base_resolution -= step
        note = (
            f"{base_resolution} px, not the search's {space.baseline.resolution} px, so that every network stays "
            f"within the images' {detail} px"
        )


def _solve_all(source, entries, targets, base_resolution, multiple, tolerance, note, race) -> CurvePlan:
    space = curve_space(source.space, base_resolution, multiple, race)
    base = baseline_config(space, source.num_classes)
    build = network_builder(base, multiple)
    baseline = solve(BASELINE, 1.0, build, base_resolution=base_resolution, multiple=multiple, tolerance=tolerance)
    points = [Point(Entry(BASELINE, "baseline"), baseline)]
    missed: list[str] = []
    for s in targets:
        first_of: dict = {}
        for entry in entries:
            scaled = solve(
                entry.strategy, s, build, base_resolution=base_resolution, multiple=multiple, tolerance=tolerance
            )
            if not scaled.within:
                missed.append(
                    f"{entry.strategy.name} at {s:g}x (nearest: depth x{scaled.depth:.3g}, width x{scaled.width:.3g}, "
                    f"{scaled.resolution} px, {scaled.cost:.3f}x)"
                )
                continue
            signature = build(scaled.depth, scaled.width, scaled.resolution)[0]
            same = first_of.get(signature)
            if same is not None:
                # One network, trained once: the later strategy takes the first one's multipliers (same unit key).
                scaled = dataclasses.replace(
                    scaled, depth=same.scaled.depth, width=same.scaled.width, gamma=same.scaled.gamma
                )
                points.append(Point(entry, scaled, same_as=same.name))
            else:
                point = Point(entry, scaled)
                first_of[signature] = point
                points.append(point)
    if missed:
        raise UsageError(
            f"no rounded network within {tolerance:g} of s times the baseline's MACs at {base_resolution} px for "
            f"{'; '.join(missed)}: leave them out (--strategies) or choose other --s; a finer --multiple helps "
            "resolution, another --base-resolution all of them"
        )
    return CurvePlan(
        space=space,
        source=source,
        targets=tuple(targets),
        base_resolution=base_resolution,
        base_note=note,
        multiple=multiple,
        tolerance=tolerance,
        points=tuple(points),
    )


def curve_units(plan: CurvePlan) -> list:
    """Every distinct network x seed, interleaved by seed and shuffled within a seed by the space's order seed."""
    from .allocation import run_order
    from .trials import Unit

    units = [
        Unit(p.scaled.depth, p.scaled.width, p.scaled.gamma, seed, p.target, p.scaled.cost)
        for seed in plan.space.seeds
        for p in plan.networks()
    ]
    return run_order(units, plan.space.order_seed)


# ------------------------------------------------------------------ running


PLAN_JSON = "plan.json"


def study_name(space: SearchSpace) -> str:
    return f"curves-{space.name}-{folder_fingerprint(space)}"


def _earlier(out: Path, space: SearchSpace) -> dict | None:
    """The curves folder's plan.json when resuming; refused when it holds curves of another setup."""
    from .runner import _can_write

    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder: move it away to run the curves here")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not _can_write(parent):
        raise UsageError(f"{out} cannot be written (permission denied): run the curves over a folder you can write")
    path = out / PLAN_JSON
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{path} is unreadable: move {out} away to start the curves again") from None
    if meta.get("fingerprint") != folder_fingerprint(space):
        raise UsageError(
            f"{out} holds curves of another setup (base resolution {meta.get('base_resolution')} px, rounding "
            f"{meta.get('multiple')}): give the same --base-resolution and --multiple to resume, or move {out} away"
        )
    return meta


def point_infos(plan: CurvePlan, activations: dict[str, int]) -> list:
    """The plan's points as the report reads them."""
    from ..analysis.curves import PointInfo
    from ..records import candidate_key

    out = []
    for p in plan.points:
        s, c = p.scaled, p.entry.strategy.coefficients
        key = candidate_key(s.depth, s.width, s.gamma)
        out.append(
            PointInfo(
                strategy=p.name,
                role=p.entry.role,
                describe=p.entry.strategy.describe(),
                s=p.target,
                depth=s.depth,
                width=s.width,
                gamma=s.gamma,
                resolution=s.resolution,
                cost=s.cost,
                same_as=p.same_as,
                activations=activations.get(key),
                coefficients=None if c is None else c.as_tuple(),
            )
        )
    return out


class CurvesPolicy:
    """The curves as a policy of the rounds driver: the baseline and every s in one first round; with racing on
    in the space, a race of its own at each s (one more seed for the networks still in contention there), the
    baseline kept at the first round's seeds. Its state is only what the records say, so a resumed run walks
    the same rounds."""

    name = "curves"

    def __init__(self, plan: CurvePlan):
        from ..scaling import Candidate

        self.space = plan.space
        self.baseline = Candidate(Coefficients(1.0, 1.0, 1.0), 1.0, 1.0)
        self.at: dict[float, list[Candidate]] = {}
        for p in plan.networks():
            if p.target > 1:
                self.at.setdefault(p.target, []).append(Candidate(p.coefficients, p.target, p.scaled.cost))
        self.races: dict = {}
        if self.space.racing.enabled:
            from .racing import Racing

            self.races = {s: Racing(self.space, cands) for s, cands in self.at.items()}
        self.looks: dict[float, object] = {}  # s -> the race's last look

    def first(self) -> list:
        from .allocation import run_order
        from .plan import units_for

        units = units_for(self.space, [self.baseline])
        for s, cands in self.at.items():
            units += self.races[s].first() if s in self.races else units_for(self.space, cands)
        return run_order(units, self.space.order_seed)

    def after(self, index: int, records: Sequence) -> object:
        from .rounds import Step

        units: list = []
        for s, race in self.races.items():
            if s in self.looks and not _goes_on(self.looks[s]):
                continue  # this race has decided (or run out); the others may go on
            own = [r for r in records if r.candidate in set(race.keys)]
            step = race.after(index, own)
            self.looks[s] = step.decision
            units += step.units
        return Step(tuple(units), dict(self.looks))

    def decisions(self, records: Sequence) -> dict[float, dict]:
        """Per s: best, equivalent or undecided by the racing rule (``racing.decide``) - the race's last look, or
        without a race one look at the seeds trained, which cannot ask for more."""
        from ..records import candidate_key
        from .racing import decide, score_matrix

        out = {}
        for s, cands in self.at.items():
            look = self.looks.get(s)
            reason = None
            if look is None:
                keys = [candidate_key(*c.coefficients.as_tuple()) for c in cands]
                seeds = list(self.space.seeds)
                own = [r for r in records if r.candidate in set(keys)]
                if not any(r.state.finished for r in own):
                    continue
                spec = dataclasses.replace(self.space.racing, max_seeds=max(2, len(seeds)), max_trainings=None)
                look = decide(
                    keys,
                    score_matrix(own, keys, seeds),
                    keys,
                    spec=spec,
                    first_seeds=len(seeds),
                    seeds=seeds,
                    trainings=sum(r.state.finished for r in own),
                    round_index=0,
                )
                if look.outcome in ("undecided", "continue"):
                    look = dataclasses.replace(look, outcome="undecided")
                    reason = (
                        f"the {len(seeds)} seeds trained do not separate them (--race gives more seeds where the "
                        "answer is open)"
                    )
            out[s] = {
                "outcome": look.outcome,
                "reason": reason or look.reason,
                "alive": list(look.alive),
                "leader": look.leader,
                "seeds": len(look.seeds),
                "rule": f"racing rule, delta {self.space.racing.delta:g}, alpha {self.space.racing.alpha:g}"
                + ("" if s in self.races else ", one look"),
            }
        return out


def _goes_on(look) -> bool:
    return look is not None and look.next_seed is not None


def run_curves(plan: CurvePlan, options, console) -> int:
    """Train every network of ``plan`` x every seed into ``options.out`` (resumable), then write the curves' files.

    ``options`` is the search's ``RunOptions`` (backend, storage, device, jobs, ...); weights are not kept. The
    run context, estimate, executor and rounds driver are the search's own.
    """
    import threading
    import time

    from ..analysis.curves import write_curves
    from ..flops import count_activations
    from ..train.devices import device_name, resolve_device
    from ..train.recipe import Runtime
    from . import stopping
    from .outcome import outcome_of
    from .rounds import run_rounds
    from .runner import (
        RunContext,
        Tally,
        _cores,
        _estimate,
        _install_stop_handlers,
        _load_data,
        _optuna_backend,
        _ray_backend,
        data_sizes,
        executor,
        resolve_storage,
    )
    from .storage_retry import StorageLost, lost_storage_message
    from .trials import trial_model, unit_of

    space, out = plan.space, options.out
    device = resolve_device(options.device)
    runtime = Runtime(
        device=device,
        memory_format=options.memory_format,
        cudnn_benchmark=options.cudnn_benchmark,
        jobs=options.jobs or 1,
    )
    earlier = _earlier(out, space)
    if options.backend == "ray":
        from .ray_backend import check_ray_available, trial_resources

        trial_resources(device, options.jobs, options.gpus_per_trial, options.cpus_per_trial, _cores())  # agree?
        check_ray_available(options.ray_address)
    data, n_train, n_test = _load_data(space, console)
    storage = None
    if options.backend == "optuna":
        storage = options.storage or (resolve_storage(earlier["storage"], out) if earlier else None)
    ctx = RunContext(
        space=space,
        options=options,
        out=out,
        device=device,
        runtime=runtime,
        data=data,
        n_train=n_train,
        n_test=n_test,
        num_classes=len(data.classes),
        plan_of_space=None,
        study_name=(earlier or {}).get("study_name") or study_name(space),
        storage_url=storage,
        earlier=earlier,
    )
    policy = CurvesPolicy(plan)
    first = policy.first()
    race = " (then a race at each s: more seeds where the answer is open)" if policy.races else ""
    console.print(
        f"curves of {space.name}: the baseline and {len(plan.networks()) - 1} networks for {len(plan.points) - 1} "
        f"strategy points at {', '.join(f'{t:g}x' for t in plan.targets)}, x {len(space.seeds)} seeds = {len(first)} "
        f"trials{race}, on {space.data.name} ({n_train} train / {n_test} held-out images), {space.proxy.epochs} "
        f"epochs each, base {plan.base_resolution} px, device {device} ({device_name(device)})",
        highlight=False,
    )
    if options.backend == "optuna" and (options.storage or earlier is not None):
        ctx.backend = _optuna_backend(options, storage, ctx.study_name, space)
    elif options.backend == "ray":
        ctx.backend = _ray_backend(space, out, device, options)
    _estimate(ctx, [ctx.plan_of(u) for u in first], console)
    if options.estimate_only:
        return 0
    if options.backend == "ray":
        from .ray_backend import packed_options

        # Ray packs the trials itself: a fraction of the GPU each, or a share of the CPUs (an explicit one wins).
        ctx.options = packed_options(options, device, ctx.jobs, _cores())
        ctx.backend = _ray_backend(space, out, device, ctx.options)
    _open(ctx, plan)
    stop = threading.Event()
    restore = _install_stop_handlers(stop, console)
    problems: list[str] = []
    tally = Tally()
    started = time.perf_counter()
    try:
        records, rounds = run_rounds(policy, ctx.plan_of, executor(ctx, stop, console, problems, tally))
    except StorageLost as exc:
        raise UsageError(lost_storage_message(exc, tally.before, tally.here, tally.planned, options.command)) from None
    finally:
        restore()
    wall = time.perf_counter() - started
    for p in problems:
        console.print(f"worker failed: {p}")
    console.print("writing the curves ...")
    networks = {r.candidate: r for r in records}
    activations = {k: count_activations(trial_model(space, unit_of(r), ctx.num_classes)) for k, r in networks.items()}
    info = _report_info(plan, data_sizes(data), device_name(device), ctx.jobs, wall, ctx.estimate, records)
    info["decisions"] = {f"{s:g}": d for s, d in policy.decisions(records).items()}
    info["rounds"] = len(rounds)
    seeds = sorted({r.seed for r in records})
    report = write_curves(out, point_infos(plan, activations), records, seeds, info)
    for statement in report.statements:
        console.print(f"  {statement}", highlight=False)
    ended = outcome_of(records, machine=problems, stopped=stop.is_set(), terminated=stopping.requested())
    console.print(f"{ended.line()}; curves in {out}", highlight=False)
    if stop.is_set() or ended.waiting:
        console.print("run the same command again to resume", highlight=False)
    return ended.status


def _open(ctx, plan: CurvePlan) -> None:
    """Make the curves folder and record what it runs (plan.json, space.yaml); open a new study there."""
    import time

    from ..atomic import atomic_write_text
    from ..space import dump_space
    from .runner import _optuna_backend, data_sizes, record_storage, software_versions

    out, options, space = ctx.out, ctx.options, ctx.space
    out.mkdir(parents=True, exist_ok=True)
    if options.backend == "optuna" and ctx.storage_url is None:
        from .optuna_backend import default_storage

        ctx.storage_url = default_storage(out)
    meta = {
        "fingerprint": folder_fingerprint(space),
        "study_name": ctx.study_name,
        "backend": options.backend,
        "storage": record_storage(ctx.storage_url, out),
        "created": (ctx.earlier or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "software": software_versions(),
        "base_resolution": plan.base_resolution,
        "multiple": plan.multiple,
        "num_classes": ctx.num_classes,
        "source": str(plan.source.run_dir) if plan.source.run_dir is not None else None,
        **data_sizes(ctx.data),
    }
    earlier = ctx.earlier
    if earlier is None or any(earlier.get(k) != meta[k] for k in ("storage", "native_size", "stored_size")):
        atomic_write_text(out / PLAN_JSON, json.dumps(meta, indent=2) + "\n")
        atomic_write_text(out / "space.yaml", dump_space(space))
    ctx.backend = ctx.backend or _optuna_backend(options, ctx.storage_url, ctx.study_name, space)


def _report_info(plan: CurvePlan, sizes: dict, device: str, jobs: int, wall: float, estimate, records) -> dict:
    """What the curves' files say about how they were made."""
    from ..data.sources import resolution_statement

    space, p = plan.space, plan.space.proxy
    b = space.baseline
    baseline = (
        b.model if b.model != "efficientnet" else f"efficientnet (width {b.width or 1:g}, depth {b.depth or 1:g})"
    )
    native, stored = sizes["native_size"], sizes["stored_size"]
    info = {
        "space": space.name,
        "baseline": baseline,
        "base_resolution": plan.base_resolution,
        "base_note": plan.base_note,
        "multiple": plan.multiple,
        "tolerance": plan.tolerance,
        "seeds": list(space.seeds),
        "order_seed": space.order_seed,
        "recipe": f"{p.epochs} epochs, batch {p.batch_size}, {p.optimizer} lr {p.lr:g}, {p.schedule} schedule, train "
        f"subset {p.train_subset or 'all'}, test subset {p.test_subset or 'all'}",
        "source": str(plan.source.run_dir) if plan.source.run_dir is not None else None,
        "set": plan.source.set_name or None,
        "detail": min(native, stored),
        "resolution_statement": resolution_statement(native, stored, [pt.scaled.resolution for pt in plan.points]),
        "device": device,
        "jobs": jobs,
        "wall_seconds_this_run": round(wall, 1),
        "complete": all(r.state.finished for r in records),
        **sizes,
    }
    if estimate is not None and estimate.calibration is not None:
        info["estimate_seconds_this_run"] = round(estimate.seconds, 1)
    return info
