"""Real clients and real services: the Optuna API and optuna-dashboard on a run's
study, a PostgreSQL server shared by several workers, Ray clusters on loopback.

A service that cannot start fails its test with the reason (never a skip).
"""

import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, assert_usage_error, read_csv, run_cli, tiny_space
from services import PostgresServer, RayHead, free_port

from scaling_search.search.optuna_backend import METRIC, OptunaStudy, UnitSampler
from scaling_search.search.plan import Unit
from scaling_search.search.runner import resolve_storage

# ------------------------------------------------------------- Optuna API


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_env):
    tmp = tmp_path_factory.mktemp("native")
    out = tmp / "run"
    space = tiny_space(tmp, seeds=(0, 1), epochs=2)
    proc = run_cli("run", "--space", str(space), "--out", str(out), env=data_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _load(out: Path) -> optuna.Study:
    meta = json.loads((out / "run.json").read_text())
    return optuna.load_study(study_name=meta["study_name"], storage=resolve_storage(meta["storage"], out))


def test_run_study_has_native_params_metric_and_intermediate_values(finished_run):
    study = _load(finished_run)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 6
    assert study.metric_names == [METRIC]
    for t in trials:
        assert set(t.params) == {"alpha", "beta", "gamma", "seed"}
        assert {k: t.params[k] for k in t.params} == {k: t.user_attrs[k] for k in t.params}
        assert isinstance(t.distributions["alpha"], optuna.distributions.FloatDistribution)
        assert t.distributions["seed"] == optuna.distributions.CategoricalDistribution([0, 1])
        assert sorted(t.intermediate_values) == [1, 2]  # one per epoch
        assert t.intermediate_values[2] == pytest.approx(t.value)  # the last epoch is the result
    # one search space for the study: what importances and contours need
    assert set(optuna.search_space.intersection_search_space(trials)) == {"alpha", "beta", "gamma", "seed"}


def test_importances_and_plots_work_on_a_run_study(finished_run):
    import matplotlib

    matplotlib.use("Agg")
    study = _load(finished_run)
    importances = optuna.importance.get_param_importances(study)
    assert set(importances) == {"alpha", "beta", "gamma", "seed"}
    assert sum(importances.values()) == pytest.approx(1.0)
    optuna.visualization.plot_contour(study, params=["alpha", "beta"])  # raised "Parameter alpha does not exist"
    fig = optuna.visualization.plot_contour(study, params=["alpha", "gamma"])  # beta is 1.1 throughout here
    xs = {x for trace in fig.data if getattr(trace, "x", None) is not None for x in trace.x if x is not None}
    assert {1.1, 1.2} <= xs  # the trials' alphas are on the plot
    for plot in ("plot_slice", "plot_rank", "plot_param_importances", "plot_intermediate_values"):
        assert getattr(optuna.visualization, plot)(study).data, plot
    ax = optuna.visualization.matplotlib.plot_contour(study, params=["alpha", "gamma"])
    assert ax is not None
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert buf.tell() > 1000


def _dashboard_get(app, path: str) -> dict:
    status = {}
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    body = b"".join(app(environ, lambda s, h, *a: status.setdefault("s", s)))
    assert status["s"].startswith("200"), (path, status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_serves_params_importances_and_metric_name(finished_run):
    from optuna_dashboard import wsgi

    meta = json.loads((finished_run / "run.json").read_text())
    app = wsgi(resolve_storage(meta["storage"], finished_run))  # run.json keeps it relative to the folder
    studies = _dashboard_get(app, "/api/studies")["study_summaries"]
    (sid,) = [s["study_id"] for s in studies if s["study_name"] == meta["study_name"]]
    detail = _dashboard_get(app, f"/api/studies/{sid}")
    assert detail["objective_names"] == [METRIC]  # not "Objective 0"
    assert {p["name"] for p in detail["intersection_search_space"]} == {"alpha", "beta", "gamma", "seed"}
    assert detail["has_intermediate_values"]
    assert all(len(t["params"]) == 4 for t in detail["trials"])
    importances = _dashboard_get(app, f"/api/studies/{sid}/param_importances")["param_importances"]
    assert {i["name"] for i in importances[0]} == {"alpha", "beta", "gamma", "seed"}


def _units(n_seeds: int = 2) -> list[Unit]:
    cands = [(1.1, 1.1, 1.2), (1.2, 1.1, 1.2), (1.2, 1.1, 1.15)]
    return [Unit(a, b, g, s, 2.0, 2.2) for s in range(n_seeds) for a, b, g in cands]


def test_ask_pops_the_first_waiting_trial_and_never_creates_one(tmp_path):
    """What _claim relies on from Optuna: ask() pops the lowest-numbered WAITING
    trial; with an empty queue it would create a trial, which _claim never lets happen."""
    study = OptunaStudy(f"sqlite:///{tmp_path / 's.db'}", "s")
    units = _units()
    assert study.ensure_units(units) == 6
    assert study.ensure_units(units) == 0  # queued once, however often asked
    keys = {u.key for u in units}
    claimed = [study._claim(keys) for _ in range(6)]
    assert [c.number for c in claimed] == list(range(6))
    assert [c.params["alpha"] for c in claimed] == [u.alpha for u in units]
    assert study._claim(keys) is None
    assert len(study.study.trials) == 6
    # Optuna's own behaviour on an empty queue (the reason for the lock): a new, unit-less trial,
    # which the study's sampler refuses to give parameters.
    with pytest.raises(RuntimeError, match="not a queued unit"):
        study.study.ask(fixed_distributions=study.search_space())
    assert isinstance(study.study.sampler, UnitSampler)


# ------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()  # fails the test with the reason when it cannot start
    yield server
    server.stop()


def _enqueue_at_once(url: str, barrier, n_seeds: int) -> None:
    study = OptunaStudy(url, "race")
    barrier.wait()
    study.ensure_units(_units(n_seeds))


def test_workers_starting_together_queue_each_unit_once(postgres):
    """The double training on PostgreSQL: fresh workers enqueueing at the same instant."""
    url = postgres.create_database("race")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_enqueue_at_once, args=(url, barrier, 20)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    study = optuna.load_study(study_name="race", storage=url)
    keys = [t.user_attrs["unit"] for t in study.trials]
    assert len(keys) == 60 and len(set(keys)) == 60  # 3 candidates x 20 seeds, each queued once


def _worker(space: Path, out: Path, url: str, env: dict) -> subprocess.Popen:
    args = [sys.executable, "-m", "scaling_search.cli", "run", "--space", str(space), "--out", str(out)]
    args += ["--storage", url, "--heartbeat", "2"]
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def test_postgres_soak_four_workers_one_killed_and_restarted(tmp_path, postgres, data_env):
    url = postgres.create_database("soak")
    space = tiny_space(tmp_path, seeds=(0, 1, 2, 3), train=256, epochs=2)  # 12 units of a few seconds
    env = {**os.environ, **data_env, "PYTHONWARNINGS": "ignore"}
    started = time.monotonic()
    workers = [_worker(space, tmp_path / f"w{i}", url, env) for i in range(4)]
    victim = workers[0]
    tag = f":{victim.pid}"
    study = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it in mid-trial: once it holds a RUNNING trial
        time.sleep(0.5)
        assert victim.poll() is None, victim.communicate()
        if study is None:
            try:
                study = optuna.load_study(study_name=None, storage=url)
            except Exception:  # not created yet, or the study name not there yet
                continue
        running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        if any(t.user_attrs.get("worker", "").endswith(tag) for t in running):
            break
    else:
        pytest.fail("the first worker never started a trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    workers[0] = _worker(space, tmp_path / "w0", url, env)
    outputs = [w.communicate(timeout=600) for w in workers]
    wall = time.monotonic() - started
    assert [w.returncode for w in workers] == [0, 0, 0, 0], [o[1][-2000:] for o in outputs]
    for stdout, stderr in outputs:
        assert postgres.password not in stdout + stderr

    trials = optuna.load_study(study_name=None, storage=url).trials
    by_unit: dict[str, list] = {}
    for t in trials:
        by_unit.setdefault(t.user_attrs["unit"], []).append(t)
    from conftest import tiny_space as _  # noqa: F401  (the grid comes from the same space)

    from scaling_search.search.plan import search_candidates, units_for
    from scaling_search.space import load_space

    grid = {u.key for u in units_for(load_space(space), search_candidates(load_space(space)))}
    assert set(by_unit) == grid
    for key, ts in by_unit.items():
        done = [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == 1, (key, [(t.number, t.state.name, t.user_attrs.get("worker")) for t in ts])
        # anything else is the killed worker's interrupted trial (FAIL without a reason), nothing trained twice
        others = [t for t in ts if t is not done[0]]
        assert all(t.state == optuna.trial.TrialState.FAIL and "failure" not in t.user_attrs for t in others)
    killed = [t for ts in by_unit.values() for t in ts if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1 and killed[0].user_attrs["worker"].endswith(tag)
    print(f"soak: 4 workers, {len(grid)} units, 1 SIGKILL + restart, {wall:.0f} s")


def test_postgres_wrong_password_is_one_line_without_the_password(tmp_path, postgres, data_env):
    url = postgres.url("postgres").replace(postgres.password, "not-" + postgres.password)
    proc = run_cli(
        "run", "--space", str(tiny_space(tmp_path)), "--out", str(tmp_path / "r"), "--storage", url, env=data_env
    )
    assert_usage_error(proc, "password authentication failed")
    assert postgres.password not in proc.stderr
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ Ray

TOKEN = "5" * 64


@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("ray", reason="the ray extra is part of the test install")
    head = RayHead(token=TOKEN)
    yield head
    head.stop()


def _ray_env(data_env: dict, tmp_path: Path, token: str | None) -> dict:
    env = {**data_env, "HOME": str(tmp_path)}  # no ~/.ray/auth_token from the machine
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        os.environ.get(k) and env.setdefault(k, "")
    if token is not None:
        env.update(RAY_AUTH_TOKEN=token, RAY_AUTH_MODE="token")
    return env


def _run_env(env: dict) -> dict:
    full = {**os.environ, "PYTHONWARNINGS": "ignore", **env}
    return {k: v for k, v in full.items() if v != "" or not k.startswith("RAY_")}


def _ray_run(tmp_path, out, env, *extra, timeout=600):
    args = [sys.executable, "-m", "scaling_search.cli", "run", "--space", str(tiny_space(tmp_path)), "--backend"]
    args += ["ray", "--out", str(out), *extra]
    return subprocess.run(args, cwd=ROOT, env=_run_env(env), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("token", [None, "6" * 64], ids=["missing", "wrong"])
def test_ray_cluster_token_missing_or_wrong_is_one_line_before_anything_is_written(tmp_path, ray_head, data_env, token):
    out = tmp_path / "run"
    started = time.monotonic()
    proc = _ray_run(tmp_path, out, _ray_env(data_env, tmp_path, token), "--ray-address", ray_head.address)
    assert_usage_error(proc, "RAY_AUTH_TOKEN", ray_head.address)
    assert not out.exists()
    assert time.monotonic() - started < 60
    assert ray_head.alive()


def test_ray_address_nobody_answers_is_one_line(tmp_path, data_env):
    out = tmp_path / "run"
    proc = _ray_run(tmp_path, out, _ray_env(data_env, tmp_path, TOKEN), "--ray-address", f"127.0.0.1:{free_port()}")
    assert_usage_error(proc, "no Ray cluster answers")
    assert not out.exists()


def test_ray_joins_a_token_cluster_and_finishes(tmp_path, ray_head, data_env):
    out = tmp_path / "run"
    started = time.monotonic()
    proc = _ray_run(tmp_path, out, _ray_env(data_env, tmp_path, TOKEN), "--ray-address", ray_head.address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows)
    assert "Failed to fetch metrics" not in proc.stderr + proc.stdout
    assert ray_head.alive()
    print(f"ray: head up in {ray_head.start_seconds:.1f} s, join + 3 trials in {time.monotonic() - started:.1f} s")


def test_ray_without_address_starts_a_private_cluster_beside_a_running_one(tmp_path, ray_head, data_env):
    out = tmp_path / "run"
    env = _ray_env(data_env, tmp_path, None)
    env["RAY_ADDRESS"] = ray_head.address  # the other cluster is the one a plain ray.init() would join
    started = time.monotonic()
    proc = _ray_run(tmp_path, out, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "num_cpus and num_gpus must not be provided" not in proc.stderr
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows)
    assert ray_head.alive()  # the other cluster is untouched
    print(f"ray: private cluster + 3 trials in {time.monotonic() - started:.1f} s")


# ------------------------------------------------------------------ a race on every backend


def _decision(out: Path) -> tuple:
    best = json.loads((out / "best.json").read_text())
    return best["decision"], best["race"]["winner"], best["race"]["rounds"]


def test_a_race_on_two_postgres_workers_trains_each_unit_once_and_decides_alike(
    tmp_path, postgres, data_env, straight_race
):
    from test_racing import race_space

    url = postgres.create_database("racing")
    space = race_space(tmp_path)
    env = {**os.environ, **data_env, "PYTHONWARNINGS": "ignore"}
    workers = [_worker(Path(space), tmp_path / f"w{i}", url, env) for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outputs]
    by_unit: dict[str, list] = {}
    for t in optuna.load_study(study_name=None, storage=url).trials:
        by_unit.setdefault(t.user_attrs["unit"], []).append(t.state)
    assert set(by_unit) == set(straight_race["accuracies"])  # the same rounds, the same units
    assert all(states == [optuna.trial.TrialState.COMPLETE] for states in by_unit.values()), by_unit
    reference = _decision(straight_race["out"])
    for i in range(2):
        assert _decision(tmp_path / f"w{i}") == reference
    rows = {r["unit"]: r["accuracy"] for r in read_csv(tmp_path / "w0" / "trials.csv")}
    assert rows == straight_race["accuracies"]


def test_a_race_on_ray_runs_the_same_rounds_to_the_same_decision(tmp_path, ray_head, data_env, straight_race):
    from test_racing import race_space

    out = tmp_path / "run"
    args = [sys.executable, "-m", "scaling_search.cli", "run", "--space", race_space(tmp_path), "--backend", "ray"]
    args += ["--out", str(out), "--ray-address", ray_head.address]
    proc = subprocess.run(
        args, cwd=ROOT, env=_run_env(_ray_env(data_env, tmp_path, TOKEN)), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 2 (" in proc.stdout  # the second round was decided, over Ray's results
    rows = read_csv(out / "trials.csv")
    assert {r["unit"] for r in rows} == set(straight_race["accuracies"])
    assert all(r["state"] == "COMPLETE" for r in rows)
    assert _decision(out) == _decision(straight_race["out"])
    # The report walks the rounds again over Ray's stored results: the same decision, nothing trained.
    before = (out / "trials.csv").read_text()
    assert run_cli("report", str(out), env=data_env).returncode == 0
    assert _decision(out) == _decision(straight_race["out"]) and (out / "trials.csv").read_text() == before
