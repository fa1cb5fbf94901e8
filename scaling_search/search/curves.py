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

from ..errors import UsageError
from ..models import EfficientNetConfig
from ..models.efficientnet_config import analytic_counts, compound_config, scale_network
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
MIN_BASE_RESOLUTION = 32  # below it B0's five stride-2 stages leave less than one pixel
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
    winner = Coefficients(best["alpha"], best["beta"], best["gamma"])
    decision = best.get("decision") if isinstance(best.get("decision"), dict) else None
    keys = (decision or {}).get("set") or best.get("confidence_set") or []
    set_name = "decision set" if decision and decision.get("set") else "90% confidence set of the best"
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


def network_builder(base: EfficientNetConfig, multiple: int) -> Build:
    """(depth, width, resolution px) -> (the rounded network, its MACs over the baseline's), built the way a
    unit's network is (``trials.trial_model``: the baseline scaled by (depth, width, resolution / base) at phi 1)."""
    base_macs = analytic_counts(base).macs

    def build(depth: float, width: float, resolution: int) -> tuple:
        config = compound_config(Coefficients(depth, width, resolution / base.resolution), 1, base, multiple)
        return (scale_network(config), config.resolution), analytic_counts(config).macs / base_macs

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


def curve_space(space: SearchSpace, base_resolution: int, multiple: int) -> SearchSpace:
    """The space the curves' units train under: the search's data, recipe and seeds, the curves' base and rounding,
    every unit a full schedule."""
    return space.with_overrides(
        baseline={"resolution": base_resolution},
        constraint={"resolution_multiple": multiple},
        pruning={"enabled": False},
    )


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
        plan = _solve_all(source, entries, wanted, base_resolution, step, tolerance, note)
        highest = max(p.scaled.resolution for p in plan.points)
        if not adjustable or highest <= detail or base_resolution - step < MIN_BASE_RESOLUTION:
            return plan
        base_resolution -= step
        note = (
            f"{base_resolution} px, not the search's {space.baseline.resolution} px, so that every network stays "
            f"within the images' {detail} px"
        )


def _solve_all(source, entries, targets, base_resolution, multiple, tolerance, note) -> CurvePlan:
    space = curve_space(source.space, base_resolution, multiple)
    base = baseline_config(space, source.num_classes)
    build = network_builder(base, multiple)
    baseline = solve(BASELINE, 1.0, build, base_resolution=base_resolution, multiple=multiple, tolerance=tolerance)
    points = [Point(Entry(BASELINE, "baseline"), baseline)]
    for s in targets:
        first_of: dict = {}
        for entry in entries:
            scaled = solve(
                entry.strategy, s, build, base_resolution=base_resolution, multiple=multiple, tolerance=tolerance
            )
            if not scaled.within:
                raise UsageError(
                    f"strategy {entry.strategy.name} has no network within {tolerance:g} of {s:g}x the baseline's "
                    f"MACs at {base_resolution} px: the nearest (depth x{scaled.depth:.3g}, width x{scaled.width:.3g}, "
                    f"{scaled.resolution} px) costs {scaled.cost:.3f}x; try --multiple with a finer resolution "
                    "rounding, another --base-resolution, or other --s"
                )
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
    return f"curves-{space.name}-{space.fingerprint()}"


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
    if meta.get("fingerprint") != space.fingerprint():
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


def run_curves(plan: CurvePlan, options, console) -> int:
    """Train every network of ``plan`` x every seed into ``options.out`` (resumable), then write the curves' files.

    ``options`` is the search's ``RunOptions`` (backend, storage, device, jobs, ...); weights are not kept.
    """
    import threading
    import time

    from ..atomic import atomic_write_text
    from ..flops import count_activations
    from ..space import dump_space
    from ..train.devices import device_name, resolve_device
    from ..train.recipe import Runtime
    from .runner import (
        _data_bytes,
        _execute,
        _install_stop_handlers,
        _optuna_backend,
        _ray_backend,
        _worker_threads,
        choose_jobs,
        data_sizes,
        estimate_seconds,
        format_duration,
        record_storage,
        resolve_storage,
        scaled_estimate,
        software_versions,
    )
    from .trials import planned_record, run_unit, trial_model, unit_of

    space, out = plan.space, options.out
    device = resolve_device(options.device)
    runtime = Runtime(device=device, memory_format=options.memory_format, cudnn_benchmark=options.cudnn_benchmark)
    earlier = _earlier(out, space)
    name = (earlier or {}).get("study_name") or study_name(space)
    if options.backend == "ray":
        from .ray_backend import check_ray_available

        check_ray_available(options.ray_address)
    data, n_train, n_test = _load(space, console)
    num_classes = len(data.classes)
    units = curve_units(plan)
    planned = [planned_record(space, u, num_classes) for u in units]
    networks = plan.networks()
    console.print(
        f"curves of {space.name}: {len(networks) - 1} networks at {', '.join(f'{t:g}x' for t in plan.targets)} and "
        f"the baseline, {len(plan.points) - 1} strategy points, x {len(space.seeds)} seeds = {len(planned)} trials on "
        f"{space.data.name} ({n_train} train / {n_test} held-out images), {space.proxy.epochs} epochs each, base "
        f"{plan.base_resolution} px, device {device} ({device_name(device)})",
        highlight=False,
    )
    storage = None
    backend = None
    if options.backend == "optuna":
        storage = options.storage or (resolve_storage(earlier["storage"], out) if earlier else None)
        if storage is not None:
            backend = _optuna_backend(options, storage, name, space)
    else:
        backend = _ray_backend(space, out, device, options)
    finished = backend.finished(planned) if backend is not None else set()
    left = [p for p in planned if p.unit not in finished]
    seconds, cal = estimate_seconds(
        space, left, n_train, n_test, runtime, num_classes=num_classes, image_size=data.image_size
    )
    jobs, why = choose_jobs(options.jobs, runtime, cal, _data_bytes(data, n_train, n_test))
    jobs = min(jobs, max(1, len(left)))
    runtime = dataclasses.replace(runtime, jobs=jobs)
    console.print(f"jobs: {jobs} ({why})", highlight=False)
    if cal is not None:
        seconds = scaled_estimate(cal, space, left, n_train, n_test, device, jobs)
        console.print(
            f"estimate: about {format_duration(seconds)} for the {len(left)} trials left of {len(planned)} at {jobs} "
            f"job(s) (the baseline-sized network trains at {1 / cal.train_seconds_per_image[0]:,.0f} img/s here, the "
            f"dearest at {1 / cal.train_seconds_per_image[1]:,.0f})",
            highlight=False,
        )
    if options.estimate_only:
        return 0
    if options.backend == "ray" and (jobs > 1 or options.jobs is not None):
        from .runner import _cores

        if device.startswith("cuda"):
            options = dataclasses.replace(options, gpus_per_trial=1 / jobs)
        else:
            options = dataclasses.replace(options, cpus_per_trial=max(0.01, _cores() / jobs))
        backend = _ray_backend(space, out, device, options)

    out.mkdir(parents=True, exist_ok=True)
    if options.backend == "optuna" and storage is None:
        from .optuna_backend import default_storage

        storage = default_storage(out)
    meta = {
        "fingerprint": space.fingerprint(),
        "study_name": name,
        "backend": options.backend,
        "storage": record_storage(storage, out),
        "created": (earlier or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "software": software_versions(),
        "base_resolution": plan.base_resolution,
        "multiple": plan.multiple,
        "num_classes": num_classes,
        **data_sizes(data),
    }
    if earlier is None or any(earlier.get(k) != meta[k] for k in ("storage", "native_size", "stored_size")):
        atomic_write_text(out / PLAN_JSON, json.dumps(meta, indent=2) + "\n")
        atomic_write_text(out / "space.yaml", dump_space(space))
    backend = backend or _optuna_backend(options, storage, name, space)

    stop = threading.Event()
    restore = _install_stop_handlers(stop, console)
    problems: list[str] = []
    started = time.perf_counter()
    try:
        if jobs > 1 and options.backend == "optuna":
            import functools

            from .backend import Hooks
            from .jobs import execute_jobs

            make_backend = functools.partial(_optuna_backend, options, storage, name, space)

            def in_workers(hooks: Hooks) -> list:
                problems.extend(execute_jobs(space, planned, runtime, make_backend, jobs, hooks, _worker_threads(jobs)))
                return backend.records(planned)

            records = _execute(backend, planned, None, stop, console, run_with=in_workers)
        else:
            train = lambda p, report: run_unit(space, p, data, runtime, report)  # noqa: E731
            records = _execute(backend, planned, train, stop, console)
    finally:
        restore()
    wall = time.perf_counter() - started
    for p in problems:
        console.print(f"worker failed: {p}")
    console.print("writing the curves ...")
    activations = {
        p.candidate: count_activations(trial_model(space, unit_of(p), num_classes)) for p in planned if p.seed == space.seeds[0]
    }
    sizes = data_sizes(data)
    info = _report_info(plan, sizes, device_name(device), jobs, wall, seconds if cal is not None else None, records)
    from ..analysis.curves import write_curves

    report = write_curves(out, point_infos(plan, activations), records, space.seeds, info)
    for statement in report.statements:
        console.print(f"  {statement}", highlight=False)
    done = sum(r.state.finished for r in records)
    console.print(f"{done} of {len(records)} trials finished; curves in {out}", highlight=False)
    if stop.is_set():
        console.print("stopped early: run the same command again to resume")
        return 130
    return 1 if problems else 0


def _load(space: SearchSpace, console):
    """The dataset and the train and held-out image counts a trial uses (a subset asked for must exist)."""
    from ..data.sources import DataSpec, load_dataset

    d = space.data
    data = load_dataset(
        DataSpec(name=d.name, data_dir=d.data_dir, storage_size=d.storage_size), progress=console.is_terminal
    )
    for split, want, have in (
        ("train", space.proxy.train_subset, len(data.train_y)),
        ("test", space.proxy.test_subset, len(data.test_y)),
    ):
        if want is not None and want > have:
            raise UsageError(f"proxy.{split}_subset is {want} but {d.name} has only {have} {split} images")
    return data, space.proxy.train_subset or len(data.train_y), space.proxy.test_subset or len(data.test_y)


def _report_info(plan: CurvePlan, sizes: dict, device: str, jobs: int, wall: float, estimate, records) -> dict:
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
    if estimate is not None:
        info["estimate_seconds_this_run"] = round(estimate, 1)
    return info
