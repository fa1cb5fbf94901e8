"""``scaling-search run``: from a space to a finished (or resumable) run folder.

Everything that can be wrong with the input is checked before the run folder
is touched: the space, the candidates, the data, the folder itself and the
storage. Then the backend trains the units, one line per finished trial, and
the report is written atomically at the end (and on Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import UsageError
from ..progress import progress_bar
from ..records import TRIALS_CSV, TrialRecord, TrialState, read_trials, updated
from ..scaling import parse_budget
from ..space import SearchSpace, dump_space
from ..train.devices import device_name, precision_for, resolve_device
from ..train.faults import DeviceFault
from ..train.recipe import Runtime
from ..version import __version__
from . import stopping
from .backend import Backend, Hooks, Train, merge
from .estimate import Calibration, process_age, worker_startup
from .fidelity import decision_of, run_fidelity
from .halving import rung_schedule
from .jobs import execute_jobs, retry_alone
from .outcome import outcome_of
from .plan import Unit, space_plan, units_for
from .policies import policy_for
from .rounds import RoundResult, run_rounds
from .storage_retry import StorageLost, lost_storage_message
from .trials import planned_record, run_unit

RUN_JSON = "run.json"


@dataclass
class RunOptions:
    out: Path
    backend: str = "optuna"
    storage: str | None = None
    device: str = "auto"
    memory_format: str = "auto"
    cudnn_benchmark: bool = False
    heartbeat: int = 10
    ray_address: str | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    jobs: int | None = None  # trials at once on this machine; None: chosen from the device
    estimate_only: bool = False
    keep_weights: str = "best"  # best | all | none: the final weights kept in the run folder (weights.KEEP_MODES)
    storage_retry: float = 60.0  # seconds a run waits for a storage server that stopped answering
    command: str | None = None  # the command line that resumes this run (for messages)
    extra_info: dict = field(default_factory=dict)


# ------------------------------------------------------------ run folder


def check_run_dir(out: Path, space: SearchSpace, study_name: str) -> dict | None:
    """Validate the folder before anything is written; returns an earlier run.json if any."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"run folder {out} exists and is not a folder: choose another --out")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not _can_write(parent):
        raise UsageError(f"run folder {out} cannot be written (permission denied): choose another --out")
    meta_path = out / RUN_JSON
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        raise UsageError(
            f"{meta_path} is unreadable: this folder does not hold a scaling-search run; choose another --out"
        ) from None
    if meta.get("fingerprint") not in (space.fingerprint(), space.fingerprint(_stored_data_dir(out))):
        raise UsageError(
            f"run folder {out} holds a run of another search (space {meta.get('space')!r}, budget "
            f"{meta.get('budget')}): "
            "use a new --out, or the same space and budget to resume"
        )
    return meta


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _stored_data_dir(out: Path) -> str | None:
    """The data_dir in a folder's space.yaml: earlier releases hashed it into the fingerprint."""
    import yaml

    try:
        stored = yaml.safe_load((out / "space.yaml").read_text())
        return stored["data"]["data_dir"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _can_write(folder: Path) -> bool:
    """A real write test that leaves no trace: an unnamed file (Linux O_TMPFILE)
    never appears in the folder, so neither its entries nor its mtime change.
    access() alone misses read-only network mounts and the like."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    unnamed = getattr(os, "O_TMPFILE", None)
    if unnamed is None:
        return True
    try:
        os.close(os.open(folder, unnamed | os.O_WRONLY, 0o600))
    except OSError as exc:
        # A filesystem without unnamed files says so; then access() has the last word.
        return exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
    return True


def software_versions() -> dict:
    import optuna
    import torch

    return {
        "scaling_search": __version__,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------ estimate


def estimate_seconds(
    space: SearchSpace,
    plan: list[TrialRecord],
    n_train: int,
    n_test: int,
    runtime: Runtime,
    *,
    num_classes: int,
    image_size: int,
    jobs: int = 1,
    startup_seconds: float | None = None,
) -> tuple[float, Calibration]:
    """Seconds for ``plan`` with ``jobs`` workers, from timed steps of its cheapest and dearest candidate.

    Returns (seconds, calibration). Calibrated on the shapes the study trains,
    at its batch size; what ``jobs`` gain is ``estimate.concurrency``.
    """
    import torch

    from .estimate import calibrate

    if not plan:
        return 0.0, None
    try:
        cal = calibrate(space, plan, num_classes, runtime, image_size, startup_seconds)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        from ..train.loop import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        dear = max(plan, key=lambda p: p.macs or 0)
        raise UsageError(
            f"the dearest candidate ({dear.alpha:g}, {dear.beta:g}, {dear.gamma:g}: {dear.resolution} px, batch "
            f"{space.proxy.batch_size}) does not fit in memory on {runtime.device}: lower proxy.batch_size in the "
            "search space"
        ) from None
    return scaled_estimate(cal, space, plan, n_train, n_test, runtime.device, jobs), cal


def scaled_estimate(
    cal: Calibration, space: SearchSpace, plan: list[TrialRecord], n_train: int, n_test: int, device: str, jobs: int
) -> float:
    """The calibrated seconds of ``plan`` at ``jobs`` workers on ``device``."""
    from .estimate import concurrency, estimate_from

    speedup = concurrency(device.split(":")[0], jobs, cal.threads, _cores())
    startup = cal.startup_seconds if jobs > 1 else 0.0
    epochs = space.proxy.epochs
    return estimate_from(
        cal, plan, n_train=n_train, n_test=n_test, epochs=epochs, jobs=jobs, speedup=speedup, startup_seconds=startup
    )


def _data_bytes(data, n_train: int, n_test: int) -> int:
    """The device copy of the images a trial trains and scores on (uint8)."""
    per_train = data.train_x[0].nbytes if len(data.train_x) else 0
    per_test = data.test_x[0].nbytes if len(data.test_x) else 0
    return int(n_train * per_train + n_test * per_test)


def _cores() -> int:
    from .jobs import cpu_cores

    return cpu_cores()


def choose_jobs(asked: int | None, runtime: Runtime, cal, data_bytes: int) -> tuple[int, str]:
    """The job count and why: the one asked for, else 1 on a CPU and what the GPU holds on CUDA."""
    from .jobs import cuda_facts, default_jobs, per_job_bytes

    kind = runtime.device.split(":")[0]
    if asked is not None:
        return asked, "asked for with --jobs"
    if kind != "cuda" or cal is None:
        choice = default_jobs(kind)
    else:
        free, sms = cuda_facts(runtime.device)
        need = per_job_bytes(cal.peak_bytes, data_bytes)
        choice = default_jobs(kind, free_bytes=free, per_job_bytes=need, sm_count=sms)
    return choice.jobs, choice.why


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


# ------------------------------------------------------------ run


def study_name_for(space: SearchSpace) -> str:
    return f"{space.name}-{parse_budget(space.constraint.budget):g}x-{space.fingerprint()}"


@dataclass
class RunContext:
    """Everything ``run`` resolves once from the space and the options, before any folder is written."""

    space: SearchSpace
    options: RunOptions
    out: Path
    device: str
    runtime: Runtime
    data: Any
    n_train: int
    n_test: int
    num_classes: int
    plan_of_space: Any  # plan.SpacePlan: candidates and their network classes
    study_name: str
    storage_url: str | None
    earlier: dict | None  # the folder's run.json when resuming
    backend: Backend | None = None  # None until the folder exists (a new Optuna study is made there)
    jobs: int = 1
    estimate: Estimate | None = None
    stale: list[str] = field(default_factory=list)
    startup_seconds: float | None = None  # a fresh worker's, before its first trial (estimate.worker_startup)

    @property
    def candidates(self) -> list:
        return list(self.plan_of_space.trained)

    def plan_of(self, unit: Unit) -> TrialRecord:
        return planned_record(self.space, unit, self.num_classes)


@dataclass(frozen=True)
class Estimate:
    """The pre-run estimate: the first round's trials left (exactly) and a bound on the rounds after it."""

    seconds: float  # the first round's trials left, at the chosen jobs
    trials: int  # of the first round, left
    first_round: int  # units of the first round
    later_bound_seconds: float | None  # the rounds after the first, at most (racing); None: no later rounds known
    later_bound_trials: int | None
    calibration: Calibration | None


def run(space: SearchSpace, options: RunOptions, console) -> int:
    """Run (or resume) the study: resolve the run context, then plan -> rounds -> report; the exit status."""
    ctx = prepare(space, options, console)
    if options.estimate_only:
        return 0
    open_folder(ctx)
    started = time.perf_counter()
    stop = threading.Event()
    restore = _install_stop_handlers(stop, console)
    problems: list[str] = []
    tally = Tally()
    execute = executor(ctx, stop, console, problems, tally)
    fidelity: list[TrialRecord] | None = None  # None: the check did not run
    try:
        records, rounds = run_rounds(
            policy_for(ctx.space, ctx.candidates), ctx.plan_of, execute, on_round=lambda r: _print_round(r, console)
        )
        if _decided(ctx.space, rounds) and not stop.is_set():
            fidelity = run_fidelity(
                ctx.space, ctx.candidates, records, ctx.plan_of, execute, console, decision_of(rounds)
            )
    except StorageLost as exc:
        raise UsageError(lost_storage_message(exc, tally.before, tally.here, tally.planned, options.command)) from None
    finally:
        restore()
    wall = time.perf_counter() - started
    info = {
        "wall_seconds_this_run": round(wall, 1),
        "device": device_name(ctx.device),
        "precision": precision_for(ctx.runtime, ctx.device),
        "backend": ctx.options.backend,
        "jobs": ctx.jobs,
    }
    info.update(data_sizes(ctx.data), stale_requeued=ctx.stale, held_out_images=ctx.n_test)
    est = ctx.estimate
    if est is not None and est.calibration is not None:
        info["estimate_seconds_this_run"] = round(est.seconds, 1)
        if est.later_bound_seconds is not None:
            info["estimate_later_rounds_at_most_seconds"] = round(est.later_bound_seconds, 1)
        console.print(
            f"wall time {format_duration(wall)} against the estimate of {format_duration(est.seconds)} for the first "
            f"round ({wall / max(est.seconds, 1e-9):.2f}x; {sum(r.units for r in rounds)} trials in {len(rounds)} "
            f"round(s) at {ctx.jobs} job(s))"
        )
    for p in problems:
        console.print(f"machine failure: {p}", highlight=False)
    return finish(
        ctx.out,
        ctx.space,
        records,
        console,
        stopped=stop.is_set(),
        info=info,
        keep_weights=ctx.options.keep_weights,
        rounds=rounds,
        classes=ctx.plan_of_space.classes,
        fidelity=fidelity,
        machine=problems,
        terminated=stopping.requested(),
    )


def _decided(space: SearchSpace, rounds: tuple[RoundResult, ...]) -> bool:
    """The fidelity check is on and the search has decided: every round it walked is complete."""
    return space.fidelity.enabled and bool(rounds) and all(r.complete for r in rounds)


def prepare(space: SearchSpace, options: RunOptions, console) -> RunContext:
    """Check everything and resolve the run's context: device, data, storage, backend, jobs, estimate.

    Nothing is written: every bad input is a UsageError before the run folder is touched.
    """
    born = process_age()  # interpreter and imports: what a fresh worker spends before its data
    device = resolve_device(options.device)
    runtime = Runtime(
        device=device,
        precision=space.precision,
        memory_format=options.memory_format,
        cudnn_benchmark=options.cudnn_benchmark,
        jobs=options.jobs or 1,
    )
    plan_of_space = space_plan(space)
    out = options.out
    earlier = check_run_dir(out, space, study_name_for(space))
    # A resumed study keeps its name, whichever release hashed the space.
    study_name = (earlier or {}).get("study_name") or study_name_for(space)
    if options.backend == "ray":
        from .ray_backend import check_ray_available, trial_resources

        trial_resources(device, options.jobs, options.gpus_per_trial, options.cpus_per_trial, _cores())  # agree?
        check_ray_available(options.ray_address)
    loading = time.perf_counter()
    data, n_train, n_test = _load_data(space, console)
    startup = worker_startup(born, time.perf_counter() - loading, data.from_cache)
    storage_url = None
    if options.backend == "optuna":
        storage_url = options.storage or (resolve_storage(earlier["storage"], out) if earlier else None)
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
        plan_of_space=plan_of_space,
        study_name=study_name,
        storage_url=storage_url,
        earlier=earlier,
        startup_seconds=startup,
    )
    first = list(policy_for(space, ctx.candidates).first())
    policy_line = _policy_line(space, len(ctx.candidates), len(first))
    console.print(
        f"{space.name}: {len(ctx.candidates)} candidates, {policy_line}, on {space.data.name} ({n_train} train / "
        f"{n_test} held-out images, {ctx.num_classes} classes), {space.proxy.epochs} epochs each, device {device} "
        f"({device_name(device)}), precision {precision_for(runtime, device)}"
    )
    _print_coarseness(plan_of_space, space, console)
    if options.backend == "optuna" and (options.storage or earlier is not None):
        # A shared storage must answer before the folder exists; a resumed
        # study says which trials are left to estimate.
        ctx.backend = _optuna_backend(options, storage_url, study_name, space)
    elif options.backend == "ray":
        ctx.backend = _ray_backend(space, out, device, options)
    ctx.stale = _report_stale(ctx.backend, console)
    _estimate(ctx, [ctx.plan_of(u) for u in first], console)
    if options.backend == "ray":
        from .ray_backend import packed_options

        # Ray packs the trials itself: a fraction of the GPU each, or a share of the CPUs (an explicit one wins).
        ctx.options = packed_options(options, device, ctx.jobs, _cores())
        ctx.backend = _ray_backend(space, out, device, ctx.options)
    return ctx


def _print_round(result: RoundResult, console) -> None:
    """A race's (or a halving run's) progress: one line per decided round."""
    line = getattr(result.decision, "line", None)
    if callable(line):
        console.print(line(), highlight=False)


def _print_coarseness(plan, space: SearchSpace, console) -> None:
    """How much the coefficients really move the network at this base (a reduced base compresses them)."""
    from .coarseness import coarseness
    from .plan import baseline_config

    coarse = coarseness(plan, baseline_config(space, 10))
    for line in [] if coarse is None else [*coarse.lines(), *coarse.warnings()]:
        console.print(line, highlight=False)
    if space.fidelity.enabled:
        f = space.fidelity
        console.print(
            f"fidelity check on: once decided, the decision set, the paper's triple and the best of each leaning "
            f"train again at {space.proxy.epochs * f.epochs_factor} epochs ({f.epochs_factor}x, same seeds), "
            "after the estimate below (--no-fidelity to skip)",
            highlight=False,
        )


def _load_data(space: SearchSpace, console):
    """The dataset, and the train and held-out image counts a trial uses (a subset asked for must exist)."""
    from ..data.sources import DataSpec, load_dataset

    data = load_dataset(
        DataSpec(name=space.data.name, data_dir=space.data.data_dir, storage_size=space.data.storage_size),
        progress=console.is_terminal,
    )
    for split, want, have in (
        ("train", space.proxy.train_subset, len(data.train_y)),
        ("test", space.proxy.test_subset, len(data.test_y)),
    ):
        if want is not None and want > have:
            raise UsageError(
                f"proxy.{split}_subset is {want} but {space.data.name} has only {have} {split} images: lower it or "
                "set it to null"
            )
    return data, space.proxy.train_subset or len(data.train_y), space.proxy.test_subset or len(data.test_y)


def _policy_line(space: SearchSpace, candidates: int, first: int) -> str:
    """How the trainings are allocated, in the run's first line."""
    seeds = len(space.seeds)
    if space.racing.enabled:
        r = space.racing
        cap = f", at most {r.max_trainings} trainings" if r.max_trainings is not None else ""
        return (
            f"racing seeds: a first round of {seeds} seeds = {first} trials, then one more seed per round for the "
            f"candidates still in contention (up to {r.max_seeds} seeds{cap})"
        )
    if space.pruning.enabled:
        return f"synchronous halving over rungs of {', '.join(map(str, rung_schedule(space)))} epochs, {seeds} seeds"
    return f"x {seeds} seeds = {first} trials"


def _estimate(ctx: RunContext, first: list[TrialRecord], console) -> None:
    """Calibrate once at one job (which also measures a job's memory), choose the jobs, scale the estimate."""
    space, options = ctx.space, ctx.options
    finished = ctx.backend.finished(first) if ctx.backend is not None else set()
    left = [p for p in first if p.unit not in finished]
    seconds, cal = estimate_seconds(
        space,
        left,
        ctx.n_train,
        ctx.n_test,
        ctx.runtime,
        num_classes=ctx.num_classes,
        image_size=ctx.data.image_size,
        startup_seconds=ctx.startup_seconds,
    )
    data_bytes = _data_bytes(ctx.data, ctx.n_train, ctx.n_test)
    implied = None
    if options.backend == "ray" and options.jobs is None:  # an explicit Ray fraction sets the trials at once
        from .ray_backend import trial_resources

        implied = trial_resources(ctx.device, None, options.gpus_per_trial, options.cpus_per_trial, _cores())
    jobs, why = implied or choose_jobs(options.jobs, ctx.runtime, cal, data_bytes)
    # No more jobs than trials to run: the first round's left, and a race's later rounds (a resumed race may
    # have nothing left of its first round and all of its later ones).
    jobs = min(jobs, max(1, len(left) + (_later_bound(space, len(first)) or 0)))
    console.print(f"jobs: {jobs} ({why})")
    if ctx.device == "cpu" and hasattr(os, "getloadavg"):
        import torch

        from .jobs import busy_cpu_hint, worker_threads

        hint = busy_cpu_hint(os.getloadavg()[0], _cores(), worker_threads(torch.get_num_threads(), jobs))
        if hint:
            console.print(f"note: {hint}")
    ctx.jobs = jobs
    ctx.runtime = dataclasses.replace(ctx.runtime, jobs=jobs)
    later_trials = later_seconds = None
    if cal is not None:
        seconds = scaled_estimate(cal, space, left, ctx.n_train, ctx.n_test, ctx.device, jobs)
        later_trials = _later_bound(space, len(first))
        if later_trials:
            # Later rounds train the candidates still in contention: bounded at the dearest candidate's cost.
            dear = max(first, key=lambda p: p.macs or 0)
            one = scaled_estimate(cal, space, [dear], ctx.n_train, ctx.n_test, ctx.device, 1)
            later_seconds = one * later_trials / max(1.0, _speedup(cal, ctx.device, jobs))
    ctx.estimate = Estimate(seconds, len(left), len(first), later_seconds, later_trials, cal)
    if cal is None:
        return
    ips = 1 / cal.train_seconds_per_image[0]
    console.print(
        f"estimate: about {format_duration(seconds)} for the {len(left)} trials left of the first round's "
        f"{len(first)} at {jobs} job(s) (cheapest candidate trains at {ips:,.0f} img/s here, the dearest at "
        f"{1 / cal.train_seconds_per_image[1]:,.0f}){_estimate_notes(ctx, jobs)}"
    )
    if later_trials:
        console.print(
            f"  the race's later rounds: at most {later_trials} more trials (racing.max_trainings, or max_seeds for "
            f"every candidate), at most {format_duration(later_seconds)} more at the dearest candidate's cost; "
            "it stops sooner once it has decided"
        )


def _estimate_notes(ctx: RunContext, jobs: int) -> str:
    """What the estimate line assumes beyond the timed steps: the jobs' gain, cuDNN autotuning."""
    from .estimate import CUDNN_AUTOTUNE_SECONDS, autotune_seconds, gain_note

    kind = ctx.device.split(":")[0]
    notes = [gain_note(kind, jobs)]
    if autotune_seconds(kind, ctx.runtime.cudnn_benchmark):
        notes.append(f"cuDNN autotuning counted at {CUDNN_AUTOTUNE_SECONDS:g} s a trial (20-50 s measured)")
    return "".join(f"; {n}" for n in notes if n)


def _later_bound(space: SearchSpace, first: int) -> int | None:
    """Trainings after the first round, at most: the race's cap, else every candidate up to max_seeds."""
    r = space.racing
    if not r.enabled:
        return None
    per_seed = first // max(1, len(space.seeds))
    bound = per_seed * (r.max_seeds - len(space.seeds))
    if r.max_trainings is not None:
        bound = min(bound, max(0, r.max_trainings - first))
    return bound


def _speedup(cal, device: str, jobs: int) -> float:
    from .estimate import concurrency

    return concurrency(device.split(":")[0], jobs, cal.threads, _cores())


def open_folder(ctx: RunContext) -> None:
    """Make the run folder and record what it runs (run.json, space.yaml); open a new study there."""
    out, options, space = ctx.out, ctx.options, ctx.space
    out.mkdir(parents=True, exist_ok=True)
    if options.backend == "optuna" and ctx.storage_url is None:
        from .optuna_backend import default_storage

        ctx.storage_url = default_storage(out)
    meta = {
        "fingerprint": space.fingerprint(),
        "space": space.name,
        "budget": space.constraint.budget,
        "backend": options.backend,
        "study_name": ctx.study_name,
        "storage": ctx.storage_url,
        "created": (ctx.earlier or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "software": software_versions(),
        "device": device_name(ctx.device),
        "num_classes": ctx.num_classes,
        **data_sizes(ctx.data),
    }
    meta["storage"] = record_storage(ctx.storage_url, out)
    earlier = ctx.earlier
    if earlier is None or any(earlier.get(k) != meta[k] for k in ("storage", "native_size", "stored_size")):
        atomic_write_text(out / RUN_JSON, json.dumps(meta, indent=2) + "\n")
        atomic_write_text(out / "space.yaml", dump_space(space))
    elif _read_text(out / "space.yaml") != dump_space(space):
        # Same fingerprint, other settings outside it (the fidelity check turned on, say): `report` reads these.
        atomic_write_text(out / "space.yaml", dump_space(space))
    ctx.backend = ctx.backend or _optuna_backend(options, ctx.storage_url, ctx.study_name, space)


@dataclass
class Tally:
    """Trials of the rounds entered so far: planned, finished before this command, finished by it."""

    planned: int = 0
    before: int = 0
    here: int = 0


def executor(
    ctx: RunContext, stop: threading.Event, console, problems: list[str], tally: Tally | None = None
) -> Callable[[list[TrialRecord]], list[TrialRecord]]:
    """What the rounds driver calls with each round's plan: the backend runs it (or --jobs worker processes do)."""
    space, options, backend, jobs = ctx.space, ctx.options, ctx.backend, ctx.jobs
    weights_dir = ctx.out.resolve() if options.keep_weights != "none" else None  # absolute: Ray workers run elsewhere
    runtime, data = ctx.runtime, ctx.data

    def train(p: TrialRecord, report) -> TrialRecord:
        return run_unit(space, p, data, runtime, report, weights_dir=weights_dir)

    def train_alone(p: TrialRecord, report) -> TrialRecord:  # no other job shares the device
        return run_unit(space, p, data, dataclasses.replace(runtime, jobs=1), report, weights_dir=weights_dir)

    def execute(plan: list[TrialRecord]) -> list[TrialRecord]:
        if jobs > 1 and options.backend == "optuna":
            # Each worker opens the study itself: partials pickle, a live storage connection does not.
            make_backend = functools.partial(_optuna_backend, options, ctx.storage_url, ctx.study_name, space)

            def in_workers(hooks: Hooks) -> list[TrialRecord]:
                threads = _worker_threads(jobs)
                ended = execute_jobs(space, plan, runtime, make_backend, jobs, hooks, threads, weights_dir=weights_dir)
                problems.extend(ended.problems)
                problems.extend(retry_alone(backend, plan, ended, hooks, console.print, train_alone))
                return backend.records(plan)

            return _execute(backend, plan, None, stop, console, run_with=in_workers, tally=tally)
        try:
            return _execute(backend, plan, train, stop, console, tally=tally)
        except DeviceFault as exc:  # the machine's failure: the unit waits for a resume, the run reports
            problems.append(f"stopped by {exc.reason} in trial {exc.unit}, which a resume trains again")
            return backend.records(plan)

    return execute


def _worker_threads(jobs: int) -> int:
    import torch

    from .jobs import worker_threads

    return worker_threads(torch.get_num_threads(), jobs)


def _optuna_backend(options: RunOptions, url: str, name: str, space: SearchSpace) -> Backend:
    from .optuna_backend import OptunaBackend, OptunaStudy

    # No Optuna pruner: halving is synchronous, rung by rung (halving.py), the same on every backend.
    study = OptunaStudy(
        url, name, heartbeat=options.heartbeat, seeds=study_seeds(space), storage_retry=options.storage_retry
    )
    return OptunaBackend(study, url)


def study_seeds(space: SearchSpace) -> list[int]:
    """Every seed a run of ``space`` may train: the space's, and a race's later seeds up to its max_seeds."""
    if not space.racing.enabled:
        return list(space.seeds)
    from .racing import seed_sequence

    return seed_sequence(space.seeds, space.racing.max_seeds)


def _ray_backend(space: SearchSpace, out: Path, device: str, options: RunOptions) -> Backend:
    from .ray_backend import RayBackend  # optional dependency

    return RayBackend(space, out, device, options)


def _install_stop_handlers(stop: threading.Event, console):
    stopping.reset()

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print(
            "stopping after the current trial, then writing the report (press Ctrl-C again to stop at once; the "
            "trial will re-run on resume)"
        )

    def terminate(signum, frame):
        # A scheduler's SIGTERM: its grace period may be shorter than a trial. Abandon the trials under way
        # (queued again at once), write the report of what is finished, exit 143.
        first = not stopping.requested()
        stop.set()
        if first:
            console.print(
                "terminating (SIGTERM): the trial(s) under way are abandoned and queued again, the report of what "
                "is finished is written next; the same command resumes"
            )
        stopping.request()  # raises Abandoned inside a trial under way in this process

    old = {
        signal.SIGINT: signal.signal(signal.SIGINT, handler),
        signal.SIGTERM: signal.signal(signal.SIGTERM, terminate),
    }

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def _execute(
    backend: Backend,
    plan: list[TrialRecord],
    train: Train | None,
    stop: threading.Event,
    console,
    run_with: Callable[[Hooks], list[TrialRecord]] | None = None,
    tally: Tally | None = None,
) -> list:
    """The backend runs the plan (or ``run_with`` does, through worker processes); the runner prints
    one line per finished trial, whichever backend or worker finished it."""
    total = len(plan)
    done = len(backend.finished(plan) & {p.unit for p in plan})  # a backend may name units of other rounds too
    if tally is not None:
        tally.planned += total
        tally.before += done
    if done:
        console.print(f"resuming: {done} of {total} trials already finished")
    best: list[TrialRecord] = []
    started, ran = time.monotonic(), [0, done]
    waited = {"last": 0.0}
    with progress_bar(console.is_terminal, "trials", total, completed=done) as advance:

        def on_done(r: TrialRecord) -> None:
            if tally is not None:
                tally.here += 1
            ran[0] += 1
            ran[1] += 1
            advance()
            eta = (time.monotonic() - started) / ran[0] * max(0, total - ran[1])
            if r.state is TrialState.COMPLETE:
                what = f"acc {r.accuracy:.4f} in {r.wall_seconds:.1f} s"
                if not best or r.accuracy > best[0].accuracy:
                    best[:] = [r]
            elif r.state is TrialState.PRUNED:
                what = f"pruned after {r.epochs_run} epoch(s) at acc {r.accuracy:.4f}"
            else:
                what = f"FAILED: {r.failure}"
            b = best[0] if best else None
            lead = f" | best ({b.alpha:g}, {b.beta:g}, {b.gamma:g}) s{b.seed} {b.accuracy:.4f}" if b else ""
            console.print(
                f"[{ran[1]}/{total}] ({r.alpha:g}, {r.beta:g}, {r.gamma:g}) seed {r.seed}: {what}{lead} | eta "
                f"{format_duration(eta)}",
                highlight=False,
            )

        def on_wait(running: int) -> None:
            if running and time.monotonic() - waited["last"] > 60:
                waited["last"] = time.monotonic()
                console.print(
                    f"queue empty; waiting for {running} trial(s) running elsewhere (a dead worker's trial comes "
                    "back after its heartbeat stops)",
                    highlight=False,
                )

        hooks = Hooks(stop=stop, on_done=on_done, on_wait=on_wait)
        try:
            return run_with(hooks) if run_with is not None else backend.execute(plan, train, hooks)
        except stopping.Abandoned:  # SIGTERM: what is finished is reported
            return backend.records(plan)


def finish(
    out: Path,
    space: SearchSpace,
    records: list[TrialRecord],
    console,
    *,
    stopped: bool,
    info: dict,
    keep_weights: str | None = None,
    rounds: tuple[RoundResult, ...] = (),
    classes: tuple = (),
    fidelity: list[TrialRecord] | None = None,
    machine: Sequence[str] = (),
    terminated: bool = False,
) -> int:
    """Write the report of ``records`` (every unit of every round reached), print the decision and how the
    run ended; returns the exit status (``outcome.py``).

    ``classes`` are the plan's network classes (built once by the caller: the plan takes seconds);
    ``machine`` the machine's failures this run met."""
    from ..analysis.report import race_statements, write_report

    ended = outcome_of(records, machine=machine, stopped=stopped, terminated=terminated)
    info = {**info, "outcome": ended.to_json()}
    epochs_run = sum(r.epochs_run for r in records)
    # The full grid: every trained candidate x seed at the full schedule.
    full = len({r.candidate for r in records}) * len(space.seeds) * space.proxy.epochs
    info = {**info, "epochs_trained": int(epochs_run), "epochs_full_grid": int(full)}
    if space.pruning.enabled:
        info["rungs"] = [
            {
                "epochs": r.epochs,
                "candidates": len(r.candidates),
                "complete": r.complete,
                "promoted": None if r.decision is None else list(r.decision.promoted),
                "carried_as_reference": None if r.decision is None else list(r.decision.carried),
                "threshold": None if r.decision is None else r.decision.threshold,
            }
            for r in rounds
        ]
        info["rung_epochs"] = list(rung_schedule(space))
        if full:
            info["pruning_saved_fraction"] = round(1 - epochs_run / full, 4)
    if space.racing.enabled:
        from .racing import race_summary

        info["race"] = race_summary(rounds, records, space.racing)
    console.print("writing the report ...")
    ranking = write_report(out, records, space, info, classes=classes, fidelity=fidelity, decision=decision_of(rounds))
    _keep_function_numbers(out, space)
    race = info.get("race")
    if race is not None:
        console.print(f"decision: {(race['decision'] or 'not reached').upper()}", highlight=False)
        for s in race_statements(race):
            console.print(f"  {s}", highlight=False)
        console.print("supporting statistics:", highlight=False)
    else:
        verdict = "no verdict" if ranking.analysis is None else ("CONCLUSIVE" if ranking.conclusive else "INCONCLUSIVE")
        console.print(f"verdict: {verdict}", highlight=False)
    for s in ranking.statements:
        console.print(f"  {s}", highlight=False)
    _keep_winner_weights(out, keep_weights, console)
    if "pruning_saved_fraction" in info:
        console.print(
            f"  pruning trained {info['epochs_trained']} of {info['epochs_full_grid']} epochs of the full grid "
            f"({info['pruning_saved_fraction']:.0%} saved)"
        )
    console.print(f"{ended.line()}; outputs in {out}", highlight=False)
    if stopped:
        console.print("stopped early: run the same command again to resume")
    elif ended.waiting:
        console.print("run the same command again to train the trials left waiting", highlight=False)
    return ended.status


def rebuild(out: Path, console) -> int:
    """``scaling-search report DIR``: tables and plots again, from the stored study."""
    from ..space import load_space

    meta_path = out / RUN_JSON
    if not meta_path.is_file():
        raise UsageError(f"{out} is not a run folder (no {RUN_JSON}): give the --out folder of a 'scaling-search run'")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        raise UsageError(
            f"{meta_path} is not valid JSON: the run folder is damaged; run the search again with a new --out"
        ) from None
    space = load_space(out / "space.yaml")
    _replay_function_numbers(out, space)
    plan_of_space = space_plan(space)
    candidates = list(plan_of_space.trained)
    prior = {}
    if (out / "best.json").is_file():
        try:
            prior = json.loads((out / "best.json").read_text())
        except ValueError:
            prior = {}
    kept = (
        "wall_seconds_this_run",
        "estimate_seconds_this_run",
        "estimate_later_rounds_at_most_seconds",
        "jobs",
        "device",
        "precision",
        "backend",
        "held_out_images",
    )
    info = {k: prior[k] for k in kept if k in prior}
    info.update(_sizes_of(meta, space))
    num_classes = int(meta.get("num_classes", 10))
    if meta.get("backend") == "optuna":
        from .optuna_backend import OptunaBackend, OptunaStudy

        url = resolve_storage(meta["storage"], out)
        backend = OptunaBackend(OptunaStudy(url, meta["study_name"]), url)
        fetch = backend.records
        info["stale_running"] = _report_stale(backend, console)
    else:
        if not (out / TRIALS_CSV).is_file():
            raise UsageError(f"{out / TRIALS_CSV} is missing: nothing to rebuild the report from")
        found = {r.unit: r for r in read_trials(out)}

        def fetch(plan: list[TrialRecord]) -> list[TrialRecord]:
            return merge(plan, {p.unit: updated(p, found[p.unit].row()) for p in plan if p.unit in found})

    # The rounds walked again over the stored results: the same decisions, nothing trained.
    plan_of = lambda u: planned_record(space, u, num_classes)  # noqa: E731
    records, rounds = run_rounds(policy_for(space, candidates), plan_of, fetch)
    if space.pruning.enabled and not any(r.state.finished for r in records):
        # A run made with asynchronous pruning (no rung units): its full-schedule trials, as stored.
        old = fetch([plan_of(u) for u in units_for(space, candidates)])
        if any(r.state.finished for r in old):
            records, rounds = old, ()
            info["note"] = (
                "this run predates synchronous halving: its PRUNED trials were stopped early by asynchronous "
                "pruning and are not ranked; only trials that trained every epoch are"
            )
            console.print(f"note: {info['note']}", highlight=False)
    fidelity = None
    if _decided(space, rounds):
        fidelity = run_fidelity(space, candidates, records, plan_of, fetch, decision=decision_of(rounds))
    machine = (prior.get("outcome") or {}).get("machine_failures") or ()
    finish(
        out,
        space,
        records,
        console,
        stopped=False,
        info=info,
        rounds=rounds,
        classes=plan_of_space.classes,
        fidelity=fidelity,
        machine=machine,
    )
    return 0  # the report is rebuilt; how the run ended is in its last line and in best.json


# ------------------------------------------------------------ a user's network: numbers kept, code never re-run

FUNCTION_NUMBERS = "function_numbers.json"


def _keep_function_numbers(out: Path, space: SearchSpace) -> None:
    """A run of a user's function keeps every count and signature it took, for ``report`` and ``export``."""
    from ..models import is_target
    from ..models.plugin import recorded

    if is_target(space.baseline.model):
        table = recorded(space.baseline.model)
        atomic_write_text(out / FUNCTION_NUMBERS, json.dumps(table, indent=1, sort_keys=True) + "\n")


def _replay_function_numbers(out: Path, space: SearchSpace) -> None:
    """``report`` over a user's function answers from the folder's numbers: the function is never imported."""
    from ..models import is_target
    from ..models.plugin import replay

    if not is_target(space.baseline.model):
        return
    path = out / FUNCTION_NUMBERS
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(
            f"{out} searched the function {space.baseline.model} but holds no readable {FUNCTION_NUMBERS}: "
            "'report' never runs that code; run the same 'scaling-search run' command to finish the folder"
        ) from None
    replay(space.baseline.model, table)


# ------------------------------------------------------------ folders that move

STUDY_DB = "study.db"


def record_storage(url: str | None, out: Path) -> str | None:
    """The storage as run.json keeps it: a SQLite file inside the run folder relative to
    the folder (``sqlite:///study.db``), so a copied or moved folder still finds it."""
    from .optuna_backend import sqlite_path

    db = sqlite_path(url) if url else None
    if db is None or str(db) == ":memory:":
        return url
    try:
        inside = db.resolve().relative_to(out.resolve())
    except ValueError:
        return url
    return f"sqlite:///{inside.as_posix()}"


def resolve_storage(recorded: str, out: Path) -> str:
    """The URL to open for run.json's ``storage``: a relative SQLite path is read against
    the run folder; an absolute one that no longer exists (a folder made elsewhere, or by
    an older release) falls back to the folder's own study.db."""
    from .optuna_backend import sqlite_path

    db = sqlite_path(recorded)
    if db is None or str(db) == ":memory:":
        return recorded
    if not db.is_absolute():
        return f"sqlite:///{(out.resolve() / db).as_posix()}"
    if db.exists():
        return recorded
    own = out / STUDY_DB
    if not own.is_file():
        raise UsageError(
            f"the study storage {db} is gone and {own} does not exist: restore one of them, or run the search again "
            "with a new --out"
        )
    return f"sqlite:///{own.resolve().as_posix()}"


def _report_stale(backend, console) -> list[str]:
    """Units a stopped worker left RUNNING (heartbeat long gone): said, never hidden; a run re-queues them."""
    stale = backend.study.stale_units() if backend is not None and backend.name == "optuna" else []
    for unit in stale:
        console.print(
            f"trial {unit} was left RUNNING by a worker that stopped (no heartbeat for over "
            f"{backend.study.grace_seconds} s): a run of the same command trains it again",
            highlight=False,
        )
    return stale


# ------------------------------------------------------------ data sizes, kept weights


def data_sizes(data) -> dict:
    """run.json's record of the images: their native side and the side they were stored at."""
    return {"native_size": int(data.native_size or data.image_size), "stored_size": int(data.image_size)}


def _sizes_of(meta: dict, space: SearchSpace) -> dict:
    """The sizes from run.json; for an older folder without them, what the space's data spec says."""
    if meta.get("native_size") and meta.get("stored_size"):
        return {"native_size": int(meta["native_size"]), "stored_size": int(meta["stored_size"])}
    from ..data.sources import DataSpec

    spec = DataSpec(name=space.data.name, data_dir=space.data.data_dir, storage_size=space.data.storage_size)
    if spec.native_size is None:
        return {}
    return {"native_size": spec.native_size, "stored_size": spec.image_size}


def _keep_winner_weights(out: Path, keep: str | None, console) -> None:
    """``--keep-weights``: after the report, keep the winner's files (best), all, or none."""
    from ..weights import WEIGHTS_DIR, prune_weights

    if keep is None or not (out / WEIGHTS_DIR).is_dir():
        return
    best = json.loads((out / "best.json").read_text())
    if keep == "best" and not best.get("complete"):
        return  # the winner may still change: a resumed run needs every candidate's files until then
    winner = (best["alpha"], best["beta"], best["gamma"]) if best.get("alpha") is not None else None
    kept = prune_weights(out, keep, winner)
    if kept:
        console.print(f"  kept weights: {', '.join(str(p.relative_to(out)) for p in kept)}", highlight=False)
