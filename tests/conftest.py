import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, cwd: str | os.PathLike | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh interpreter."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "scaling_search.cli", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, and the line says what is wrong."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("scaling-search: error: ")
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])


@pytest.fixture
def cli():
    return run_cli


# ------------------------------------------------------------- datasets


def _shared_data() -> Path:
    """$SCALING_SEARCH_TEST_DATA or $SCALING_SEARCH_DATA, else shared/data beside the checkout (or its worktrees)."""
    candidates = [ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data"]
    for var in ("SCALING_SEARCH_DATA", "SCALING_SEARCH_TEST_DATA"):
        if os.environ.get(var):
            candidates.insert(0, Path(os.environ[var]))
    return next((c for c in candidates if (c / "cifar10-jpeg.tar.gz").is_file()), candidates[0])


SHARED_DATA = _shared_data()
CIFAR10_ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One decode cache for the whole session, so CIFAR-10 is decoded once."""
    return tmp_path_factory.mktemp("scaling-search-cache")


@pytest.fixture(scope="session")
def cifar10(data_cache):
    """CIFAR-10 from the shared JPEG archive (the repository's sibling shared/data)."""
    from scaling_search.data.sources import DataSpec, load_dataset

    assert CIFAR10_ARCHIVE.is_file(), f"test data missing: {CIFAR10_ARCHIVE} (CI clones shared/ beside the repository)"
    return load_dataset(DataSpec("cifar10", data_dir=str(SHARED_DATA)), cache_dir=data_cache)


# ------------------------------------------------------------- searches

TINY = """\
name: tiny
baseline: {{model: efficientnet, width: 0.25, depth: 0.25, resolution: 32}}
data: {{name: cifar10}}
grid: {{kind: full, step: 0.1, max_alpha: 1.1, max_beta: 1.1, max_gamma: 1.3}}
constraint: {{budget: 2x, tolerance: 0.05, resolution_multiple: 4}}
proxy: {{epochs: {epochs}, batch_size: 64, lr: {lr}, train_subset: {train}, test_subset: 128}}
seeds: {seeds}
pruning: {{enabled: {pruning}, min_epochs: 1, reduction_factor: 2}}
extrapolation: {{max_phi: 2, detection: false}}
"""


def tiny_space(
    tmp_path: Path,
    *,
    epochs: int = 1,
    train: int = 128,
    seeds=(0,),
    pruning: bool = False,
    lr: float = 0.05,
    name: str = "tiny.yaml",
) -> Path:
    """A 3-network search space ((1, 1.1, 1.3), (1.1, 1.1, 1.2) and the paper's) of tiny trials."""
    path = tmp_path / name
    path.write_text(TINY.format(epochs=epochs, train=train, seeds=list(seeds), pruning=str(pruning).lower(), lr=lr))
    return path


@pytest.fixture(scope="session")
def data_env(tmp_path_factory):
    if not CIFAR10_ARCHIVE.exists():
        pytest.fail(f"the shared CIFAR-10 archive is missing at {SHARED_DATA}")
    cache = os.environ.get("SCALING_SEARCH_CACHE") or str(tmp_path_factory.mktemp("cache"))
    # One torch thread per CLI process: runs that share the 2 cores (several workers, a busy CI)
    # do not oversubscribe them.
    return {"SCALING_SEARCH_DATA": str(SHARED_DATA), "SCALING_SEARCH_CACHE": cache, "OMP_NUM_THREADS": "1"}


def db_states(run_dir: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect(run_dir / "study.db")
    try:
        return con.execute("select number, state from trials").fetchall()
    finally:
        con.close()


def unit_attempts(run_dir: Path) -> dict[str, list[str]]:
    """Per unit key, the states of all its trials (from the study storage itself)."""
    con = sqlite3.connect(run_dir / "study.db")
    try:
        rows = con.execute(
            "select t.state, a.value_json from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
            "where a.key = 'unit' order by t.number"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, list[str]] = {}
    for state, value in rows:
        out.setdefault(json.loads(value), []).append(state)
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------- command lines and run folders

# What a finished run folder holds (DESIGN.md's outputs): tables, plots, the study and the run's own record.
RUN_OUTPUTS = (
    "trials.csv",
    "best.json",
    "coefficients.md",
    "b_series.csv",
    "accuracy_vs_macs.png",
    "alpha_beta.png",
    "b_series_macs.png",
    "study.db",
    "run.json",
    "space.yaml",
)


def assert_run_outputs(out: Path) -> None:
    """Every file of RUN_OUTPUTS stands in the run folder ``out``."""
    for name in RUN_OUTPUTS:
        assert (out / name).is_file(), name


def cli_command(*args: str) -> list[str]:
    """The console entry point's full command line (for Popen), in this interpreter."""
    return [sys.executable, "-m", "scaling_search.cli", *args]


def run_args(space: Path | str, out: Path | str, *extra: str) -> list[str]:
    """``run`` over ``space`` into ``out`` with a 1 s heartbeat (the tests' runs), then ``extra``."""
    return ["run", "--space", str(space), "--out", str(out), "--heartbeat", "1", *extra]


# The paper's coefficients, as the CLI takes them.
PAPER_ARGS = ("--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15")


def table_args(*extra: str | os.PathLike) -> list:
    """``table`` for the paper's coefficients, then ``extra``."""
    return ["table", *PAPER_ARGS, *extra]


# torchvision's efficientnet_b* trainable parameters with 1000 classes (published model cards, not this code's output)
TORCHVISION_PARAMS = {
    "b0": 5_288_548,
    "b1": 7_794_184,
    "b2": 9_109_994,
    "b3": 12_233_232,
    "b4": 19_341_616,
    "b5": 30_389_784,
    "b6": 43_040_704,
    "b7": 66_347_960,
}


def ctrl_c_after(args: list[str], env: dict, first_line: str, timeout: float = 600) -> tuple[int, str]:
    """Start ``args`` (a full command line), press Ctrl-C (SIGINT) once a stdout line starts with ``first_line``,
    let it finish; its exit status and everything it printed (stdout and stderr together)."""
    full_env = {**os.environ, **env, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(first_line):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(lines) + rest


@pytest.fixture(scope="session")
def straight_race(tmp_path_factory, data_env):
    """A tiny race (test_racing.RACE_YAML) run straight through: its best.json and unit accuracies, which a
    resumed race and the other backends must reproduce."""
    from test_racing import race_space

    folder = tmp_path_factory.mktemp("straight-race")
    out = folder / "run"
    proc = run_cli(*run_args(race_space(folder), out), env=data_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = json.loads((out / "best.json").read_text())
    return {
        "out": out,
        "stdout": proc.stdout,
        "best": best,
        "accuracies": {r["unit"]: r["accuracy"] for r in read_csv(out / "trials.csv")},
    }
