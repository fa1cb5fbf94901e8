"""Several trials at once (``run --jobs N``), the default job count, and the time estimate."""

import json
import subprocess

import pytest
from conftest import (
    ROOT,
    RUN_OUTPUTS,
    assert_usage_error,
    cli_command,
    ctrl_c_after,
    read_csv,
    run_args,
    run_cli,
    tiny_space,
    unit_attempts,
)

from scaling_search.records import TrialRecord
from scaling_search.search.estimate import Calibration, concurrency, estimate_from, interpolate, unit_seconds
from scaling_search.search.jobs import MAX_JOBS, busy_cpu_hint, default_jobs, worker_threads

GiB = 2**30
REPORT_FILES = set(RUN_OUTPUTS)


def _run(tmp_path, data_env, out, *extra):
    space = tiny_space(tmp_path, seeds=(0, 1))
    return run_cli(*run_args(space, out, *extra), env=data_env)


def test_two_jobs_train_every_unit_once_and_write_what_one_job_writes(tmp_path, data_env):
    one, two = tmp_path / "one", tmp_path / "two"
    first = _run(tmp_path, data_env, one, "--jobs", "1")
    assert first.returncode == 0, first.stderr + first.stdout
    second = _run(tmp_path, data_env, two, "--jobs", "2")
    assert second.returncode == 0, second.stderr + second.stdout
    assert "jobs: 2 (asked for with --jobs)" in second.stdout
    # one progress line per trial, printed by the parent whichever worker finished it
    assert sorted(line.split("]")[0] for line in second.stdout.splitlines() if line.startswith("[")) == [
        f"[{i}/6" for i in range(1, 7)
    ]
    for out in (one, two):
        attempts = unit_attempts(out)
        assert len(attempts) == 6 and all(states == ["COMPLETE"] for states in attempts.values()), attempts
    rows_one, rows_two = read_csv(one / "trials.csv"), read_csv(two / "trials.csv")
    assert [(r["unit"], r["state"], r["attempts"]) for r in rows_one] == [
        (r["unit"], r["state"], r["attempts"]) for r in rows_two
    ]
    assert list(rows_one[0]) == list(rows_two[0])
    names_one = {p.name for p in one.iterdir() if not p.name.startswith(".")}
    names_two = {p.name for p in two.iterdir() if not p.name.startswith(".")}
    assert names_one == names_two and REPORT_FILES <= names_one
    # The trainings are seeded alike: the same unit reaches the same accuracy in either process layout.
    assert {r["unit"]: r["accuracy"] for r in rows_one} == {r["unit"]: r["accuracy"] for r in rows_two}
    # The estimate of the one-job run holds within a generous factor of its own measured wall time.
    best = json.loads((one / "best.json").read_text())
    ratio = best["wall_seconds_this_run"] / best["estimate_seconds_this_run"]
    assert 0.2 <= ratio <= 5, (best["wall_seconds_this_run"], best["estimate_seconds_this_run"])
    assert json.loads((two / "best.json").read_text())["jobs"] == 2 and best["jobs"] == 1
    assert "against the estimate of" in first.stdout


def test_ctrl_c_with_two_jobs_reports_what_is_done_and_exits_130(tmp_path, data_env):
    out = tmp_path / "run"
    space = tiny_space(tmp_path, seeds=(0, 1, 2), train=256)
    args = cli_command("run", "--space", str(space), "--out", str(out), "--jobs", "2")
    returncode, text = ctrl_c_after(args, data_env, "[1/9]")
    assert returncode == 130, text[-3000:]
    assert "stopped early" in text and (out / "best.json").is_file() and (out / "coefficients.md").is_file()
    rows = read_csv(out / "trials.csv")
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(rows) == 9 and 1 <= len(done) < 9, [r["state"] for r in rows]
    # each worker finished the trial it held, none started another, nothing ran twice
    ran = {key: [s for s in states if s != "WAITING"] for key, states in unit_attempts(out).items()}
    assert all(states in ([], ["COMPLETE"]) for states in ran.values()), ran
    assert sum(states == ["COMPLETE"] for states in ran.values()) == len(done)


def test_bad_job_counts_are_refused_before_anything_is_written(tmp_path, data_env):
    out = tmp_path / "run"
    assert_usage_error(_run(tmp_path, data_env, out, "--jobs", "0"), "jobs")
    assert_usage_error(
        _run(tmp_path, data_env, out, "--backend", "ray", "--jobs", "4", "--cpus-per-trial", "0.25"), "--jobs 4"
    )
    assert not out.exists()


# ------------------------------------------------------------ pure parts


def test_default_job_count_follows_memory_sms_and_the_cap():
    assert default_jobs("cpu").jobs == 1
    # 80 GiB free at 4 GiB a job would hold 17, 132 SMs hold 8, the cap is the 4 measured together
    full = default_jobs("cuda", free_bytes=80 * GiB, per_job_bytes=4 * GiB, sm_count=132)
    assert full.jobs == MAX_JOBS == 4 and "132 SMs" in full.why and "at most 4" in full.why
    assert default_jobs("cuda", free_bytes=10 * GiB, per_job_bytes=4 * GiB, sm_count=132).jobs == 2  # memory
    assert default_jobs("cuda", free_bytes=80 * GiB, per_job_bytes=1 * GiB, sm_count=40).jobs == 2  # SMs
    assert default_jobs("cuda", free_bytes=1 * GiB, per_job_bytes=4 * GiB, sm_count=132).jobs == 1  # never 0
    assert worker_threads(2, 2) == 1 and worker_threads(8, 3) == 2 and worker_threads(1, 4) == 1


def test_concurrency_is_bound_by_the_cores_on_a_cpu():
    assert concurrency("cpu", 1, 2, 2) == 1.0
    assert concurrency("cpu", 2, 2, 2) == 1.0  # two jobs of one thread on two cores: one job's two threads
    assert concurrency("cpu", 2, 1, 2) == 2.0  # one thread a job, two cores: both run at full speed
    assert concurrency("cpu", 4, 1, 2) == 2.0  # more jobs than cores gain nothing more
    assert 3.0 < concurrency("cuda", 4, 16, 16) < 4.0


def _record(macs: int) -> TrialRecord:
    return TrialRecord(
        alpha=1.0,
        beta=1.0,
        gamma=1.0,
        seed=0,
        epochs=2,
        depth=1.0,
        width=1.0,
        resolution=32,
        params=1000,
        macs=macs,
        theoretical_ratio=2.0,
        measured_ratio=2.0,
    )


def test_estimate_interpolates_by_macs_and_divides_by_the_jobs():
    cal = Calibration(
        batch=10,
        macs=(100, 300),
        train_seconds_per_image=(0.01, 0.03),
        eval_seconds_per_image=(0.001, 0.003),
        setup_seconds=0.5,
        peak_bytes=0,
        threads=1,
    )
    assert interpolate(cal, 200, cal.train_seconds_per_image) == pytest.approx(0.02)
    assert interpolate(cal, 900, cal.train_seconds_per_image) == pytest.approx(0.03)  # flat past the dearest
    # 100 train images = 10 steps of 10 at 0.02 s; 50 held-out + 4 recalibration batches at 0.002 s; 2 epochs
    assert unit_seconds(cal, 200, 100, 50, 2) == pytest.approx(0.5 + 2 * (100 * 0.02 + 90 * 0.002))
    plan = [_record(100), _record(200), _record(300), _record(300)]
    serial = estimate_from(cal, plan, n_train=100, n_test=50, epochs=2, jobs=1, speedup=1.0)
    assert serial == pytest.approx(sum(unit_seconds(cal, p.macs, 100, 50, 2) for p in plan))
    two = estimate_from(cal, plan, n_train=100, n_test=50, epochs=2, jobs=2, speedup=2.0, startup_seconds=3.0)
    assert two == pytest.approx(3.0 + serial / 2)
    # one unit on four jobs still takes that unit's time
    single = estimate_from(cal, plan[:1], n_train=100, n_test=50, epochs=2, jobs=4, speedup=4.0)
    assert single == pytest.approx(unit_seconds(cal, 100, 100, 50, 2))


def test_gpu_check_script_parses_and_its_limits_fit_one_call():
    import re

    for script in ("scripts/gpu_check.sh", "scripts/fetch_gpu_wheels.sh"):
        proc = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    text = (ROOT / "scripts/gpu_check.sh").read_text()
    limits = {name: int(value) for name, value in re.findall(r"^(T_[A-Z]+)=\$\{T_[A-Z]+:-(\d+)\}", text, re.M)}
    assert set(limits) == {"T_INSTALL", "T_PROXY", "T_STUDY", "T_RUN"}
    # every step at its limit, plus the run's Ctrl-C grace before a kill, under the 9 minutes of one call
    grace = int(re.search(r"--kill-after=(\d+)", text).group(1))
    assert sum(limits.values()) + grace < 9 * 60, limits


def test_a_busy_cpu_is_named_only_when_threads_can_collide():
    line = busy_cpu_hint(load=2.6, cores=2, threads=2)
    assert line is not None and "load 2.6 on 2 cores" in line and "OMP_NUM_THREADS=1" in line
    assert busy_cpu_hint(load=2.6, cores=2, threads=1) is None  # one thread a trial: nothing to collide
    assert busy_cpu_hint(load=1.9, cores=2, threads=2) is None  # the cores are not oversubscribed
