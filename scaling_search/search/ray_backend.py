"""Ray Tune backend: the plan's units as a ``tune.grid_search``, per-trial resources,
a local cluster or ``--ray-address``. No scheduler: halving is synchronous, rung by
rung (``halving.py``), the same on every backend. Each finished record is appended
to ``ray/finished.jsonl`` as it arrives; a resumed run trains only the units that
have none, so nothing finished is trained twice. On a stop request, workers start
no new unit and those under way finish."""

from __future__ import annotations

import atexit
import json
import math
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError
from ..records import TrialRecord, TrialState, stored_fields, unit_key, updated
from ..space import SearchSpace
from . import stopping
from .backend import Hooks, Train, merge


def check_ray_available(address: str | None = None) -> None:
    """Fail early, before any folder is made: Ray Tune missing, or a cluster that
    cannot be joined (unreachable, or refusing this process's token).

    Ray reads its auth settings when first imported, so they are set here.
    """
    if not address:
        # A private local cluster with token auth set explicitly (Ray >= 2.60
        # turns it on by default and warns): a fresh token for this run,
        # inherited by the cluster's processes, unless one is given.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        if (
            os.environ["RAY_AUTH_MODE"] == "token"
            and not os.environ.get("RAY_AUTH_TOKEN")
            and not os.environ.get("RAY_AUTH_TOKEN_PATH")
        ):
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        raise UsageError(
            "--backend ray needs Ray Tune, which is not installed: pip install 'scaling-search[ray]' (or use "
            "--backend optuna)"
        ) from None
    if address:
        _probe_cluster(address)


def trial_resources(
    device: str, jobs: int | None, gpus_per_trial: float | None, cpus_per_trial: float | None, cores: int
) -> tuple[int, str] | None:
    """Check the Ray trial resources asked for; returns the trials at once that an explicit fraction
    implies, and why (None: none was given, the job count is chosen as for the other backends).

    ``--jobs N`` means 1/N of the GPU a trial on CUDA (of the CPUs on a CPU); a fraction given
    explicitly wins, and one that disagrees with ``--jobs`` is a usage error. A run without a GPU
    cannot give its trials one: Ray would never schedule them.
    """
    cuda = device.startswith("cuda")
    for name, value in (("--gpus-per-trial", gpus_per_trial), ("--cpus-per-trial", cpus_per_trial)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{name} must be a number >= 0, got {value!r}")
    if gpus_per_trial and not cuda:
        raise UsageError(
            f"--gpus-per-trial {gpus_per_trial:g} asks for a GPU, but the run is on {device}: drop it, or run with "
            "--device cuda on a machine with a GPU"
        )
    given, fraction, share = (
        ("--gpus-per-trial", gpus_per_trial, 1.0) if cuda else ("--cpus-per-trial", cpus_per_trial, float(cores))
    )
    if not fraction:
        return None
    implied = max(1, math.floor(share / fraction + 1e-9))
    if jobs is not None and not math.isclose(fraction, _jobs_fraction(share, jobs), rel_tol=1e-6):
        raise UsageError(
            f"--jobs {jobs} gives each Ray trial {_jobs_fraction(share, jobs):g} of the {'GPU' if cuda else 'CPUs'} "
            f"but {given} is {fraction:g}: give one of them (or values that agree)"
        )
    return implied, f"{share / fraction:g} trials fit at {given} {fraction:g}"


def _jobs_fraction(share: float, jobs: int) -> float:
    """What ``--jobs`` gives each trial of ``share`` (the GPU, or the CPUs)."""
    return max(0.01, share / jobs)


def packed_options(options, device: str, jobs: int, cores: int):
    """The run options with the fraction ``jobs`` packs the trials at, where none was given explicitly."""
    import dataclasses

    if jobs <= 1 and options.jobs is None:
        return options
    if device.startswith("cuda"):
        if options.gpus_per_trial is not None:
            return options
        return dataclasses.replace(options, gpus_per_trial=_jobs_fraction(1.0, jobs))
    if options.cpus_per_trial is not None:
        return options
    return dataclasses.replace(options, cpus_per_trial=_jobs_fraction(float(cores), jobs))


PROBE_TIMEOUT = 10.0  # seconds for the cluster to answer one call


def _auth_token() -> str | None:
    """The token ``ray.init`` would send, from the places Ray reads it."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _probe_cluster(address: str) -> None:
    """One call to the cluster's GCS, so a wrong address or token is one clear line
    at once (``ray.init`` retries for 20 s with a warning a second, then names neither).

    Uses Ray's generated gRPC stubs (``ray.core.generated``, not public API): the
    tests join a real ``ray start --head`` cluster through this, so a Ray change
    that breaks it fails them.
    """
    if address == "auto":  # Ray finds the cluster started on this machine; ray.init says what is wrong
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in address:
        raise UsageError(
            f"--ray-address {address!r} is not HOST:PORT (the head node's GCS address, port 6379 by default) or auto"
        )
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:  # Ray without grpcio (the [ray] extra has it): a reachability check only
        try:
            socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT).close()
        except OSError as exc:
            raise UsageError(
                f"no Ray cluster answers at {address} ({exc.strerror or exc}): check --ray-address (the head "
                "node's HOST:PORT) and that `ray start --head` runs there"
            ) from None
        return

    token = _auth_token()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=PROBE_TIMEOUT, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                given = "was refused" if token else "is missing"
                raise UsageError(
                    f"the Ray cluster at {address} requires a token and this process's {given}: set RAY_AUTH_TOKEN "
                    "to the cluster's token (`ray get-auth-token` on the head node) or RAY_AUTH_TOKEN_PATH to its "
                    "file"
                ) from None
            raise UsageError(
                f"no Ray cluster answers at {address} ({code.name.lower()}): check --ray-address (the head "
                "node's HOST:PORT) and that `ray start --head` runs there"
            ) from None


def _init_ray(address: str | None, device: str) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Tune warns "Failed to fetch metrics" for trials that left no result file
    # (a failed or never-started trial); the run's own records say what happened.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if address:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"cannot join the Ray cluster at {address!r}: {first}") from None
        return
    # address="local": always a new cluster of this process's own, even when
    # another one runs on the machine (plain ray.init() would join that one).
    # Its own temp folder keeps the other cluster's "current cluster" file intact.
    temp = tempfile.mkdtemp(prefix="ss-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    atexit.register(shutil.rmtree, temp, ignore_errors=True)  # registered first, so it runs after ray.shutdown
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        num_gpus=None if device.startswith("cuda") else 0,
        _temp_dir=temp,
    )


FINISHED = "finished.jsonl"  # one stored record per line, appended by the driver as trials end
MAX_FAILURES = 3  # times Tune starts a trial again after its node or actor was lost


def _trainable(config: dict, plan: dict[str, TrialRecord], train: Train, flag) -> None:
    """Runs inside a Ray worker: one unit, one report per epoch, then its finished record."""
    import ray
    from ray import tune

    try:
        stopping = ray.get(flag.is_set.remote())
    except Exception:  # the flag's node is gone (the driver's own): train; the driver decides what is kept
        stopping = False
    if stopping:  # the run is stopping: start no new unit
        tune.report({"epoch": 0, "accuracy": 0.0, "skipped": True})
        return

    def on_epoch(epoch: int, loss: float, acc: float) -> None:
        tune.report({"epoch": epoch + 1, "accuracy": acc, "loss": loss})

    from ..train.faults import DeviceFault

    try:
        record = train(plan[config["unit"]["unit"]], on_epoch)
    except DeviceFault as exc:  # the machine's failure: nothing stored, the unit is trained again on resume
        tune.report({"epoch": 0, "accuracy": 0.0, "device_fault": exc.reason})
        return
    # Tune checks every result for the metric; a failed trial has no accuracy to give.
    accuracy = record.accuracy if record.accuracy is not None else 0.0
    tune.report({"epoch": record.epochs_run, "accuracy": accuracy, "record": json.dumps(stored_fields(record))})


def _stop_flag():
    """A tiny actor every worker can ask (local cluster or not) whether the run is stopping."""
    import ray

    @ray.remote(num_cpus=0)
    class StopFlag:
        def __init__(self) -> None:
            self.value = False

        def set(self) -> None:
            self.value = True

        def is_set(self) -> bool:
            return self.value

    # On the driver's node: a lost worker node must not take the run's stop flag with it.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return StopFlag.options(scheduling_strategy=here).remote()


class RayBackend:
    """The ``Backend`` over Ray Tune: the plan's unfinished units as one grid, finished records kept in a file."""

    name = "ray"

    def __init__(self, space: SearchSpace, out: Path, device: str, options):
        self.space, self.device, self.options = space, device, options
        self.folder = (Path(out) / "ray").resolve()

    def _found(self, plan: Sequence[TrialRecord]) -> dict[str, TrialRecord]:
        planned = {p.unit: p for p in plan}
        found: dict[str, TrialRecord] = {}
        path = self.folder / FINISHED
        if path.is_file():
            for line in path.read_text().splitlines():
                stored = json.loads(line) if line.strip() else {}
                key = (
                    unit_key(
                        stored["alpha"],
                        stored["beta"],
                        stored["gamma"],
                        stored["seed"],
                        stored.get("rung"),
                        stored.get("fidelity"),
                    )
                    if stored
                    else None
                )
                if key in planned:
                    attempts = found[key].attempts + 1 if key in found else 1
                    found[key] = updated(planned[key], {**stored, "attempts": attempts})
        return found

    def finished(self, plan: Sequence[TrialRecord]) -> set[str]:
        return set(self._found(plan))

    def records(self, plan: Sequence[TrialRecord]) -> list[TrialRecord]:
        return merge(plan, self._found(plan))

    def execute(self, plan: Sequence[TrialRecord], train: Train, hooks: Hooks) -> list[TrialRecord]:
        import ray
        from ray import tune

        options = self.options
        left = [p for p in plan if p.unit not in self.finished(plan)]
        if not left:
            return self.records(plan)
        # The runner owns Ctrl-C: Tune's own handler would abandon the trials under way.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        check_ray_available(options.ray_address)
        # ray.init takes SIGTERM over (it exits at once); the runner's handler abandons the trials and reports.
        term = signal.getsignal(signal.SIGTERM)
        _init_ray(options.ray_address, self.device)
        if term is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, term)
        cuda = self.device.startswith("cuda")
        gpus = options.gpus_per_trial if options.gpus_per_trial is not None else (1.0 if cuda else 0.0)
        cpus = options.cpus_per_trial if options.cpus_per_trial is not None else 1.0
        flag = _stop_flag()
        collector = _collector(self.folder / FINISHED, {p.unit: p for p in left}, hooks, flag)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, plan={p.unit: p for p in left}, train=train, flag=flag),
            {"cpu": cpus, "gpu": gpus},
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        # A fresh experiment per run over what is left: a unit cut short is trained again, a finished one never.
        runs = sorted(self.folder.glob("run-*"))
        tuner = tune.Tuner(
            trainable,
            param_space={"unit": tune.grid_search([{"unit": p.unit} for p in left])},
            tune_config=tune.TuneConfig(metric="accuracy", mode="max"),
            run_config=tune.RunConfig(
                storage_path=str(self.folder),
                name=f"run-{len(runs) + 1}",
                verbose=0,
                # A trial whose node died (or whose actor was lost) is trained again from its start on a node
                # that is up; a unit's result is stored once (the collector keeps the first).
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                callbacks=[collector],
            ),
        )
        hooks.on_wait(0)
        tuner.fit()
        try:
            ray.kill(flag)
        except Exception:  # the cluster may already be going down; the actor dies with it
            pass
        if collector.faults:
            from ..train.faults import DeviceFault

            (unit, reason), more = collector.faults[0], len(collector.faults) - 1
            raise DeviceFault(reason + (f" (and {more} more trial(s))" if more else ""), unit=unit)
        return self.records(plan)


def _collector(path: Path, planned: dict[str, TrialRecord], hooks: Hooks, flag):
    from ray.tune import Callback  # optional dependency: only a Ray run imports it

    class Collector(Callback):
        """Driver side: stores each finished record as it arrives and passes the runner's stop
        request on to the workers. No scheduler stops a trial: every unit trains its whole schedule."""

        def __init__(self, path: Path, planned: dict[str, TrialRecord], hooks: Hooks, flag):
            self.path, self.planned, self.hooks, self.flag = path, planned, hooks, flag
            self.flagged = False
            self.faults: list[tuple[str, str]] = []  # (unit, reason): the machine's failures, nothing stored
            self.stored: set[str] = set()  # units stored by this run: a trial started again never adds one twice

        def __getstate__(self) -> dict:
            # Tune pickles its callbacks for a restore this backend never does; the
            # runner's hooks (a threading.Event) stay in this process.
            return {k: v for k, v in self.__dict__.items() if k != "hooks"}

        def on_step_begin(self, iteration, trials, **info) -> None:
            if stopping.requested():
                # SIGTERM abandons the trials under way at once (a scheduler may have stopped the cluster's
                # own processes too, and its grace period does not wait for Tune to wind trials down); what
                # is finished is in the file already. Raised here, in Tune's loop, not in a signal handler
                # that may land inside Ray's C++ calls.
                raise stopping.Abandoned
            if self.hooks.stop.is_set() and not self.flagged:
                self.flag.set.remote()
                self.flagged = True

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            key = trial.config["unit"]["unit"]
            if "device_fault" in result:
                self.faults.append((key, result["device_fault"]))
            if "record" in result:
                self._store(updated(self.planned[key], json.loads(result["record"])))

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            key = trial.config.get("unit", {}).get("unit")
            if key in self.planned:
                reason = str(getattr(trial, "error_msg", None) or "see the Ray logs").strip().splitlines()[0]
                self._store(self.planned[key].replace(state=TrialState.FAIL, failure=f"ray trial error: {reason}"))

        def _store(self, record: TrialRecord) -> None:
            if record.unit in self.stored:
                return
            self.stored.add(record.unit)
            record = record.replace(attempts=1)
            with open(self.path, "a") as f:  # one short line per trial, written by this one process
                f.write(json.dumps(stored_fields(record)) + "\n")
            self.hooks.on_done(record)

    return Collector(path, planned, hooks, flag)
