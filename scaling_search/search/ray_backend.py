"""Ray Tune backend: the same units as a ``tune.grid_search``, optional ASHA,
per-trial resources, a local cluster or ``--ray-address``. Results land in the
same rows as the Optuna backend's, so ``trials.csv`` has the same columns."""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
from pathlib import Path

from ..errors import UsageError
from ..space import SearchSpace
from .trials import Unit, run_unit


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


def _trainable(config: dict, space: SearchSpace, data, device: str) -> None:
    """Runs inside a Ray worker: one unit, one report per epoch, a final full row."""
    from ray import tune

    unit = Unit.from_attrs(config["unit"])

    def on_epoch(epoch: int, loss: float, acc: float) -> None:
        tune.report({"epoch": epoch + 1, "accuracy": acc, "loss": loss, "state": "RUNNING"})

    state, fields = run_unit(space, unit, data, device, on_epoch)
    final = {
        "epoch": fields.get("epochs_run") or 0,
        "state": state,
        **{k: v for k, v in fields.items() if v is not None},
    }
    tune.report(final)


def run_ray(
    space: SearchSpace, units: list[Unit], data, device: str, options, console, stop: threading.Event
) -> list[dict]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    check_ray_available(options.ray_address)
    _init_ray(options.ray_address, device)
    gpus = options.gpus_per_trial if options.gpus_per_trial is not None else (1.0 if device.startswith("cuda") else 0.0)
    cpus = options.cpus_per_trial if options.cpus_per_trial is not None else 1.0
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, space=space, data=data, device=device), {"cpu": cpus, "gpu": gpus}
    )
    scheduler = None
    if space.pruning.enabled:
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=space.proxy.epochs,
            grace_period=space.pruning.min_epochs,
            reduction_factor=space.pruning.reduction_factor,
        )
    storage = (Path(options.out) / "ray").resolve()
    name = "study"
    path = storage / name
    if tune.Tuner.can_restore(str(path)):
        console.print(f"resuming the Ray experiment in {path}")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"unit": tune.grid_search([u.attrs() for u in units])},
            tune_config=tune.TuneConfig(metric="accuracy", mode="max", scheduler=scheduler),
            run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0),
        )
    console.print(
        f"Ray Tune: {len(units)} trials, {cpus:g} CPU / {gpus:g} GPU each" + (", ASHA over epochs" if scheduler else "")
    )
    grid = tuner.fit()
    records = []
    for result in grid:
        unit = result.config["unit"]
        m = dict(result.metrics or {})
        state = m.get("state", "FAIL")
        record = dict(unit)
        if result.error is not None:
            record.update(state="FAIL", failure=f"ray trial error: {str(result.error).strip().splitlines()[0]}")
        elif state == "RUNNING":  # stopped by ASHA after an epoch report
            history = result.metrics_dataframe
            accs = list(history["accuracy"]) if history is not None and "accuracy" in history else [m.get("accuracy")]
            losses = list(history["loss"]) if history is not None and "loss" in history else []
            record.update(
                state="PRUNED",
                accuracy=m.get("accuracy"),
                epochs_run=m.get("epoch"),
                epoch_accuracies=json.dumps([round(float(a), 6) for a in accs if a == a]),
                epoch_losses=json.dumps([round(float(x), 6) for x in losses if x == x]),
            )
        else:
            record.update({k: v for k, v in m.items() if k in _FIELDS})
            record["state"] = state
        record["attempts"] = 1
        records.append(record)
    return records


_FIELDS = (
    "accuracy",
    "epochs_run",
    "params",
    "macs",
    "images_per_second",
    "wall_seconds",
    "device",
    "failure",
    "epoch_accuracies",
    "epoch_losses",
)
