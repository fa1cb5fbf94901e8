"""Several trials at once on one machine: N worker processes on one study.

Each worker is a fresh (spawned) process that loads the dataset itself (from
the decode cache), opens the same storage and runs the backend's work loop:
units are claimed under the backend's queue lock, so each is trained exactly
once whatever the number of workers. Finished records come back through a
queue, so the parent prints one line per trial from any worker. The parent
owns Ctrl-C: workers ignore SIGINT, and a stop request reaches them as an
event they check between trials.

A worker first opens its device; a worker whose device fails there, or whose
trial meets a device error, stops with one line and leaves the unit to be
trained again (``train/faults.py``); a trial that runs out of memory beside the
other jobs ends its worker too (one job fewer) and is handed back to the
parent to be trained alone. When no worker could open the device the run stops
at once with the cause (``MachineError``).
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MachineError, UsageError
from ..records import TrialRecord
from ..space import SearchSpace
from ..train.recipe import Runtime
from . import stopping
from .backend import Backend, Hooks
from .storage_retry import StorageLost

MAX_JOBS = 4  # the default's ceiling: four jobs on one H200 is the most measured together (estimate.py)
SMS_PER_JOB = 16  # a job of these small networks keeps about this many SMs busy (an H100 has 132)
MEMORY_HEADROOM = 0.85  # of the free memory: the allocator's cache and fragmentation need the rest
CUDA_CONTEXT_BYTES = 600 * 2**20  # each process's own CUDA context, outside the allocator's count


@dataclass(frozen=True)
class JobsOutcome:
    """What the workers' ends say beyond their records."""

    problems: tuple[str, ...] = ()  # the machine's failures, one line each: workers that stopped
    interrupted: tuple[str, ...] = ()  # units a device error stopped: trained again on resume
    retry_alone: tuple[str, ...] = ()  # units that ran out of memory beside other jobs: trained again alone


@dataclass(frozen=True)
class JobChoice:
    jobs: int
    why: str


def default_jobs(
    device_type: str,
    *,
    free_bytes: int = 0,
    per_job_bytes: int = 0,
    sm_count: int = 0,
    cap: int = MAX_JOBS,
) -> JobChoice:
    """The job count a device takes when none is asked for: 1 on a CPU; on a GPU as many as
    its free memory and its SMs hold, at most ``cap``."""
    if device_type != "cuda":
        return JobChoice(1, "the default on a CPU, where one trial already uses every core; ask for more with --jobs")
    need = max(1, per_job_bytes)
    by_memory = int(free_bytes * MEMORY_HEADROOM // need)
    by_sms = sm_count // SMS_PER_JOB
    jobs = max(1, min(cap, by_memory, by_sms))
    why = (
        f"{free_bytes / 2**30:.1f} GiB free at {need / 2**30:.2f} GiB a job holds {by_memory}, "
        f"{sm_count} SMs at {SMS_PER_JOB} a job hold {by_sms}, at most {cap}"
    )
    return JobChoice(jobs, why)


def per_job_bytes(peak_bytes: int, data_bytes: int) -> int:
    """One job's device memory: the dearest candidate's peak in its train steps, its own copy of
    the data, and its CUDA context."""
    return int(peak_bytes + data_bytes + CUDA_CONTEXT_BYTES)


def cuda_facts(device: str) -> tuple[int, int]:
    """(free bytes, SM count) of a CUDA device."""
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free), int(torch.cuda.get_device_properties(torch.device(device)).multi_processor_count)


def busy_cpu_hint(load: float, cores: int, threads: int) -> str | None:
    """A line for a CPU run that starts on a machine already busier than its cores, or None.

    Measured on 2 shared cores: with torch's default of one thread a core, a trial that took 30 s
    alone took 25 min an epoch once other work held the cores (the threads wait on each other);
    with one thread a process trials took 30-35 s at load 2 and 140 s at load 12. Thread counts
    are not changed here: another count sums in another order and changes a seed's accuracy."""
    if threads <= 1 or load <= cores:
        return None
    return (
        f"the CPU is busy before this run (load {load:.1f} on {cores} cores) and each trial uses {threads} threads: "
        "shared cores can slow every trial many times over; OMP_NUM_THREADS=1 keeps one thread a trial "
        "(accuracies then differ from a run with more threads)"
    )


def worker_threads(parent_threads: int, jobs: int) -> int:
    """CPU threads for each of ``jobs`` workers: the parent's share, so the jobs do not oversubscribe the cores."""
    return max(1, parent_threads // max(1, jobs))


# ------------------------------------------------------------------ workers


@dataclass(frozen=True)
class WorkerTask:
    """What one worker needs, all of it picklable (the spawn context sends it to a fresh interpreter)."""

    index: int
    space: SearchSpace
    plan: tuple[TrialRecord, ...]
    runtime: Runtime
    threads: int
    make_backend: Callable[[], Backend]  # a module-level function or partial: it opens the shared storage
    weights_dir: Path | None = None  # --keep-weights: where a full schedule's final weights go


def _worker(task: WorkerTask, stop, results) -> None:
    """A worker's whole life: data, storage, the backend's work loop; every outcome goes to ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards Ctrl-C through ``stop``
    stopping.install_worker_handler()  # SIGTERM (from a scheduler or the parent): abandon the unit under way
    from ..train.faults import DeviceFault, open_device

    try:
        import torch

        from ..data.sources import DataSpec, load_dataset
        from .trials import run_unit

        torch.set_num_threads(task.threads)
        try:
            open_device(task.runtime.device)
        except DeviceFault as exc:
            results.put(("nodevice", task.index, exc.reason))
            return
        d = task.space.data
        data = load_dataset(DataSpec(name=d.name, data_dir=d.data_dir, storage_size=d.storage_size), progress=False)
        backend = task.make_backend()

        def train(planned: TrialRecord, report):
            return run_unit(task.space, planned, data, task.runtime, report, weights_dir=task.weights_dir)

        hooks = Hooks(
            stop=stop,
            on_done=lambda record: results.put(("done", task.index, record)),
            on_wait=lambda running: results.put(("wait", task.index, running)),
        )
        backend.execute(list(task.plan), train, hooks)
    except stopping.Abandoned:  # its trial is queued again already
        results.put(("exit", task.index, None))
    except StorageLost as exc:
        results.put(("lost", task.index, (exc.url, exc.waited, exc.reason)))
    except UsageError as exc:
        results.put(("usage", task.index, str(exc)))
    except DeviceFault as exc:  # the unit is left to be trained again; this worker stops
        results.put(("fault", task.index, (exc.unit, exc.reason, exc.shared_oom)))
    except BaseException as exc:  # reported by the parent; the trial under way is queued again by its heartbeat
        results.put(("error", task.index, f"{type(exc).__name__}: {exc}"))
    else:
        results.put(("exit", task.index, None))


def execute_jobs(
    space: SearchSpace,
    plan: Sequence[TrialRecord],
    runtime: Runtime,
    make_backend: Callable[[], Backend],
    jobs: int,
    hooks: Hooks,
    threads: int,
    *,
    weights_dir: Path | None = None,
) -> JobsOutcome:
    """Run ``jobs`` workers on the study until the plan is done or ``hooks.stop`` is set.

    Returns, once every worker has ended, what went wrong with any of them and
    the units left to train again. A worker's UsageError is raised here once the
    others have stopped, a device that no worker could open as ``MachineError``;
    a second Ctrl-C (KeyboardInterrupt) ends them at once, their trials queued
    again on resume.
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    results = context.Queue()
    tasks = [WorkerTask(i, space, tuple(plan), runtime, threads, make_backend, weights_dir) for i in range(jobs)]
    procs = [
        context.Process(target=_worker, args=(t, stop, results), name=f"scaling-search-job-{t.index}") for t in tasks
    ]
    # Started with SIGINT ignored, which a child keeps through exec: a Ctrl-C at the terminal
    # (sent to the whole process group) cannot kill a worker before it installs its own handler.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    ended: set[int] = set()
    problems: list[tuple[str, int, str]] = []
    dead_since: dict[int, float] = {}
    terminated = False
    try:
        while len(ended) < jobs:
            if hooks.stop.is_set() and not stop.is_set():
                stop.set()
            if stopping.requested() and not terminated:
                terminated = True  # a scheduler may have signalled this process alone: pass it on
                for i, p in enumerate(procs):
                    if i not in ended and p.is_alive():
                        p.terminate()
            try:
                kind, index, payload = results.get(timeout=0.2)
            except queue_module.Empty:
                for i, p in enumerate(procs):
                    if i in ended or p.is_alive():
                        continue
                    # Its last message may still be in the pipe: wait a moment before calling it lost.
                    if time.monotonic() - dead_since.setdefault(i, time.monotonic()) > 2.0:
                        ended.add(i)
                        problems.append(("error", i, f"exited with status {p.exitcode}"))
                continue
            if kind == "done":
                hooks.on_done(payload)
            elif kind == "wait":
                hooks.on_wait(payload)
            else:
                ended.add(index)
                if kind != "exit":
                    problems.append((kind, index, payload))
                    if kind in ("usage", "lost"):
                        stop.set()  # the same input stops every worker: no point in the others going on
    except KeyboardInterrupt:  # the second Ctrl-C: stop at once
        for p in procs:
            if p.is_alive():
                p.kill()
        raise
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
        results.join_thread()
    lost = [payload for kind, _, payload in problems if kind == "lost"]
    if lost:
        raise StorageLost(*lost[0])
    usage = [text for kind, _, text in problems if kind == "usage"]
    if usage:
        raise UsageError(usage[0])
    return jobs_outcome(problems, jobs, runtime.device)


def retry_alone(
    backend: Backend,
    plan: Sequence[TrialRecord],
    ended: JobsOutcome,
    hooks: Hooks,
    say: Callable[..., None],
    train_alone: Callable,
) -> list[str]:
    """Train again, alone in this process, the units that ran out of memory beside other jobs (and what
    the workers left queued); an out-of-memory now is the candidate's. Returns the machine's failures met."""
    from ..train.faults import DeviceFault

    if not ended.retry_alone or hooks.stop.is_set():
        return []
    finished, interrupted = backend.finished(plan), set(ended.interrupted)
    left = [p for p in plan if p.unit not in finished and p.unit not in interrupted]
    say(
        f"{len(ended.retry_alone)} trial(s) ran out of memory beside other jobs ({', '.join(ended.retry_alone)}): "
        f"training the {len(left)} trial(s) left alone, one at a time",
        highlight=False,
    )
    try:
        backend.execute(left, train_alone, hooks)
    except DeviceFault as exc:
        return [f"stopped by {exc.reason} in trial {exc.unit}, which a resume trains again"]
    return []


def jobs_outcome(problems: Sequence[tuple[str, int, object]], jobs: int, device: str) -> JobsOutcome:
    """The workers' ends, read: faults apart from the other problems; no worker on its device is the end."""
    unstarted = [text for kind, _, text in problems if kind == "nodevice"]
    if unstarted and len(unstarted) == jobs:
        hint = (
            " (a GPU in exclusive-process compute mode admits one process: set it to DEFAULT with nvidia-smi -c, "
            "or run with --jobs 1)"
            if device.startswith("cuda")
            else ""
        )
        raise MachineError(f"none of the {jobs} workers could start its device: {unstarted[0]}{hint}")
    lines, interrupted, retry = [], [], []
    for kind, i, payload in problems:
        if kind == "fault":
            unit, reason, shared_oom = payload
            if shared_oom:
                retry.append(unit)
                continue  # not a failure yet: trained again alone
            interrupted.append(unit)
            lines.append(f"job {i} stopped: {reason} in trial {unit}, which a resume trains again")
        elif kind == "nodevice":
            lines.append(f"job {i} stopped: {payload}")
        else:
            lines.append(f"job {i}: {payload}")
    return JobsOutcome(tuple(lines), tuple(interrupted), tuple(retry))


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
