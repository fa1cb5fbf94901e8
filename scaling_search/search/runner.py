"""``scaling-search run``: from a space to a finished (or resumable) run folder.

Everything that can be wrong with the input is checked before the run folder
is touched: the space, the candidates, the data, the folder itself and the
storage. Then the backend trains the units, one line per finished trial, and
the report is written atomically at the end (and on Ctrl-C).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..atomic import atomic_write_text
from ..errors import UsageError
from ..progress import progress_bar
from ..records import TRIALS_CSV, TrialRecord, TrialState, read_trials, updated
from ..scaling import parse_budget
from ..space import SearchSpace, dump_space
from ..train.devices import device_name, resolve_device
from ..train.recipe import Runtime
from .backend import Backend, Hooks, Train, merge
from .trials import baseline_config, planned_record, run_unit, search_candidates, units_for

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
    estimate_only: bool = False
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
    if meta.get("fingerprint") != space.fingerprint():
        raise UsageError(
            f"run folder {out} holds a run of another search (space {meta.get('space')!r}, budget "
            f"{meta.get('budget')}): "
            "use a new --out, or the same space and budget to resume"
        )
    return meta


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
    space: SearchSpace, plan: list[TrialRecord], n_train: int, n_test: int, device: str
) -> tuple[float, float]:
    """Seconds for ``units`` from a few timed train steps of the baseline, scaled by each unit's MACs.

    Returns (seconds, baseline images per second). Rough by design: it is
    what a user needs to decide whether to start, not a promise.
    """
    import torch

    from ..flops import count

    base = baseline_config(space, 10)
    batch = min(space.proxy.batch_size, 64 if device == "cpu" else space.proxy.batch_size)
    try:
        ips = _baseline_speed(base, batch, device)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        from ..train.loop import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        # Every candidate is at least the baseline: none of them would fit either.
        raise UsageError(
            f"the baseline ({base.resolution} px, batch {batch}) does not fit in memory on {device}: "
            "lower proxy.batch_size or baseline.resolution in the search space"
        ) from None
    base_macs = count(base).macs
    total = 0.0
    for p in plan:
        scale = (p.macs or base_macs) / base_macs
        total += scale * (space.proxy.epochs * n_train + n_test * space.proxy.epochs / 3) / ips
    return total, ips


def _baseline_speed(base, batch: int, device: str) -> float:
    """Training images per second of the baseline, from a few timed steps."""
    import torch

    from ..models import build

    model = build(base).to(device).train()
    x = torch.randn(batch, 3, base.resolution, base.resolution, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 3
    for _ in range(reps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return reps * batch / (time.perf_counter() - t)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


# ------------------------------------------------------------ run


def study_name_for(space: SearchSpace) -> str:
    return f"{space.name}-{parse_budget(space.constraint.budget):g}x-{space.fingerprint()}"


def run(space: SearchSpace, options: RunOptions, console) -> int:
    """Run (or resume) the study: plan -> backend.execute -> report; returns the process exit status."""
    from ..data.sources import DataSpec, load_dataset

    device = resolve_device(options.device)
    runtime = Runtime(device=device, memory_format=options.memory_format, cudnn_benchmark=options.cudnn_benchmark)
    candidates = search_candidates(space)
    units = units_for(space, candidates)
    study_name = study_name_for(space)
    out = options.out
    earlier = check_run_dir(out, space, study_name)
    if options.backend == "ray":
        from .ray_backend import check_ray_available

        check_ray_available(options.ray_address)

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
    n_train = space.proxy.train_subset or len(data.train_y)
    n_test = space.proxy.test_subset or len(data.test_y)
    num_classes = len(data.classes)
    plan = [planned_record(space, u, num_classes) for u in units]
    console.print(
        f"{space.name}: {len(candidates)} candidates x {len(space.seeds)} seeds = {len(units)} trials on "
        f"{space.data.name} ({n_train} train / {n_test} held-out images, {num_classes} classes), "
        f"{space.proxy.epochs} epochs each, device {device} ({device_name(device)})"
    )

    storage_url = options.storage or (earlier or {}).get("storage") if options.backend == "optuna" else None
    backend = None
    if options.backend == "optuna" and (options.storage or earlier is not None):
        # A shared storage must answer before the folder exists; a resumed
        # study says which trials are left to estimate.
        backend = _optuna_backend(options, storage_url, study_name, space)
    elif options.backend == "ray":
        backend = _ray_backend(space, out, device, options)
    finished = backend.finished(plan) if backend is not None else set()
    left = [p for p in plan if p.unit not in finished]
    seconds, ips = estimate_seconds(space, left, n_train, n_test, device)
    console.print(
        f"estimate: about {format_duration(seconds)} for the {len(left)} trials left of {len(units)} (baseline "
        f"trains at {ips:,.0f} img/s here)"
    )
    if options.estimate_only:
        return 0

    out.mkdir(parents=True, exist_ok=True)
    if options.backend == "optuna" and storage_url is None:
        from .optuna_backend import default_storage

        storage_url = default_storage(out)
    meta = {
        "fingerprint": space.fingerprint(),
        "space": space.name,
        "budget": space.constraint.budget,
        "backend": options.backend,
        "study_name": study_name,
        "storage": storage_url,
        "created": (earlier or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "software": software_versions(),
        "device": device_name(device),
        "num_classes": num_classes,
    }
    if earlier is None or earlier.get("storage") != storage_url:
        atomic_write_text(out / RUN_JSON, json.dumps(meta, indent=2) + "\n")
        atomic_write_text(out / "space.yaml", dump_space(space))
    backend = backend or _optuna_backend(options, storage_url, study_name, space)
    started = time.perf_counter()
    stop = threading.Event()
    restore = _install_stop_handlers(stop, console)
    try:
        records = _execute(backend, plan, lambda p, report: run_unit(space, p, data, runtime, report), stop, console)
    finally:
        restore()
    wall = time.perf_counter() - started
    return finish(
        out,
        space,
        records,
        console,
        stopped=stop.is_set(),
        info={"wall_seconds_this_run": round(wall, 1), "device": device_name(device), "backend": options.backend},
    )


def _optuna_backend(options: RunOptions, url: str, name: str, space: SearchSpace) -> Backend:
    from .optuna_backend import OptunaBackend, OptunaStudy

    pruner = None
    if space.pruning.enabled:
        import optuna

        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=space.pruning.min_epochs, reduction_factor=space.pruning.reduction_factor
        )
    return OptunaBackend(OptunaStudy(url, name, heartbeat=options.heartbeat, pruner=pruner), url)


def _ray_backend(space: SearchSpace, out: Path, device: str, options: RunOptions) -> Backend:
    from .ray_backend import RayBackend  # optional dependency

    return RayBackend(space, out, device, options)


def _install_stop_handlers(stop: threading.Event, console):
    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print(
            "stopping after the current trial, then writing the report (press Ctrl-C again to stop at once; the "
            "trial will re-run on resume)"
        )

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def _execute(backend: Backend, plan: list[TrialRecord], train: Train, stop: threading.Event, console) -> list:
    """The backend runs the plan; the runner prints one line per finished trial, whichever backend it is."""
    total = len(plan)
    done = len(backend.finished(plan))
    if done:
        console.print(f"resuming: {done} of {total} trials already finished")
    best: list[TrialRecord] = []
    started, ran = time.monotonic(), [0, done]
    waited = {"last": 0.0}
    with progress_bar(console.is_terminal, "trials", total, completed=done) as advance:

        def on_done(r: TrialRecord) -> None:
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

        return backend.execute(plan, train, Hooks(stop=stop, on_done=on_done, on_wait=on_wait))


def finish(
    out: Path,
    space: SearchSpace,
    records: list[TrialRecord],
    console,
    *,
    stopped: bool,
    info: dict,
) -> int:
    """Write the report of ``records`` (one per planned unit), print the verdict."""
    from ..analysis.report import write_report

    epochs_run = sum(r.epochs_run for r in records)
    full = len(records) * space.proxy.epochs
    info = {**info, "epochs_trained": int(epochs_run), "epochs_full_grid": int(full)}
    if space.pruning.enabled and full:
        info["pruning_saved_fraction"] = round(1 - epochs_run / full, 4)
    console.print("writing the report ...")
    ranking = write_report(out, records, space, info)
    for s in ranking.statements:
        console.print(f"  {s}")
    if "pruning_saved_fraction" in info:
        console.print(
            f"  pruning trained {info['epochs_trained']} of {info['epochs_full_grid']} epochs of the full grid "
            f"({info['pruning_saved_fraction']:.0%} saved)"
        )
    finished = sum(r.state.finished for r in records)
    console.print(f"{finished} of {len(records)} trials finished; outputs in {out}")
    if stopped:
        console.print("stopped early: run the same command again to resume")
        return 130
    return 0


def rebuild(out: Path, console) -> int:
    """``scaling-search report DIR``: tables and plots again, from the stored study."""
    from ..space import load_space
    from .optuna_backend import sqlite_path

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
    units = units_for(space, search_candidates(space))
    prior = {}
    if (out / "best.json").is_file():
        try:
            prior = json.loads((out / "best.json").read_text())
        except ValueError:
            prior = {}
    info = {k: prior[k] for k in ("wall_seconds_this_run", "device", "backend") if k in prior}
    plan = [planned_record(space, u, int(meta.get("num_classes", 10))) for u in units]
    if meta.get("backend") == "optuna":
        from .optuna_backend import OptunaBackend, OptunaStudy

        url = meta["storage"]
        db = sqlite_path(url)
        if db is not None and not db.exists():  # a moved or committed run folder: its own copy
            if not (out / "study.db").exists():
                raise UsageError(
                    f"the study storage {db} is gone and {out / 'study.db'} does not exist: restore one of them, "
                    "or run the search again"
                )
            url = f"sqlite:///{(out / 'study.db').resolve()}"
        records = OptunaBackend(OptunaStudy(url, meta["study_name"]), url).records(plan)
    else:
        if not (out / TRIALS_CSV).is_file():
            raise UsageError(f"{out / TRIALS_CSV} is missing: nothing to rebuild the report from")
        found = {r.unit: r for r in read_trials(out)}
        records = merge(plan, {p.unit: updated(p, found[p.unit].row()) for p in plan if p.unit in found})
    return finish(out, space, records, console, stopped=False, info=info)
