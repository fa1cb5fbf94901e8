"""A GPU user's first run, checked on a CPU (issue 25): Ray trial fractions, precision by card, an estimate
no bolder than the measurements, and the GPU check script whose results come back whole. The CUDA facts
(compute capability) are monkeypatched; nothing here is a GPU measurement."""

from __future__ import annotations

import os
import subprocess
import tarfile
import types

import pytest
import torch
from conftest import ROOT, SHARED_DATA, tiny_space
from test_reliability import assert_one_clear_line, assert_unchanged, cli, snapshot

from scaling_search.errors import UsageError
from scaling_search.search.estimate import (
    CUDNN_AUTOTUNE_SECONDS,
    MEASURED_GAIN,
    Calibration,
    autotune_seconds,
    concurrency,
    gain_note,
    unit_seconds,
    worker_startup,
)
from scaling_search.search.ray_backend import packed_options, trial_resources
from scaling_search.search.runner import RunOptions
from scaling_search.train.recipe import Runtime, resolve_precision

# ------------------------------------------------------------ Ray: an explicit fraction wins


def test_an_explicit_gpu_fraction_wins_over_the_job_count():
    # the case: --gpus-per-trial 0.5 with the automatic job count (8 on an H200) became 0.125
    assert trial_resources("cuda:0", None, 0.5, None, 16) == (2, "2 trials fit at --gpus-per-trial 0.5")
    options = RunOptions(out=ROOT / "unused", backend="ray", gpus_per_trial=0.5)
    assert packed_options(options, "cuda:0", 8, 16).gpus_per_trial == 0.5
    assert packed_options(RunOptions(out=ROOT, backend="ray"), "cuda:0", 8, 16).gpus_per_trial == 0.125
    assert trial_resources("cuda:0", 2, 0.5, None, 16)[0] == 2  # agreeing values are fine
    assert trial_resources("cuda:0", 4, None, 3.0, 16) is None  # CPUs of a GPU trial are not what --jobs sets
    with pytest.raises(UsageError, match=r"--jobs 4 gives each Ray trial 0.25 of the GPU but --gpus-per-trial is 0.5"):
        trial_resources("cuda:0", 4, 0.5, None, 16)
    with pytest.raises(UsageError, match="--gpus-per-trial 0.5 asks for a GPU, but the run is on cpu"):
        trial_resources("cpu", None, 0.5, None, 2)
    assert trial_resources("cpu", None, None, 1.0, 4)[0] == 4
    with pytest.raises(UsageError, match="--jobs 2 gives each Ray trial 2 of the CPUs but --cpus-per-trial is 1"):
        trial_resources("cpu", 2, None, 1.0, 4)


@pytest.fixture
def inproc(monkeypatch, tmp_path, data_env):
    for key, value in data_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "extra, says",
    [
        (("--jobs", "4", "--cpus-per-trial", "0.25"), ("--jobs 4 gives each Ray trial", "--cpus-per-trial is 0.25")),
        (("--gpus-per-trial", "0.5"), ("--gpus-per-trial 0.5 asks for a GPU, but the run is on cpu",)),
    ],
)
def test_ray_fractions_that_cannot_hold_are_one_line_and_touch_nothing(extra, says, tmp_path, inproc, capsys):
    space = tiny_space(tmp_path)
    before = snapshot(tmp_path)
    rc, _, err = cli(capsys, "run", "--space", space, "--out", tmp_path / "run", "--backend", "ray", *extra)
    assert_one_clear_line(rc, err, says)
    assert_unchanged(before, snapshot(tmp_path))


# ------------------------------------------------------------ precision by card


def _capability(monkeypatch, major: int, minor: int) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))


@pytest.mark.parametrize(
    "capability, expected", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16")]
)
def test_auto_precision_follows_the_cards_compute_capability(capability, expected, monkeypatch):
    from scaling_search.train.devices import precision_for

    _capability(monkeypatch, *capability)  # T4 7.5, V100 7.0, A100 8.0, L4 8.9, H100 9.0
    assert precision_for(Runtime(), "cuda:0") == expected
    assert precision_for(Runtime(precision="fp32"), "cuda:0") == "fp32"  # asked for: kept
    assert precision_for(Runtime(), "cpu") == "fp32" and precision_for(Runtime(precision="bf16"), "cpu") == "bf16"
    assert resolve_precision("auto", "mps") == "fp32"


def test_a_named_precision_is_part_of_the_search_and_auto_keeps_old_folders(tmp_path):
    import dataclasses

    from scaling_search.space import load_space, parse_space

    space = load_space(tiny_space(tmp_path))
    assert space.precision == "auto"
    fp16 = dataclasses.replace(space, precision="fp16")
    assert fp16.fingerprint() != space.fingerprint()  # other numerics: another search
    plain = space.to_dict()
    plain.pop("precision")  # a space written before the key existed hashes as before
    assert parse_space(plain).fingerprint() == space.fingerprint()
    with pytest.raises(UsageError, match="precision 'fp8' must be one of auto, bf16, fp16, fp32"):
        parse_space({**plain, "precision": "fp8"})


def test_fp16_trains_with_loss_scaling_and_the_result_names_its_precision(cifar10):
    from scaling_search.data.sources import DataSpec
    from scaling_search.models import EfficientNetConfig
    from scaling_search.train.loop import TrialSpec, train_trial
    from scaling_search.train.recipe import Recipe

    model = EfficientNetConfig(width=0.25, depth=0.25, resolution=16, num_classes=10)
    spec = TrialSpec(model, DataSpec("cifar10"), Recipe(epochs=1, batch_size=32, train_subset=64, test_subset=32))
    fp16 = train_trial(spec, Runtime(device="cpu", precision="fp16"), dataset=cifar10)
    assert fp16.precision == "fp16" and fp16.loss_scale is not None and 0 < fp16.loss_scale <= 2.0**16
    fp32 = train_trial(spec, Runtime(device="cpu"), dataset=cifar10)
    assert fp32.precision == "fp32" and fp32.loss_scale is None


# ------------------------------------------------------------ an estimate no bolder than the measurements


def test_the_jobs_gain_on_a_gpu_is_capped_at_what_was_measured():
    assert concurrency("cuda", 1, 1, 1) == 1.0
    assert concurrency("cuda", 2, 1, 1) == pytest.approx(1.75)
    assert concurrency("cuda", 4, 1, 1) == pytest.approx(MEASURED_GAIN[0]) == pytest.approx(3.25)
    assert concurrency("cuda", 8, 1, 1) == pytest.approx(3.25)  # not 6.95: eight jobs were never measured
    note = gain_note("cuda", 8)
    assert "8 jobs assumed to train 3.25x one (capped" in note and "measured 3.25-3.8x at 4 jobs on one H200" in note
    assert gain_note("cuda", 1) == "" and gain_note("cpu", 2) == ""


def test_cudnn_autotuning_is_in_the_estimate_when_it_is_on():
    from scaling_search.search.runner import _estimate_notes

    assert autotune_seconds("cuda", True) == CUDNN_AUTOTUNE_SECONDS and autotune_seconds("cuda", False) == 0.0
    assert autotune_seconds("cpu", True) == 0.0
    base = Calibration(10, (100, 100), (0.01, 0.01), (0.001, 0.001), 0.5, 0, 1)
    tuned = Calibration(10, (100, 100), (0.01, 0.01), (0.001, 0.001), 0.5 + autotune_seconds("cuda", True), 0, 1)
    assert unit_seconds(tuned, 100, 100, 50, 2) - unit_seconds(base, 100, 100, 50, 2) == pytest.approx(35.0)
    ctx = types.SimpleNamespace(device="cuda:0", runtime=Runtime(cudnn_benchmark=True))
    line = _estimate_notes(ctx, 8)
    assert "cuDNN autotuning counted at 35 s a trial" in line and "capped" in line


def test_cudnn_autotuning_reaches_the_calibration(tmp_path, monkeypatch):
    """calibrate adds the autotuning to each trial's setup on CUDA: the device type it reads is emulated."""
    from scaling_search.search import estimate

    seen = []
    monkeypatch.setattr(estimate, "autotune_seconds", lambda kind, on: seen.append((kind, on)) or 0.0)
    from scaling_search.search.plan import units_for
    from scaling_search.search.trials import planned_record
    from scaling_search.space import load_space

    space = load_space(tiny_space(tmp_path))
    from scaling_search.search.plan import space_plan

    plan = [planned_record(space, u, 10) for u in units_for(space, list(space_plan(space).trained))][:1]
    estimate.calibrate(space, plan, 10, Runtime(device="cpu", cudnn_benchmark=True), 32, startup_seconds=4.5)
    assert seen == [("cpu", True)]


def test_a_workers_start_up_leaves_out_the_parents_first_decode():
    assert worker_startup(2.5, 30.0, from_cache=False) == 2.5  # the parent decoded: a worker reads the cache
    assert worker_startup(2.5, 1.5, from_cache=True) == 4.0


# ------------------------------------------------------------ the GPU check script, end to end on the CPU

LIMIT = 16 * 2**20  # what a remote machine hands back per file


def test_gpu_check_script_runs_end_to_end_and_every_file_comes_back(tmp_path, data_env):
    out = tmp_path / "out"
    env = {
        **os.environ,
        **data_env,
        "DEVICE": "cpu",
        "SPACE": str(tiny_space(tmp_path)),
        "OUT": str(out),
        "DATA_DIR": str(SHARED_DATA),
        "PROXY_ARGS": "--width 0.25 --depth 0.25 --images 64 --batch-size 32 --repeats 1 --warmup 0 --workers 0",
        "STUDY_ARGS": "--trials 2 --train-images 64 --test-images 64 --jobs 1",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu_check.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.txt").read_text()
    for step in ("proxy", "study", "run"):
        assert f"{step}: exit 0 in" in summary, summary
    files = sorted(p.name for p in out.iterdir())
    assert files == ["env.txt", "install.log", "proxy.log", "run.log", "run.tar.gz", "study.log", "summary.txt"]
    assert all((out / f).is_file() and (out / f).stat().st_size < LIMIT for f in files)
    largest = max(files, key=lambda f: (out / f).stat().st_size)
    assert f"largest: {largest}, {(out / largest).stat().st_size} bytes (within" in summary
    assert "workload    cpu, imagenette," in (out / "proxy.log").read_text()  # the carried archive's images
    with tarfile.open(out / "run.tar.gz") as tar:
        names = tar.getnames()
    assert {"run/trials.csv", "run/best.json", "run/study.db"} <= set(names)
    assert not [n for n in names if "weights" in n or n.endswith(".safetensors")], names
