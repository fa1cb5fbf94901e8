"""How a run ends (issue 25): the candidate's failures apart from the machine's, the final count and the
exit status, the preset that follows the device asked for. No GPU here: the CUDA error is a real
``torch.AcceleratorError`` raised by the fault switch, the CUDA facts are monkeypatched."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from conftest import read_csv, run_args, tiny_space, unit_attempts
from test_reliability import assert_one_clear_line, assert_unchanged, cli, snapshot

from scaling_search.records import TrialRecord, TrialState
from scaling_search.search.outcome import EXIT_MACHINE, EXIT_NO_CANDIDATE, EXIT_OK, EXIT_STOPPED, outcome_of
from scaling_search.train.faults import ENV_INJECT_DEVICE_ERROR, DeviceFault, is_device_error


@pytest.fixture
def inproc(monkeypatch, tmp_path, data_env):
    for key, value in data_env.items():
        monkeypatch.setenv(key, value)
    for switch in ("SCALING_SEARCH_INJECT_OOM", ENV_INJECT_DEVICE_ERROR):
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _record(seed: int, state: TrialState, failure: str | None = None, rung: int | None = None) -> TrialRecord:
    return TrialRecord(
        alpha=1.0,
        beta=1.1,
        gamma=1.3,
        seed=seed,
        epochs=1,
        depth=0.25,
        width=0.275,
        resolution=40,
        params=1,
        macs=1,
        theoretical_ratio=2.0,
        measured_ratio=2.0,
        state=state,
        failure=failure,
        accuracy=0.5 if state is TrialState.COMPLETE else None,
        rung=rung,
    )


OOM = "out of memory on cuda:0 at batch size 256 (1.1x width, 1x depth, 128 px): try a smaller batch size"
NAN = "training loss became NaN in epoch 1 by step 3 (lr 0.2, sgd): the training diverged"


def test_the_exit_status_says_whose_failure_it_was():
    ok = outcome_of([_record(0, TrialState.COMPLETE), _record(1, TrialState.FAIL, OOM)])
    assert ok.status == EXIT_OK and ok.failures == (("out of memory", 1),)
    none = outcome_of([_record(0, TrialState.FAIL, NAN), _record(1, TrialState.FAIL, OOM)])
    assert none.status == EXIT_NO_CANDIDATE
    assert "2 of 2 trials finished: 0 complete, 2 failed (diverged 1, out of memory 1), 0 waiting" in none.line()
    # a complete shorter halving rung is no completed candidate
    assert outcome_of([_record(0, TrialState.COMPLETE, rung=0), _record(0, TrialState.FAIL, NAN)]).status == 1
    bug = outcome_of([_record(0, TrialState.COMPLETE), _record(1, TrialState.FAIL, "unexpected error: KeyError: 3")])
    assert bug.status == EXIT_MACHINE and dict(bug.failures) == {"unexpected error": 1}
    machine = outcome_of([_record(0, TrialState.COMPLETE), _record(1, TrialState.WAITING)], machine=["job 1 stopped"])
    assert machine.status == EXIT_MACHINE and machine.waiting == 1 and machine.to_json()["machine_failures"]
    assert outcome_of([_record(0, TrialState.WAITING)], machine=["x"], stopped=True).status == EXIT_STOPPED


def test_device_errors_are_told_from_the_candidates_failures():
    assert is_device_error(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    assert is_device_error(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))
    assert not is_device_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_device_error(ValueError("CUDA error: not a RuntimeError"))


def test_all_failed_run_exits_non_zero_with_the_counts(tmp_path, inproc, capsys, monkeypatch):
    """The smoke preset's run with SCALING_SEARCH_INJECT_OOM="1", on the tiny space (the same path, fewer units)."""
    monkeypatch.setenv("SCALING_SEARCH_INJECT_OOM", "1")
    rc, out, err = cli(capsys, *run_args(tiny_space(tmp_path, seeds=(0, 1)), tmp_path / "run"))
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    n = best["units_total"]
    assert rc == EXIT_NO_CANDIDATE, (out, err)
    assert f"{n} of {n} trials finished: 0 complete, {n} failed (out of memory {n}), 0 waiting; exit status 1" in out
    assert best["outcome"] == {
        "exit_status": 1,
        "ended": "no candidate completed",
        "complete": 0,
        "failed": n,
        "waiting": 0,
        "pruned": 0,
        "failures_by_reason": {"out of memory": n},
        "machine_failures": [],
    }
    assert best["precision"] == "fp32" and ", precision fp32" in out.splitlines()[0]  # the CPU's auto
    assert "precision fp32 (asked: auto)" in (tmp_path / "run" / "coefficients.md").read_text()


def test_out_of_memory_beside_other_jobs_is_retried_alone_before_it_counts(tmp_path, cifar10, monkeypatch):
    """A real OptunaBackend on a SQLite study, trials trained in this process: the first as one of two
    jobs (its out-of-memory leaves nothing stored), then alone (its out-of-memory is its result)."""
    from scaling_search.search.backend import Hooks
    from scaling_search.search.jobs import jobs_outcome, retry_alone
    from scaling_search.search.optuna_backend import OptunaBackend, OptunaStudy
    from scaling_search.search.plan import units_for
    from scaling_search.search.trials import planned_record, run_unit
    from scaling_search.space import load_space
    from scaling_search.train.recipe import Runtime

    space = load_space(tiny_space(tmp_path))
    plan = [planned_record(space, u, 10) for u in units_for(space, space_candidates(space))]
    url = f"sqlite:///{tmp_path / 'study.db'}"
    backend = OptunaBackend(OptunaStudy(url, "s", heartbeat=1), url)
    first = plan[0]
    monkeypatch.setenv("SCALING_SEARCH_INJECT_OOM", f"1@resolution={first.resolution},depth={first.depth}")
    said, done = [], []
    hooks = Hooks(stop=threading.Event(), on_done=done.append)

    def train(jobs: int):
        return lambda p, report: run_unit(space, p, cifar10, Runtime(device="cpu", jobs=jobs), report)

    with pytest.raises(DeviceFault) as fault:
        backend.execute(plan, train(2), hooks)
    assert fault.value.shared_oom and fault.value.unit == first.unit and "while 2 jobs shared" in fault.value.reason
    assert backend.records(plan)[0].state is TrialState.WAITING  # not the candidate's FAIL
    ended = jobs_outcome([("fault", 0, (first.unit, fault.value.reason, True))], 2, "cpu")
    assert ended.retry_alone == (first.unit,) and not ended.problems
    assert retry_alone(backend, plan, ended, hooks, lambda *a, **k: said.append(a[0]), train(1)) == []
    records = {r.unit: r for r in backend.records(plan)}
    assert records[first.unit].state is TrialState.FAIL
    assert records[first.unit].failure.startswith("out of memory on cpu at batch size 64")
    assert records[first.unit].attempts == 2 and "ran out of memory beside other jobs" in said[0]
    assert all(r.state is TrialState.COMPLETE for k, r in records.items() if k != first.unit)


def space_candidates(space):
    from scaling_search.search.plan import space_plan

    return list(space_plan(space).trained)


def test_a_device_error_in_one_of_two_jobs_leaves_the_unit_for_the_resume(tmp_path, inproc, capsys, monkeypatch):
    out = tmp_path / "run"
    space = tiny_space(tmp_path)
    # (1.2, 1.1, 1.15), the paper's network, is the only one at 36 px; the workers inherit the switch
    monkeypatch.setenv(ENV_INJECT_DEVICE_ERROR, "1@resolution=36")
    rc, printed, err = cli(capsys, *run_args(space, out, "--jobs", "2"))
    assert rc == EXIT_MACHINE, printed + err
    assert "device error on cpu: AcceleratorError: CUDA error: unspecified launch failure" in printed
    assert "which a resume trains again" in printed
    assert "2 of 3 trials finished: 2 complete, 0 failed, 1 waiting; exit status 3" in printed
    best = json.loads((out / "best.json").read_text())
    assert best["outcome"]["exit_status"] == 3 and len(best["outcome"]["machine_failures"]) == 1
    rows = {r["unit"]: r for r in read_csv(out / "trials.csv")}
    assert rows["a1.2-b1.1-g1.15-s0"]["state"] == "WAITING" and not rows["a1.2-b1.1-g1.15-s0"]["failure"]
    monkeypatch.delenv(ENV_INJECT_DEVICE_ERROR)  # the device works again
    rc, printed, err = cli(capsys, *run_args(space, out, "--jobs", "1"))
    assert rc == EXIT_OK, printed + err
    attempts = unit_attempts(out)
    assert attempts.pop("a1.2-b1.1-g1.15-s0") == ["FAIL", "COMPLETE"]  # interrupted, then trained on resume
    assert all(states == ["COMPLETE"] for states in attempts.values()), attempts  # every other unit once


def test_no_worker_that_can_start_its_device_stops_the_run_at_once(tmp_path, inproc, capsys, monkeypatch):
    monkeypatch.setenv(ENV_INJECT_DEVICE_ERROR, "0")
    rc, out, err = cli(capsys, *run_args(tiny_space(tmp_path), tmp_path / "run", "--jobs", "2"))
    assert rc == EXIT_MACHINE, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scaling-search: error: none of the 2 workers could start"), err
    assert "all CUDA-capable devices are busy or unavailable" in lines[0]
    assert not [line for line in out.splitlines() if line.startswith("[")]  # nothing was trained


# ------------------------------------------------------------ the preset follows the device


def _gpu_present(monkeypatch, present: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(present))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_the_preset_follows_the_device_asked_for(monkeypatch):
    from scaling_search.cli import preset_for_device
    from scaling_search.errors import UsageError

    _gpu_present(monkeypatch, True)
    assert preset_for_device("cpu") == ("cpu", "device cpu asked for")
    assert preset_for_device("auto")[0] == "imagenette" and preset_for_device("cuda:0")[0] == "imagenette"
    _gpu_present(monkeypatch, False)
    assert preset_for_device("auto")[0] == "cpu"
    with pytest.raises(UsageError, match="no usable CUDA GPU"):
        preset_for_device("cuda")


def test_cuda_without_a_gpu_is_one_line_and_touches_nothing(tmp_path, inproc, capsys, monkeypatch):
    _gpu_present(monkeypatch, False)
    before = snapshot(tmp_path)
    rc, out, err = cli(capsys, "run", "--device", "cuda", "--out", tmp_path / "run")
    assert_one_clear_line(rc, err, ("device 'cuda' asked for", "no usable CUDA GPU"))
    assert "using preset" not in out
    assert_unchanged(before, snapshot(tmp_path))
