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
from typing import Any

from .. import __version__
from ..atomic import atomic_write_text
from ..errors import UsageError
from ..scaling import parse_budget
from ..space import SearchSpace, dump_space
from .trials import Unit, empty_row, search_candidates, trial_config, units_for

RUN_JSON = "run.json"


@dataclass
class RunOptions:
    out: Path
    backend: str = "optuna"
    storage: str | None = None
    device: str = "auto"
    heartbeat: int = 10
    ray_address: str | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    estimate_only: bool = False
    extra_info: dict = field(default_factory=dict)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda") and device != "mps":
        raise UsageError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N")
    return device


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


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


# ------------------------------------------------------------ estimate


def estimate_seconds(
    space: SearchSpace, units: list[Unit], n_train: int, n_test: int, device: str
) -> tuple[float, float]:
    """Seconds for ``units`` from a few timed train steps of the baseline, scaled by each unit's MACs.

    Returns (seconds, baseline images per second). Rough by design: it is
    what a user needs to decide whether to start, not a promise.
    """
    import torch

    from ..flops import count
    from .trials import baseline_config, trial_model

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
    for u in units:
        scale = count(trial_model(space, u, 10)).macs / base_macs
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
    """Run (or resume) the study; returns the process exit status."""
    from ..data.sources import DataSpec, load_dataset

    device = resolve_device(options.device)
    candidates = search_candidates(space)
    units = units_for(space, candidates)
    try:
        trial_config(space, units[0], 10, device)  # the recipe's own checks, before any folder exists
    except UsageError as exc:
        raise UsageError(f"search space proxy section: {exc}") from None
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
    n_cand = len(candidates)
    console.print(
        f"{space.name}: {n_cand} candidates x {len(space.seeds)} seeds = {len(units)} trials on {space.data.name} "
        f"({n_train} train / {n_test} held-out images, {len(data.classes)} classes), {space.proxy.epochs} epochs each, "
        f"device {device} ({device_name(device)})"
    )

    storage_url = options.storage or (earlier or {}).get("storage") if options.backend == "optuna" else None
    study = None
    if options.backend == "optuna" and (options.storage or earlier is not None):
        # A shared storage must answer before the folder exists; a resumed
        # study says which trials are left to estimate.
        study = _open_study(options, storage_url, study_name, space)
    finished = study.finished_units() if study is not None else set()
    left = [u for u in units if u.key not in finished]
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
        "num_classes": len(data.classes),
    }
    if earlier is None or earlier.get("storage") != storage_url:
        atomic_write_text(out / RUN_JSON, json.dumps(meta, indent=2) + "\n")
        atomic_write_text(out / "space.yaml", dump_space(space))
    started = time.perf_counter()
    stop = threading.Event()
    restore = _install_stop_handlers(stop, console)
    try:
        if options.backend == "ray":
            from .ray_backend import run_ray

            records = run_ray(space, units, data, device, options, console, stop)
        else:
            from optuna.exceptions import StorageInternalError

            from .optuna_backend import storage_error

            study = study or _open_study(options, storage_url, study_name, space)
            try:
                records = _run_optuna(study, space, units, data, device, console, stop)
            except StorageInternalError as exc:  # locked past the wait limit, or the server went away
                raise storage_error(storage_url, exc.__cause__ or exc) from None
    finally:
        restore()
    wall = time.perf_counter() - started
    return finish(
        out,
        space,
        records,
        units,
        len(data.classes),
        console,
        stopped=stop.is_set(),
        info={"wall_seconds_this_run": round(wall, 1), "device": device_name(device), "backend": options.backend},
    )


def _open_study(options: RunOptions, url: str, name: str, space: SearchSpace):
    from .optuna_backend import OptunaStudy

    pruner = None
    if space.pruning.enabled:
        import optuna

        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=space.pruning.min_epochs, reduction_factor=space.pruning.reduction_factor
        )
    return OptunaStudy(url, name, heartbeat=options.heartbeat, pruner=pruner)


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


def _run_optuna(
    study, space: SearchSpace, units: list[Unit], data, device: str, console, stop: threading.Event
) -> list[dict]:
    from .trials import run_unit

    queued = study.ensure_units(units)
    done_before = study.count_finished()
    if done_before:
        console.print(f"resuming: {done_before} of {len(units)} trials already finished, {queued} queued now")
    best: dict[str, Any] = {}
    started, ran = time.monotonic(), [0]
    with _progress(console, len(units), done_before) as progress:

        def on_done(outcome) -> None:
            n = study.count_finished()
            progress.update(n)
            ran[0] += 1
            eta = (time.monotonic() - started) / ran[0] * max(0, len(units) - n)
            u = outcome.unit
            what = {
                "COMPLETE": lambda f: f"acc {f['accuracy']:.4f} in {f['wall_seconds']:.1f} s",
                "PRUNED": lambda f: f"pruned after {f['epochs_run']} epoch(s) at acc {f['accuracy']:.4f}",
                "FAIL": lambda f: f"FAILED: {f.get('failure')}",
            }[outcome.state](outcome.fields)
            if outcome.state == "COMPLETE" and outcome.fields["accuracy"] > best.get("accuracy", -1):
                best.update(accuracy=outcome.fields["accuracy"], unit=u)
            lead = (
                f" | best ({best['unit'].alpha:g}, {best['unit'].beta:g}, {best['unit'].gamma:g}) "
                f"s{best['unit'].seed} {best['accuracy']:.4f}"
                if best
                else ""
            )
            progress.line(
                f"[{n}/{len(units)}] ({u.alpha:g}, {u.beta:g}, {u.gamma:g}) seed {u.seed}: {what}{lead} | eta "
                f"{format_duration(eta)}"
            )

        waited = {"last": 0.0}

        def on_wait(running: int) -> None:
            if time.monotonic() - waited["last"] > 60:
                waited["last"] = time.monotonic()
                progress.line(
                    f"queue empty; waiting for {running} trial(s) running elsewhere (a dead worker's trial comes "
                    "back after its heartbeat stops)"
                )

        study.work(
            lambda unit, report: run_unit(space, unit, data, device, report),
            stop=stop,
            on_done=on_done,
            on_wait=on_wait,
        )
    return list(study.unit_records().values())


def finish(
    out: Path,
    space: SearchSpace,
    records: list[dict],
    units: list[Unit],
    num_classes: int,
    console,
    *,
    stopped: bool,
    info: dict,
) -> int:
    """Merge records over the full unit list, write the report, print the verdict."""
    from ..analysis.report import trials_frame, write_report

    by_key = {r["unit"]: r for r in records if r.get("unit")}
    rows = []
    for u in units:
        row = empty_row(u, space, num_classes)
        row["state"] = "WAITING"
        rec = by_key.get(u.key)
        if rec:
            row.update({k: v for k, v in rec.items() if k in row and v is not None})
        rows.append(row)
    frame = trials_frame(rows)
    epochs_run = frame["epochs_run"].fillna(0).sum()
    full = len(units) * space.proxy.epochs
    info = {**info, "epochs_trained": int(epochs_run), "epochs_full_grid": int(full)}
    if space.pruning.enabled and full:
        info["pruning_saved_fraction"] = round(1 - epochs_run / full, 4)
    console.print("writing the report ...")
    ranking = write_report(out, frame, space, info)
    for s in ranking.statements:
        console.print(f"  {s}")
    if "pruning_saved_fraction" in info:
        console.print(
            f"  pruning trained {info['epochs_trained']} of {info['epochs_full_grid']} epochs of the full grid "
            f"({info['pruning_saved_fraction']:.0%} saved)"
        )
    finished = int(frame["state"].isin(["COMPLETE", "PRUNED", "FAIL"]).sum())
    console.print(f"{finished} of {len(units)} trials finished; outputs in {out}")
    if stopped:
        console.print("stopped early: run the same command again to resume")
        return 130
    return 0


class _progress:
    """A rich progress bar with ETA on a terminal; plain lines elsewhere."""

    def __init__(self, console, total: int, done: int):
        self.console, self.total, self.done = console, total, done
        self._progress = None

    def __enter__(self):
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                "eta",
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task("trials", total=self.total, completed=self.done)
        return self

    def update(self, done: int) -> None:
        self.done = done
        if self._progress is not None:
            self._progress.update(self._task, completed=done)

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def rebuild(out: Path, console) -> int:
    """``scaling-search report DIR``: tables and plots again, from the stored study."""
    from ..analysis.report import read_trials
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
    if meta.get("backend") == "optuna":
        from .optuna_backend import OptunaStudy

        url = meta["storage"]
        db = sqlite_path(url)
        if db is not None and not db.exists():  # a moved or committed run folder: its own copy
            if not (out / "study.db").exists():
                raise UsageError(
                    f"the study storage {db} is gone and {out / 'study.db'} does not exist: restore one of them, "
                    "or run the search again"
                )
            url = f"sqlite:///{(out / 'study.db').resolve()}"
        records = list(OptunaStudy(url, meta["study_name"]).unit_records().values())
    else:
        if not (out / "trials.csv").is_file():
            raise UsageError(f"{out / 'trials.csv'} is missing: nothing to rebuild the report from")
        records = [
            {k: (None if v != v else v) for k, v in r.items()} for r in read_trials(out).to_dict(orient="records")
        ]
    return finish(out, space, records, units, int(meta.get("num_classes", 10)), console, stopped=False, info=info)
