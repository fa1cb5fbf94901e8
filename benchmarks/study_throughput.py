"""Throughput of a whole study: one trial at a time against several at once.

A fixed number of short real trials of a search space's own shapes (spread
over its plan from the cheapest to the dearest network) run on a fresh
Optuna study, once at ``--jobs 1`` (in this process, as ``run`` does) and
once at the job count ``run`` would choose here (worker processes on one
study, startup included), and the figure is trial-epochs per hour of wall
time. The calibrated estimate of each path is printed beside it, so the
estimate can be checked against what was measured.

Measured under benchmarks/protocol.py (machine and load, interleaved
rounds, best / min / median / max). Goal: the chosen job count finishes
trials at least 2x faster than one job on a GPU; on a CPU the cores bound
it, and the goal is only not to lose (>= 1x).

    python benchmarks/study_throughput.py --preset smoke --trials 4         # CPU, a couple of minutes
    python benchmarks/study_throughput.py --device cuda                      # GPU: the imagenette study's shapes
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import protocol  # noqa: E402

from scaling_search.data.sources import DataSpec, load_dataset  # noqa: E402
from scaling_search.search.backend import Hooks  # noqa: E402
from scaling_search.search.jobs import execute_jobs, worker_threads  # noqa: E402
from scaling_search.search.optuna_backend import OptunaBackend, OptunaStudy, default_storage  # noqa: E402
from scaling_search.search.plan import search_candidates, units_for  # noqa: E402
from scaling_search.search.runner import _data_bytes, choose_jobs, estimate_seconds, scaled_estimate  # noqa: E402
from scaling_search.search.trials import planned_record, run_unit  # noqa: E402
from scaling_search.space import load_space, preset_path  # noqa: E402
from scaling_search.train.devices import resolve_device  # noqa: E402
from scaling_search.train.recipe import Runtime  # noqa: E402


def spread(plan: list, k: int) -> list:
    """``k`` units evenly over the plan sorted by MACs: the cheapest and the dearest among them."""
    ordered = sorted(plan, key=lambda p: (p.macs or 0, p.unit))
    if k >= len(ordered):
        return ordered
    if k == 1:
        return [ordered[-1]]
    return [ordered[round(i * (len(ordered) - 1) / (k - 1))] for i in range(k)]


def _backend(folder: Path, name: str) -> OptunaBackend:
    url = default_storage(folder)
    return OptunaBackend(OptunaStudy(url, name, heartbeat=5), url)


def _make_backend(folder: str, name: str) -> OptunaBackend:  # module level: the workers unpickle it
    return _backend(Path(folder), name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--preset", help="a shipped search space (default: imagenette with a GPU, smoke without)")
    which.add_argument("--space", help="a search space YAML file")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", help="where the dataset is (default: the space's, or $SCALING_SEARCH_DATA)")
    ap.add_argument("--trials", type=int, default=8, help="trials per path, spread over the plan (default 8)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per trial (default 1)")
    ap.add_argument("--train-images", type=int, help="training images per trial (default: the space's)")
    ap.add_argument("--test-images", type=int, help="held-out images per trial (default: the space's)")
    ap.add_argument("--jobs", type=int, help="the many-jobs path (default: what run chooses here; at least 2)")
    ap.add_argument("--repeats", type=int, default=1, help="timed rounds of both paths; each keeps its best")
    ap.add_argument("--warmup", type=int, default=0, help="untimed rounds first (each round starts fresh workers)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    name = args.preset or ("imagenette" if device.startswith("cuda") else "smoke")
    space = load_space(args.space or preset_path(name))
    space = space.with_overrides(
        data={"data_dir": args.data_dir},
        proxy={"epochs": args.epochs, "train_subset": args.train_images, "test_subset": args.test_images},
    )
    data = load_dataset(DataSpec(space.data.name, data_dir=space.data.data_dir, storage_size=space.data.storage_size))
    n_train = space.proxy.train_subset or len(data.train_y)
    n_test = space.proxy.test_subset or len(data.test_y)
    plan = [planned_record(space, u, len(data.classes)) for u in units_for(space, search_candidates(space))]
    subset = spread(plan, args.trials)
    runtime = Runtime(device=device)
    seconds_one, cal = estimate_seconds(
        space, subset, n_train, n_test, runtime, num_classes=len(data.classes), image_size=data.image_size
    )
    chosen, why = choose_jobs(None, runtime, cal, _data_bytes(data, n_train, n_test))
    many = args.jobs or max(2, chosen)
    seconds_many = scaled_estimate(cal, space, subset, n_train, n_test, device, many)

    protocol.header(f"study throughput: {space.name} shapes, --jobs 1 against --jobs {many}")
    print(
        f"space       {space.name}: {len(subset)} of its {len(plan)} trials (MACs "
        f"{subset[0].macs / 1e6:.1f}M..{subset[-1].macs / 1e6:.1f}M, {subset[0].resolution}..{subset[-1].resolution} "
        f"px), {args.epochs} epoch(s) of {n_train} images, batch {space.proxy.batch_size}, device {device}"
    )
    print(f"jobs        run would choose {chosen} here ({why}); timed at {many}")
    epochs = len(subset) * args.epochs

    def path(jobs: int):
        def once() -> float:
            with tempfile.TemporaryDirectory(prefix="study-throughput-") as folder:
                study = f"bench-{jobs}-{time.monotonic_ns()}"
                backend = _backend(Path(folder), study)
                done: list = []
                hooks = Hooks(stop=threading.Event(), on_done=done.append)
                started = time.perf_counter()
                if jobs == 1:
                    backend.execute(subset, lambda p, report: run_unit(space, p, data, runtime, report), hooks)
                else:
                    make = _partial(folder, study)
                    run_many = dataclasses.replace(runtime, jobs=jobs)
                    threads = worker_threads(torch.get_num_threads(), jobs)
                    ended = execute_jobs(space, subset, run_many, make, jobs, hooks, threads)
                    if ended.problems or ended.retry_alone:
                        raise SystemExit(f"workers failed: {ended}")
                wall = time.perf_counter() - started
                finished = [r for r in backend.records(subset) if r.state.finished]
                if len(finished) != len(subset) or len(done) != len(subset):
                    raise SystemExit(f"{len(finished)} of {len(subset)} trials finished at --jobs {jobs}")
                return epochs * 3600 / wall

        return once

    series = protocol.interleave(
        {"--jobs 1": path(1), f"--jobs {many}": path(many)},
        args.repeats,
        warmup=args.warmup,
        unit="trial-epochs/h",
        higher_is_better=True,
    )
    one, more = series["--jobs 1"], series[f"--jobs {many}"]
    goal = 2.0 if device.startswith("cuda") else 1.0
    protocol.report(series, [protocol.ratio(more, one, goal, f"--jobs {many} vs --jobs 1, trial-epochs per hour")])
    for label, s, estimate in (("--jobs 1", one, seconds_one), (f"--jobs {many}", more, seconds_many)):
        measured = epochs * 3600 / s.best
        print(
            f"estimate    {label}: {estimate:.1f} s estimated, {measured:.1f} s measured (best round): "
            f"{measured / max(estimate, 1e-9):.2f}x"
        )
    protocol.footer()


def _partial(folder: str, study: str):
    import functools

    return functools.partial(_make_backend, folder, study)


if __name__ == "__main__":
    main()
