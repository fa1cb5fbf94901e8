"""Check that the tests guarding a few named behaviours can fail.

For each behaviour below, the repository is copied to a temporary folder, one
small source edit switches the behaviour off there (the edit must match the
source exactly once, so a refactor that moves the code is reported instead of
silently passing), and the tests named for it are run against the copy. The
mutant must be killed: at least one of those tests fails. The script prints a
table and exits non-zero if any mutant survives or cannot be applied.

    python scripts/mutation_check.py              # all behaviours
    python scripts/mutation_check.py --list
    python scripts/mutation_check.py drop-path optimizer-choice --baseline

``--baseline`` first runs each behaviour's tests on an unmodified copy: a
test that fails anyway kills nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str  # the behaviour the edit switches off
    path: str
    find: str
    replace: str
    tests: tuple[str, ...]
    # Other spellings of the same edit, for a layout where the code reads differently; the first
    # (find, replace) that matches exactly once is applied.
    alternatives: tuple[tuple[str, str], ...] = ()


MUTANTS = (
    Mutant(
        "lock-wait",
        "a SQLite study waits for another program's lock (120 s) instead of SQLite's own 5 s",
        "scaling_search/search/optuna_backend.py",
        'engine_kwargs = {"connect_args": {"timeout": lock_timeout()}}',
        "engine_kwargs = {}",
        ("tests/test_reliability.py::test_locked_study_storage_waits_then_completes",),
        alternatives=(('engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT}}', "engine_kwargs = {}"),),
    ),
    Mutant(
        "storage-retry",
        "a storage server that restarts mid-run is waited for (--storage-retry), not the end of the run",
        "scaling_search/search/storage_retry.py",
        "if not (self.answered and self.seconds > 0 and is_transient(exc)):",
        "if True:",
        ("tests/test_reliability.py::test_postgres_restarts_are_waited_for_and_a_longer_outage_stops_clearly",),
    ),
    Mutant(
        "disk-refused",
        "a full or read-only disk under an output is one line naming the file and the space, not a traceback",
        "scaling_search/atomic.py",
        "error = refused(target, exc, max(size or 0, written))",
        "error = None",
        ("tests/test_reliability.py::test_full_or_read_only_disk_while_writing_the_report_is_one_line",),
    ),
    Mutant(
        "sigterm-abandons",
        "SIGTERM abandons the trials under way (queued again at once), reports and exits 143",
        "scaling_search/search/runner.py",
        "signal.SIGTERM: signal.signal(signal.SIGTERM, terminate),",
        "signal.SIGTERM: signal.signal(signal.SIGTERM, handler),",
        ("tests/test_reliability.py::test_sigterm_with_two_jobs_abandons_the_trials_reports_and_exits_143",),
    ),
    Mutant(
        "ray-node-lost",
        "a trial whose Ray node died is trained again on a node that is up",
        "scaling_search/search/ray_backend.py",
        "failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),",
        "failure_config=tune.FailureConfig(max_failures=0),",
        ("tests/test_reliability.py::test_ray_sigterm_then_a_lost_node_resumes_to_the_undisturbed_decision",),
    ),
    Mutant(
        "drop-path",
        "stochastic depth drops residual branches in training",
        "scaling_search/models/efficientnet.py",
        "if p == 0.0 or not training:",
        "if True:",
        ("tests/test_efficientnet.py::test_stochastic_depth_only_in_training",),
    ),
    Mutant(
        "optimizer-choice",
        "the optimizer asked for (adamw, rmsprop) is the one built",
        "scaling_search/train/loop.py",
        'if recipe.optimizer == "sgd":',
        "if True:",
        ("tests/test_proxy.py::test_resolution_other_than_storage_and_other_optimizers",),
    ),
    Mutant(
        "lr-warmup",
        "the learning rate ramps up over the warm-up steps",
        "scaling_search/train/loop.py",
        "if step < warmup:",
        "if False:",
        ("tests/test_proxy.py::test_resolution_other_than_storage_and_other_optimizers",),
    ),
    Mutant(
        "atomic-write",
        "outputs are written to a temporary sibling and renamed over the target",
        "scaling_search/atomic.py",
        'fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)',
        "fd, tmp = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), str(target)",
        (
            "tests/test_cli.py::test_table_output_file_is_atomic_and_validated",
            "tests/test_cli.py::test_a_write_that_fails_midway_leaves_the_old_file",
        ),
    ),
    Mutant(
        "exactly-once-claim",
        "a unit is claimed only through the storage's WAITING -> RUNNING transition",
        "scaling_search/search/optuna_backend.py",
        "if self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):",
        "if self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING) or True:",
        ("tests/test_search.py::test_a_unit_is_claimed_once_even_from_a_stale_queue",),
        # claims through Study.ask(): hand out the trial seen waiting, not the one the transition gave
        alternatives=(
            ("return self.storage.get_trial(trial._trial_id)", "return self.storage.get_trial(first._trial_id)"),
        ),
    ),
    Mutant(
        "no-candidate-exit",
        "a run in which no candidate completed exits non-zero",
        "scaling_search/search/outcome.py",
        "if not self.candidate_completed:",
        "if False:",
        ("tests/test_faults.py::test_the_exit_status_says_whose_failure_it_was",),
    ),
    Mutant(
        "preset-follows-device",
        "the preset follows the device asked for, not the GPU found",
        "scaling_search/cli.py",
        "device = resolve_device(asked)",
        'device = resolve_device("auto")',
        ("tests/test_faults.py::test_the_preset_follows_the_device_asked_for",),
    ),
    Mutant(
        "precision-by-card",
        "auto precision is fp16 with loss scaling on cards before compute capability 8.0",
        "scaling_search/train/recipe.py",
        'return "bf16" if capability is None or tuple(capability) >= BF16_CAPABILITY else "fp16"',
        'return "bf16"',
        ("tests/test_gpu.py::test_auto_precision_follows_the_cards_compute_capability",),
    ),
    Mutant(
        "jobs-gain-cap",
        "the estimate's gain from GPU jobs is capped at what was measured",
        "scaling_search/search/estimate.py",
        "return min(1.0 + (jobs - 1) * CUDA_JOB_EFFICIENCY, MEASURED_GAIN[0])",
        "return 1.0 + (jobs - 1) * CUDA_JOB_EFFICIENCY",
        ("tests/test_gpu.py::test_the_jobs_gain_on_a_gpu_is_capped_at_what_was_measured",),
    ),
    Mutant(
        "ray-explicit-fraction",
        "an explicit --gpus-per-trial wins over the automatic job count",
        "scaling_search/search/ray_backend.py",
        "        if options.gpus_per_trial is not None:\n            return options\n",
        "",
        ("tests/test_gpu.py::test_an_explicit_gpu_fraction_wins_over_the_job_count",),
    ),
)

_SKIP = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "runs", ".venv", "build", "dist"
)


def shared_data() -> str | None:
    """Where the tests' datasets are: the copy lives elsewhere, so say it explicitly."""
    candidates = [os.environ.get("SCALING_SEARCH_TEST_DATA"), os.environ.get("SCALING_SEARCH_DATA")]
    candidates.append(ROOT.parent / "shared" / "data")
    candidates.append(ROOT.parents[1] / "shared" / "data")
    for c in candidates:
        if c and (Path(c) / "cifar10-jpeg.tar.gz").is_file():
            return str(c)
    return None


def run_tests(repo: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """pytest's exit status and its summary line."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    data = shared_data()
    if data:
        env["SCALING_SEARCH_TEST_DATA"] = env["SCALING_SEARCH_DATA"] = data
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else proc.stderr.strip()[-200:]


def check(mutant: Mutant, baseline: bool) -> tuple[str, float]:
    """'killed', 'SURVIVED', or why the check could not be made."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(ROOT, repo, ignore=_SKIP, symlinks=True)
        if baseline and run_tests(repo, mutant.tests)[0] != 0:
            return "NOT CHECKED: the tests fail without the mutation", time.perf_counter() - start
        source = repo / mutant.path
        text = source.read_text()
        edit = next(
            ((f, r) for f, r in ((mutant.find, mutant.replace), *mutant.alternatives) if text.count(f) == 1), None
        )
        if edit is None:
            return f"NOT APPLIED: no edit matches {mutant.path} exactly once", time.perf_counter() - start
        source.write_text(text.replace(*edit))
        rc, summary = run_tests(repo, mutant.tests)
    seconds = time.perf_counter() - start
    # Killed means a test failed; an error in a fixture (data not found, say) kills nothing.
    if rc == 1 and re.search(r"\b\d+ failed\b", summary):
        return "killed", seconds
    if rc == 1:
        return f"NOT CHECKED: {summary}", seconds
    if rc == 0:
        return "SURVIVED", seconds
    return f"NOT CHECKED: pytest exit status {rc} (collection or usage error)", seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="behaviours to check (default: all)")
    ap.add_argument("--list", action="store_true", help="list the behaviours and their tests")
    ap.add_argument("--baseline", action="store_true", help="first check each behaviour's tests pass unmutated")
    args = ap.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        ap.error(f"unknown behaviour {', '.join(unknown)}: choose from {', '.join(known)}")
    chosen = [known[n] for n in args.names] if args.names else list(MUTANTS)
    if args.list:
        for m in chosen:
            print(f"{m.name:<20} {m.what}\n{'':<20} {m.path}: {m.find!r} -> {m.replace!r}")
            for t in m.tests:
                print(f"{'':<20} {t}")
        return 0
    print(f"{'behaviour':<20} {'result':<10} {'seconds':>8}  tests")
    bad = 0
    for m in chosen:
        result, seconds = check(m, args.baseline)
        bad += result != "killed"
        tests = ", ".join(t.split("::")[-1] for t in m.tests)
        print(f"{m.name:<20} {result:<10} {seconds:>8.1f}  {tests}", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} mutants killed" + ("" if not bad else f"; {bad} not: see above"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
