"""Reliability (issue 6): bad input to every command, faults during a run,
security of inputs, and a soak of several workers with one of them killed.

The bad-input catalogue runs in-process through ``cli.main`` (no interpreter
and torch start per case); a few cases run the real entry point in a fresh
interpreter without any warning filter, to show that stderr holds exactly one
line there too. Every catalogue case snapshots the whole test folder (paths,
mtimes, contents) before and after: a bad input creates and changes nothing.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, cli_command, read_csv, run_args, table_args, tiny_space, unit_attempts
from PIL import Image

from scaling_search.cli import main
from scaling_search.errors import UsageError

SAMPLE_UNITS = 3  # tiny_space: (1, 1.1, 1.3), (1.1, 1.1, 1.2) and the paper's (1.2, 1.1, 1.15)


# ------------------------------------------------------------------ helpers


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, mtime and (for files) content."""
    state: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_dir() and not path.is_symlink():
            state[rel] = ("dir", st.st_mtime_ns)
        else:
            state[rel] = ("file", st.st_mtime_ns, path.read_bytes())
    return state


def assert_unchanged(before: dict[str, tuple], after: dict[str, tuple]) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a bad input created or changed {changed}"


def assert_one_clear_line(rc: int, err: str, says: tuple[str, ...], never: tuple[str, ...] = ()) -> None:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("scaling-search: error: "), line
    for fragment in says:
        assert fragment.lower() in line.lower(), (fragment, line)
    for fragment in never:
        assert fragment not in line, (fragment, line)


def clean_env(data_env: dict) -> dict:
    """The environment of a user's shell: no warning filter; one torch thread,
    as the tests share two cores and oversubscribed threads stall for seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "SCALING_SEARCH_INJECT_OOM")}
    return {**env, **data_env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_command(space: Path | str, out: Path | str, *extra: str) -> list[str]:
    return cli_command(*run_args(space, out, *extra))


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)


def db_rows(run_dir: Path, sql: str) -> list[tuple]:
    """Rows from the study, or none while it is being created or locked."""
    if not (run_dir / "study.db").exists():
        return []
    try:
        con = sqlite3.connect(run_dir / "study.db", timeout=0.5)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return []


def trial_states(run_dir: Path) -> list[str]:
    return [s for (s,) in db_rows(run_dir, "select state from trials")]


@pytest.fixture
def inproc(monkeypatch, tmp_path, data_env):
    """cli.main in this process: the shared data, the test folder as working
    directory (default run folders land there), one torch thread."""
    import torch

    for key, value in data_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SCALING_SEARCH_INJECT_OOM", raising=False)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --------------------------------------------------------- bad-input catalogue


def tiny_dict() -> dict:
    return yaml.safe_load(TINY.format(epochs=1, train=128, seeds=[0], pruning="false", lr=0.05))


DROP = object()


@dataclass
class Ctx:
    """Builds the files a catalogue case needs, inside the test folder."""

    tmp: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.tmp / "run"

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def space(self, changes: dict | None = None, name: str = "space.yaml") -> Path:
        """The tiny space with dotted keys changed ("proxy.epochs": 0) or dropped (DROP)."""
        data = tiny_dict()
        for dotted, value in (changes or {}).items():
            *parents, key = dotted.split(".")
            node = data
            for p in parents:
                node = node[p]
            if value is DROP:
                del node[key]
            else:
                node[key] = value
        return self.write(name, yaml.safe_dump(data))

    def run(self, *extra: str, space: Path | None = None) -> list:
        return run_args(space or self.space(), self.out, *extra)

    def tree(self, problem: str) -> Path:
        """An ImageFolder tree (2 classes, 2 images each per split) with one problem."""
        root = self.tmp / f"data-{problem}"
        root.mkdir()
        if problem == "empty":
            return root
        for split in ("train", "test"):
            for klass, color in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
                for i in range(2):
                    (root / split / klass).mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (8, 8), color).save(root / split / klass / f"{i}.png")
        if problem == "empty-class":
            (root / "train" / "newt").mkdir()
        elif problem == "corrupt":
            (root / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
        return root

    def read_only(self, path: Path) -> Path:
        """A folder nobody can write to, root included (tests run as root)."""
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            path.chmod(0o555)
            self.cleanups.append(lambda: path.chmod(0o755))
        else:
            try:
                made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            except FileNotFoundError:
                pytest.skip("cannot make a folder read-only for root here: no chattr")
            if made.returncode != 0:
                pytest.skip(f"cannot make a folder read-only for root here: chattr +i failed ({made.stderr.strip()})")
            self.cleanups.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=True))
        try:  # the case only means something if the folder really refuses writes
            (path / "probe").touch()
        except OSError:
            return path
        (path / "probe").unlink()
        pytest.skip(f"{path} still accepts writes after being made read-only")

    def earlier_run(self, space: Path) -> Path:
        """A run folder left by an earlier run of ``space`` (its metadata and outputs)."""
        from scaling_search.space import load_space

        self.out.mkdir()
        meta = {
            "fingerprint": load_space(space).fingerprint(),
            "space": "tiny",
            "budget": "2x",
            "backend": "optuna",
            "storage": f"sqlite:///{self.out / 'study.db'}",
        }
        (self.out / "run.json").write_text(json.dumps(meta))
        (self.out / "trials.csv").write_text("unit,state\na1.2-b1.1-g1.15-s0,COMPLETE\n")
        (self.out / "best.json").write_text('{"alpha": 1.2}\n')
        return self.out


def case(name: str, args: Callable[[Ctx], list], *says: str, never: tuple[str, ...] = ()):
    """A command line built in the test folder, and what its one error line must (not) say."""
    return pytest.param(args, says, never, id=name)


def _another_search(c: Ctx) -> list:
    c.earlier_run(c.space())
    return c.run(space=c.space({"seeds": [0, 1]}, name="other.yaml"))


def _unreachable_storage_for_earlier_run(c: Ctx) -> list:
    space = c.space()
    c.earlier_run(space)  # outputs of an earlier run must survive the failed start untouched
    # psycopg (a dependency) is the driver; port 1 has no server
    return c.run("--storage", "postgresql+psycopg://search:secret@127.0.0.1:1/db", space=space)


def _driverless_storage_for_earlier_run(c: Ctx) -> list:
    # SQLAlchemy's mysql:// driver is mysqlclient (module MySQLdb), which the project never installs
    assert importlib.util.find_spec("MySQLdb") is None, "this case needs an environment without mysqlclient"
    space = c.space()
    c.earlier_run(space)
    return c.run("--storage", "mysql://search:secret@127.0.0.1:1/db", space=space)


def _damaged_run_json(c: Ctx) -> list:
    c.out.mkdir()
    c.write("run/run.json", "{not json")
    return ["report", c.out]


CATALOGUE = [
    # flops
    case(
        "flops-unknown-model",
        lambda c: ["flops", "efficientnet-b42"],
        "unknown model 'efficientnet-b42'",
        "choose one of",
    ),
    case("flops-unknown-family", lambda c: ["flops", "resnet-50"], "unknown model 'resnet-50'", "choose one of"),
    case(
        "flops-resolution-0",
        lambda c: ["flops", "efficientnet", "--resolution", "0"],
        "resolution must be a positive integer",
        "--help",
    ),
    case(
        "flops-resolution-not-int",
        lambda c: ["flops", "efficientnet", "--resolution", "2.5"],
        "resolution must be a positive integer",
        "'2.5'",
    ),
    case(
        "flops-width-negative", lambda c: ["flops", "efficientnet", "--width", "-1"], "width must be a positive number"
    ),
    case(
        "flops-alpha-below-1",
        lambda c: ["flops", "efficientdet", "--phi", "1", "--alpha", "0.9"],
        "alpha = 0.9 is below 1",
        "use values >= 1",
    ),
    case("flops-detector-without-phi", lambda c: ["flops", "efficientdet"], "efficientdet needs phi", "--phi 3"),
    # candidates
    case("candidates-budget-abc", lambda c: ["candidates", "--budget", "abc"], "budget 'abc'", "--budget 2x"),
    case("candidates-budget-0x", lambda c: ["candidates", "--budget", "0x"], "budget '0x' must be greater than 1x"),
    case(
        "candidates-budget-negative", lambda c: ["candidates", "--budget=-2x"], "budget '-2x' must be greater than 1x"
    ),
    case(
        "candidates-budget-negative-spaced",
        lambda c: ["candidates", "--budget", "-2x"],
        "--budget: expected one argument",
        "--option=VALUE",
    ),
    case(
        "candidates-budget-1x",
        lambda c: ["candidates", "--budget", "1x"],
        "budget '1x' must be greater than 1x",
        "2x doubles",
    ),
    case("candidates-step-0", lambda c: ["candidates", "--step", "0"], "step 0.0 must be in (0, 1]", "--step 0.05"),
    case("candidates-step-above-1", lambda c: ["candidates", "--step", "1.5"], "step 1.5 must be in (0, 1]"),
    case("candidates-step-not-number", lambda c: ["candidates", "--step", "abc"], "--step", "invalid float", "--help"),
    case(
        "candidates-tolerance-2",
        lambda c: ["candidates", "--tolerance", "2"],
        "tolerance 2.0 must be in (0, 1)",
        "--tolerance 0.05",
    ),
    case(
        "candidates-tolerance-negative",
        lambda c: ["candidates", "--tolerance", "-0.1"],
        "tolerance -0.1 must be in (0, 1)",
    ),
    case("candidates-max-below-1", lambda c: ["candidates", "--max-beta", "0.5"], "max-beta = 0.5 is below 1"),
    case("candidates-unknown-constraint", lambda c: ["candidates", "--constraint", "exact"], "invalid choice: 'exact'"),
    case(
        "candidates-none-on-grid",
        lambda c: ["candidates", "--budget", "3x", "--tolerance", "0.001", "--step", "0.5"],
        "no (alpha, beta, gamma)",
        "widen --tolerance",
    ),
    # table
    case(
        "table-alpha-below-1",
        lambda c: ["table", "--alpha", "0.9", "--beta", "1.1", "--gamma", "1.15"],
        "alpha = 0.9 is below 1",
    ),
    case(
        "table-gamma-not-number",
        lambda c: ["table", "--alpha", "1.2", "--beta", "1.1", "--gamma", "abc"],
        "gamma must be a number >= 1",
    ),
    case("table-missing-beta", lambda c: ["table", "--alpha", "1.2", "--gamma", "1.15"], "required: --beta"),
    case(
        "table-unknown-family",
        lambda c: table_args("--family", "resnet"),
        "invalid choice: 'resnet'",
    ),
    case(
        "table-max-phi-0",
        lambda c: table_args("--max-phi", "0"),
        "max-phi must be a positive integer",
    ),
    case(
        "table-budget-abc",
        lambda c: table_args("--budget", "abc"),
        "budget 'abc'",
    ),
    case(
        "table-output-folder-missing",
        lambda c: table_args("--output", c.tmp / "nowhere" / "t.md"),
        "does not exist",
        "create it first",
    ),
    case(
        "table-output-is-a-folder",
        lambda c: table_args("--output", c.tmp),
        "is a folder",
        "give a file path",
    ),
    # train
    case("train-resolution-0", lambda c: ["train", "--resolution", "0"], "resolution must be a positive integer"),
    case(
        "train-unknown-dataset", lambda c: ["train", "--data", "mnist"], "unknown dataset 'mnist'", "imagefolder:PATH"
    ),
    case("train-lr-overflows", lambda c: ["train", "--lr", "1e300"], "learning rate must be a positive number up to"),
    case("train-batch-of-one", lambda c: ["train", "--batch-size", "1"], "batch size must be at least 2"),
    case(
        "train-data-dir-missing",
        lambda c: ["train", "--data-dir", c.tmp / "nowhere"],
        "nowhere does not exist",
        "point it at the folder",
    ),
    case(
        "train-imagefolder-missing",
        lambda c: ["train", "--data", f"imagefolder:{c.tmp / 'nowhere'}"],
        "does not exist",
        "train/ and test/",
    ),
    case(
        "train-imagefolder-empty",
        lambda c: ["train", "--data", f"imagefolder:{c.tree('empty')}"],
        "needs train/ and test/",
    ),
    case(
        "train-imagefolder-empty-class",
        lambda c: ["train", "--data", f"imagefolder:{c.tree('empty-class')}"],
        "train/newt has no images",
        "add its images or remove",
    ),
    case(
        "train-imagefolder-corrupt-image",
        lambda c: ["train", "--data", f"imagefolder:{c.tree('corrupt')}"],
        "cannot read image",
        "dog/1.png",
        "replace or remove",
    ),
    # run: command line
    case("run-budget-abc", lambda c: c.run("--budget", "abc"), "budget 'abc'", "--budget 2x"),
    case("run-budget-0x", lambda c: c.run("--budget", "0x"), "must be greater than 1x"),
    case("run-budget-negative", lambda c: c.run("--budget=-2x"), "must be greater than 1x"),
    case("run-budget-1x", lambda c: c.run("--budget", "1x"), "budget '1x' must be greater than 1x"),
    case("run-seeds-0", lambda c: c.run("--seeds", "0"), "seeds must be a positive integer"),
    case("run-heartbeat-0", lambda c: c.run("--heartbeat", "0"), "heartbeat must be a positive integer"),
    case(
        "run-unknown-preset",
        lambda c: ["run", "--preset", "nope", "--out", c.out],
        "unknown preset 'nope'",
        "--space FILE",
    ),
    case(
        "run-space-missing",
        lambda c: ["run", "--space", c.tmp / "none.yaml", "--out", c.out],
        "does not exist",
        "give a YAML file",
    ),
    # run: the search space
    case(
        "run-space-malformed",
        lambda c: c.run(space=c.write("bad.yaml", "name: t\nproxy: [epochs: 1\n")),
        "not valid YAML at line",
        "fix the syntax",
    ),
    case("run-space-not-a-mapping", lambda c: c.run(space=c.write("list.yaml", "- 1\n- 2\n")), "expected a mapping"),
    case(
        "run-space-unknown-key",
        lambda c: c.run(space=c.space({"proxy.epochz": 1})),
        "unknown key 'proxy.epochz'",
        "known keys are",
    ),
    case(
        "run-space-wrong-type",
        lambda c: c.run(space=c.space({"proxy.epochs": "many"})),
        "proxy.epochs: expected integer, got 'many'",
    ),
    case(
        "run-space-missing-field",
        lambda c: c.run(space=c.space({"proxy": DROP})),
        "missing required key 'proxy'",
        "add it",
    ),
    case(
        "run-space-python-tag",
        lambda c: c.run(
            space=c.write("evil.yaml", f"name: !!python/object/apply:os.system ['touch {c.tmp}/HACKED']\n")
        ),
        "tag that is not allowed",
        "plain mappings",
    ),
    case(
        "run-space-name-escapes",
        lambda c: ["run", "--space", c.space({"name": "../x"})],
        "name '../x' must be a plain word",
    ),
    case(
        "run-space-name-absolute",
        lambda c: ["run", "--space", c.space({"name": "/tmp/x"})],
        "name '/tmp/x' must be a plain word",
    ),
    case(
        "run-space-resolution-0",
        lambda c: c.run(space=c.space({"baseline.resolution": 0})),
        "baseline.resolution must be a positive integer",
    ),
    case(
        "run-space-resolution-not-int",
        lambda c: c.run(space=c.space({"baseline.resolution": 32.5})),
        "baseline.resolution: expected integer, got 32.5",
    ),
    case(
        "run-space-unknown-family",
        lambda c: c.run(space=c.space({"baseline.model": "efficientdet-d0"})),
        "baseline.model 'efficientdet-d0'",
        "only classifier families can be searched",
    ),
    case(
        "run-space-unknown-model",
        lambda c: c.run(
            space=c.space({"baseline.model": "efficientnet-b42", "baseline.width": DROP, "baseline.depth": DROP})
        ),
        "unknown model 'efficientnet-b42'",
    ),
    case(
        "run-space-coefficient-below-1",
        lambda c: c.run(space=c.space({"grid.max_alpha": 0.8})),
        "grid.max_alpha must be at least 1",
    ),
    case("run-space-step-0", lambda c: c.run(space=c.space({"grid.step": 0})), "grid.step 0.0 must be in (0, 1]"),
    case(
        "run-space-tolerance-1.5",
        lambda c: c.run(space=c.space({"constraint.tolerance": 1.5})),
        "constraint.tolerance 1.5 must be in (0, 1)",
    ),
    case("run-space-budget-1x", lambda c: c.run(space=c.space({"constraint.budget": "1x"})), "must be greater than 1x"),
    case(
        "run-space-no-candidate",
        lambda c: c.run(space=c.space({"constraint.tolerance": 0.001})),
        "no (alpha, beta, gamma) satisfies",
        "widen constraint.tolerance",
    ),
    case(
        "run-space-batch-of-one",
        lambda c: c.run(space=c.space({"proxy.batch_size": 1})),
        "proxy section: batch size must be at least 2",
    ),
    case(
        "run-space-lr-infinite",
        lambda c: c.run(space=c.space({"proxy.lr": float("inf")})),
        "proxy section: learning rate must be a positive number",
    ),
    case(
        "run-space-momentum-1.5", lambda c: c.run(space=c.space({"proxy.momentum": 1.5})), "momentum must be in [0, 1)"
    ),
    case(
        "run-space-subset-too-large",
        lambda c: c.run(space=c.space({"proxy.train_subset": 60000})),
        "train_subset is 60000",
        "lower it",
    ),
    case(
        "run-baseline-out-of-memory",
        lambda c: c.run(space=c.space({"baseline.resolution": 600_000})),
        "does not fit in memory",
        "lower proxy.batch_size",
    ),
    # run: data
    case(
        "run-data-dir-missing",
        lambda c: c.run("--data-dir", c.tmp / "nowhere"),
        "nowhere does not exist",
        "point it at the folder",
    ),
    case(
        "run-data-dir-empty", lambda c: c.run("--data-dir", c.tree("empty")), "no CIFAR-10 in", "put the dataset there"
    ),
    case(
        "run-data-class-without-images",
        lambda c: c.run("--data-dir", c.tree("empty-class")),
        "train/newt has no images",
        "add its images or remove",
    ),
    case(
        "run-data-corrupt-image",
        lambda c: c.run("--data-dir", c.tree("corrupt")),
        "cannot read image",
        "dog/1.png",
        "replace or remove",
    ),
    # run: the run folder
    case(
        "run-out-is-a-file",
        lambda c: ["run", "--space", c.space(), "--out", c.write("taken", "x")],
        "is not a folder",
        "choose another --out",
    ),
    case(
        "run-out-read-only",
        lambda c: ["run", "--space", c.space(), "--out", c.read_only(c.tmp / "ro")],
        "cannot be written",
        "choose another --out",
    ),
    case(
        "run-out-under-read-only",
        lambda c: ["run", "--space", c.space(), "--out", c.read_only(c.tmp / "ro") / "run"],
        "cannot be written",
    ),
    case("run-out-holds-another-search", _another_search, "holds a run of another search", "use a new --out"),
    # run: the study storage
    case(
        "run-storage-no-driver",
        _driverless_storage_for_earlier_run,
        "needs a database driver that is not installed (MySQLdb)",
        "pip install mysqlclient",
        never=("secret",),
    ),
    case(
        "run-storage-unreachable",
        _unreachable_storage_for_earlier_run,
        "connection refused",
        "check the url and that the database server is running and reachable",
        never=("secret",),
    ),
    case(
        "run-storage-folder-missing",
        lambda c: c.run("--storage", f"sqlite:///{c.tmp / 'nowhere' / 'study.db'}"),
        "nowhere does not exist",
        "create it",
    ),
    case(
        "run-storage-folder-read-only",
        lambda c: c.run("--storage", f"sqlite:///{c.read_only(c.tmp / 'ro') / 'study.db'}"),
        "cannot be written",
        "folder you can write",
    ),
    case(
        "run-storage-not-sqlite",
        lambda c: c.run("--storage", f"sqlite:///{c.write('notes.db', 'plain text, not a database' * 100)}"),
        "is not a SQLite database",
        "give a new path",
    ),
    # report
    case("report-not-a-run-folder", lambda c: ["report", c.tmp], "is not a run folder", "--out folder"),
    case("report-missing-folder", lambda c: ["report", c.tmp / "nowhere"], "is not a run folder"),
    case("report-damaged-run-json", _damaged_run_json, "not valid JSON", "new --out"),
]


@pytest.mark.parametrize("build, says, never", CATALOGUE)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(build, says, never, tmp_path, inproc, capsys):
    ctx = Ctx(tmp_path)
    try:
        args = build(ctx)
        before = snapshot(tmp_path)
        rc, _, err = cli(capsys, *args)
        assert_one_clear_line(rc, err, says, never)
        assert_unchanged(before, snapshot(tmp_path))
        assert not (tmp_path / "HACKED").exists()
    finally:
        for undo in reversed(ctx.cleanups):
            undo()


def test_the_catalogue_covers_every_command():
    commands = {p.id.split("-", 1)[0] for p in CATALOGUE}
    assert commands == {"flops", "candidates", "table", "train", "run", "report"} and len(CATALOGUE) >= 25


def test_scientific_notation_is_a_number_in_a_space():
    """YAML 1.1 reads 1e-3 (no dot) as a string; a learning rate written so is still a number."""
    from scaling_search.space import parse_space

    data = tiny_dict()
    data["proxy"]["lr"] = "1e-3"
    assert parse_space(data).proxy.lr == 1e-3
    data["proxy"]["epochs"] = "1e1"  # integers stay strict
    with pytest.raises(UsageError, match="proxy.epochs: expected integer"):
        parse_space(data)


@pytest.mark.parametrize(
    "build, says, never",
    [
        case("candidates-budget-abc", lambda c: ["candidates", "--budget", "abc"], "budget 'abc'"),
        case(
            "run-space-malformed",
            lambda c: c.run(space=c.write("bad.yaml", "name: t\nproxy: [epochs: 1\n")),
            "not valid YAML",
        ),
        # goes through the data load and Optuna, which print warnings unless told not to
        case(
            "run-storage-no-driver", _driverless_storage_for_earlier_run, "needs a database driver", never=("secret",)
        ),
        case("run-storage-unreachable", _unreachable_storage_for_earlier_run, "connection refused", never=("secret",)),
    ],
)
def test_real_entry_point_prints_one_line(build, says, never, tmp_path, data_env):
    args = build(Ctx(tmp_path))
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "scaling_search.cli", *map(str, args)],
        cwd=ROOT,
        env=clean_env(data_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_clear_line(proc.returncode, proc.stderr, says, never)
    assert_unchanged(before, snapshot(tmp_path))


def test_ray_backend_without_ray_installed(tmp_path, data_env):
    ctx = Ctx(tmp_path)
    args = [str(a) for a in ctx.run("--backend", "ray")]
    block = "import sys; sys.modules['ray'] = None; from scaling_search.cli import main; sys.exit(main(sys.argv[1:]))"
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", block, *args],
        cwd=ROOT,
        env=clean_env(data_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_clear_line(
        proc.returncode, proc.stderr, ("--backend ray needs Ray Tune", "pip install 'scaling-search[ray]'")
    )
    assert_unchanged(before, snapshot(tmp_path))
    assert not ctx.out.exists()


# ------------------------------------------------------------ faults in a run


def test_diverging_trials_fail_with_the_reason_and_the_run_reports(tmp_path, inproc, capsys):
    run = tmp_path / "run"
    rc, out, err = cli(
        capsys, "run", "--space", tiny_space(tmp_path, lr=1e30, train=256), "--out", run, "--heartbeat", "1"
    )
    assert rc == 1, err  # no candidate completed
    assert f"failed (diverged {SAMPLE_UNITS}), 0 waiting; exit status 1 (no candidate completed)" in out
    rows = read_csv(run / "trials.csv")
    assert len(rows) == SAMPLE_UNITS
    for row in rows:
        assert row["state"] == "FAIL" and re.search(r"training loss became (NaN|inf)", row["failure"]), row
        assert "lower the learning rate" in row["failure"]
    best = json.loads((run / "best.json").read_text())
    assert best["alpha"] is None and best["units_finished"] == SAMPLE_UNITS and best["complete"]
    assert out.count("FAILED: training loss became") == SAMPLE_UNITS
    assert "Ranking" in (run / "coefficients.md").read_text()
    assert all(states == ["FAIL"] for states in unit_attempts(run).values())  # failures are results: not re-run


def test_out_of_memory_fails_its_trial_and_the_search_goes_on(tmp_path, inproc, capsys, monkeypatch):
    monkeypatch.setenv(
        "SCALING_SEARCH_INJECT_OOM", "2@seed=1"
    )  # a real torch.OutOfMemoryError at step 2 of seed 1's trials
    run = tmp_path / "run"
    rc, out, err = cli(
        capsys, "run", "--space", tiny_space(tmp_path, seeds=(0, 1), train=256), "--out", run, "--heartbeat", "1"
    )
    assert rc == 0, err
    rows = read_csv(run / "trials.csv")
    assert len(rows) == 2 * SAMPLE_UNITS
    for row in rows:
        if row["seed"] == "1":
            assert row["state"] == "FAIL", row
            assert row["failure"].startswith("out of memory on cpu at batch size 64"), row["failure"]
            assert "try a smaller batch size" in row["failure"] and "proxy.batch_size" in row["failure"]
        else:
            assert row["state"] == "COMPLETE" and 0 <= float(row["accuracy"]) <= 1, row
    best = json.loads((run / "best.json").read_text())
    assert best["alpha"] is not None and best["units_finished"] == 2 * SAMPLE_UNITS
    assert all(len(states) == 1 for states in unit_attempts(run).values())


def test_malformed_fault_switch_is_refused(monkeypatch):
    from scaling_search.data.sources import DataSpec
    from scaling_search.models import EfficientNetConfig
    from scaling_search.train.loop import TrialSpec, injected_oom_step

    model = EfficientNetConfig(width=0.25, depth=0.25, resolution=40, num_classes=10)
    config = TrialSpec(model, DataSpec("cifar10"), seed=1)
    for text, step in (
        ("3", 3),
        ("3@seed=1", 3),
        ("3@seed=0", None),
        ("1@resolution=40,seed=1", 1),
        ("1@width=0.25", 1),
    ):
        monkeypatch.setenv("SCALING_SEARCH_INJECT_OOM", text)
        assert injected_oom_step(config) == step, text
    for text in ("x", "2@colour=red", "2@seed"):
        monkeypatch.setenv("SCALING_SEARCH_INJECT_OOM", text)
        with pytest.raises(UsageError, match="SCALING_SEARCH_INJECT_OOM"):
            injected_oom_step(config)


def test_sigint_stops_after_the_trial_writes_the_report_and_resumes(tmp_path, data_env):
    run = tmp_path / "run"
    args = run_command(tiny_space(tmp_path, seeds=(0, 1), train=512), run)
    env = clean_env(data_env)
    with open(tmp_path / "stdout.txt", "w") as stdout:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(
                lambda: "COMPLETE" in (s := trial_states(run)) and "RUNNING" in s,
                300,
                "a trial running after a finished one",
                proc,
                poll=0.05,
            )
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    printed = (tmp_path / "stdout.txt").read_text()
    assert proc.returncode == 130, (proc.returncode, err, printed)
    assert err == "" and "stopped early: run the same command again to resume" in printed
    states = trial_states(run)
    assert "RUNNING" not in states and "FAIL" not in states  # the trial under way was finished, not abandoned
    done = states.count("COMPLETE")
    assert 2 <= done < 2 * SAMPLE_UNITS
    rows = read_csv(run / "trials.csv")
    assert sorted(r["state"] for r in rows) == ["COMPLETE"] * done + ["WAITING"] * (2 * SAMPLE_UNITS - done)
    best = json.loads((run / "best.json").read_text())
    assert best["units_finished"] == done and not best["complete"]

    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and resumed.stderr == "", resumed.stderr
    assert f"resuming: {done} of {2 * SAMPLE_UNITS} trials already finished" in resumed.stdout
    attempts = unit_attempts(run)
    assert len(attempts) == 2 * SAMPLE_UNITS and all(s == ["COMPLETE"] for s in attempts.values()), (
        attempts
    )  # none trained twice
    assert [r["state"] for r in read_csv(run / "trials.csv")] == ["COMPLETE"] * 2 * SAMPLE_UNITS


WRITER = """
import sys
from scaling_search.atomic import atomic_write_bytes
path, size = sys.argv[1], int(sys.argv[2])
versions = [bytes([65 + i]) * size for i in range(2)]
atomic_write_bytes(path, versions[0])
print("ready", flush=True)
i = 1
while True:
    atomic_write_bytes(path, versions[i % 2])
    i += 1
"""


def test_kill_9_while_writing_leaves_the_old_or_the_new_file(tmp_path):
    target, size = tmp_path / "trials.csv", 8 << 20
    versions = {bytes([65]) * size, bytes([66]) * size}
    rng = random.Random(6)
    mid_write = 0
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target), str(size)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        assert target.read_bytes() in versions, "a killed write left a torn file"
        leftovers = [p for p in tmp_path.iterdir() if p != target]
        assert all(p.name.startswith(".trials.csv.") and p.name.endswith(".tmp") for p in leftovers), leftovers
        mid_write += bool(leftovers)  # killed between writing the sibling and renaming it
        for p in leftovers:
            p.unlink()
    assert mid_write >= 1, "no kill landed during a write: the test proved nothing"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_env):
    """A small finished search (3 trials), run once for the tests that damage copies of it."""
    import torch

    folder = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in data_env.items():
            mp.setenv(key, value)
        mp.delenv("SCALING_SEARCH_INJECT_OOM", raising=False)
        torch.set_num_threads(1)
        try:
            rc = main(["run", "--space", str(tiny_space(folder)), "--out", str(folder / "run"), "--heartbeat", "1"])
        finally:
            torch.set_num_threads(threads)
    assert rc == 0
    return folder / "run"


def _outputs_are_whole(run: Path, trials_before: str) -> None:
    assert (run / "trials.csv").read_text() == trials_before
    best = json.loads((run / "best.json").read_text())
    assert best["alpha"] is not None and best["units_finished"] == SAMPLE_UNITS
    assert (run / "coefficients.md").read_text().endswith("\n")
    assert [r["phi"] for r in read_csv(run / "b_series.csv")] == ["0", "1", "2"]
    for png in ("accuracy_vs_macs.png", "alpha_beta.png", "b_series_macs.png"):
        with Image.open(run / png) as im:
            im.verify()


def test_kill_9_during_the_report_leaves_whole_files(tmp_path, finished_run, data_env):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    trials_before = (run / "trials.csv").read_text()
    caught = []
    for target in ("trials.csv", "best.json", "coefficients.md", "alpha_beta.png"):  # early to late in the report
        proc = subprocess.Popen(
            [sys.executable, "-m", "scaling_search.cli", "report", str(run)],
            cwd=ROOT,
            env=clean_env(data_env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while proc.poll() is None and not any(e.name.startswith(f".{target}.") for e in os.scandir(run)):
            time.sleep(0.0005)  # a temporary file lives for its write and fsync: a few milliseconds
        if proc.poll() is None:
            proc.kill()  # SIGKILL while writing ``target``
            caught.append(target)
        proc.wait()
        _outputs_are_whole(run, trials_before)
        leftovers = [e.name for e in os.scandir(run) if e.name.startswith(".")]
        assert all(name.endswith(".tmp") for name in leftovers), leftovers  # a killed write leaves at most its sibling
        for name in leftovers:
            (run / name).unlink()
    assert caught, "the report finished before any kill: nothing was tested"


@pytest.mark.parametrize("cut", ["empty", "in-magic", "in-header", "in-arrays", "last-byte"])
def test_truncated_decode_cache_is_rebuilt(tmp_path, cut):
    """On top of tests/test_data.py (a 100-byte truncation and a flipped byte): every cut point."""
    from scaling_search.data.cache import MAGIC
    from scaling_search.data.sources import DataSpec, load_dataset

    root = Ctx(tmp_path).tree("fine")
    spec, cache = DataSpec(f"imagefolder:{root}", storage_size=8), tmp_path / "cache"
    first = load_dataset(spec, cache_dir=cache)
    (cache_file,) = (cache / "datasets").glob("*.arrays")
    size = cache_file.stat().st_size
    keep = {
        "empty": 0,
        "in-magic": len(MAGIC) // 2,
        "in-header": len(MAGIC) + 12,
        "in-arrays": size - first.train_x.nbytes // 2,
        "last-byte": size - 1,
    }[cut]
    with open(cache_file, "r+b") as f:
        f.truncate(keep)
    again = load_dataset(spec, cache_dir=cache)
    assert not again.from_cache and (again.train_x == first.train_x).all() and again.classes == first.classes
    assert cache_file.stat().st_size == size and load_dataset(spec, cache_dir=cache).from_cache


SQLITE_OWN_BUSY_TIMEOUT = 5.0  # seconds: what sqlite3.connect waits by default, before the project's longer wait
HOLD = SQLITE_OWN_BUSY_TIMEOUT + 3


def test_locked_study_storage_waits_then_completes(tmp_path, data_env):
    """A SQLite study locked by another program (here BEGIN EXCLUSIVE) for longer
    than SQLite's own busy timeout is waited for, and the run completes intact."""
    run = tmp_path / "run"
    run.mkdir()
    holder = sqlite3.connect(run / "study.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    proc = subprocess.Popen(
        run_command(tiny_space(tmp_path), run),
        cwd=ROOT,
        env=clean_env(data_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The run writes run.json before it opens its storage, so from here on it is blocked on the lock.
        wait_for(lambda: (run / "run.json").exists(), 300, "the run to reach its storage", proc)
        locked_at = time.monotonic()
        time.sleep(HOLD)
        assert proc.poll() is None, f"the run gave up on a storage locked for {HOLD:g} s: {proc.stderr.read()}"
    finally:
        holder.rollback()
        holder.close()
    out, err = proc.communicate(timeout=600)
    waited = time.monotonic() - locked_at
    assert proc.returncode == 0 and err == "", err
    assert waited >= HOLD > SQLITE_OWN_BUSY_TIMEOUT
    assert "3 of 3 trials finished" in out
    assert sorted(unit_attempts(run).values()) == [["COMPLETE"]] * SAMPLE_UNITS
    assert db_rows(run, "pragma integrity_check") == [("ok",)]


def test_storage_locked_past_the_wait_limit_fails_clearly(tmp_path, monkeypatch):
    from scaling_search.search import optuna_backend

    monkeypatch.setenv("SCALING_SEARCH_LOCK_TIMEOUT", "1.5")
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    optuna_backend.OptunaStudy(url, "s")  # the schema exists, as in a study that ran before
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(UsageError) as err:
            optuna_backend.OptunaStudy(url, "s")
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert 1.5 <= waited < SQLITE_OWN_BUSY_TIMEOUT  # the limit given, not SQLite's own
    assert str(err.value) == (
        f"study storage {url!r} stayed locked by another program for over 1.5 s: close that program (or wait for "
        "it) and run the same command again; finished trials are kept"
    )
    assert optuna_backend.OptunaStudy(url, "s").count_finished() == 0
    assert db_rows(tmp_path, "pragma integrity_check") == [("ok",)]


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan", "inf"])
def test_lock_wait_limit_from_the_environment_is_validated(monkeypatch, tmp_path, value):
    from scaling_search.search import optuna_backend

    monkeypatch.setenv("SCALING_SEARCH_LOCK_TIMEOUT", value)
    with pytest.raises(UsageError, match=f"SCALING_SEARCH_LOCK_TIMEOUT='{value}': expected a positive number"):
        optuna_backend.OptunaStudy(f"sqlite:///{tmp_path / 'study.db'}", "s")


# ------------------------------------------------------------ security of inputs


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:subprocess.check_call [['touch', '{marker}']]",
        "!!python/name:os.system",
        "!!binary aGVsbG8=",
    ],
)
def test_search_space_yaml_never_builds_objects(tmp_path, tag):
    from scaling_search.space import load_space

    marker = tmp_path / "HACKED"
    path = tmp_path / "space.yaml"
    path.write_text(f"name: {tag.format(marker=marker)}\ndata: {{name: cifar10}}\nproxy: {{epochs: 1}}\n")
    with pytest.raises(UsageError) as err:
        load_space(path)
    assert not marker.exists()
    assert "not allowed" in str(err.value) or "expected string" in str(
        err.value
    )  # !!binary is safe YAML: bytes, refused as a name


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "..", ".hidden", "a/b", "", "x\0y", "x" * 65])
def test_space_names_cannot_point_outside_the_runs_folder(name):
    from scaling_search.space import parse_space

    data = tiny_dict()
    data["name"] = name
    with pytest.raises(UsageError, match="must be a plain word"):
        parse_space(data)


def _calls(tree: ast.AST, module: str, names: tuple[str, ...]):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names:
            if isinstance(node.func.value, ast.Name) and node.func.value.id == module:
                yield node


def test_nothing_is_unpickled_or_loaded_unsafely():
    """No checkpoints are loaded today; any torch.load must pass weights_only=True,
    pickles are read only through data._RestrictedUnpickler, YAML only with safe_load."""
    sources = sorted((ROOT / "scaling_search").rglob("*.py"))
    assert len(sources) > 20
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "torch", ("load",)):
            flags = {k.arg: k.value for k in call.keywords}
            ok = isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True
            assert ok, f"{path.name}:{call.lineno}: torch.load without weights_only=True"
        for call in _calls(tree, "pickle", ("load", "loads", "Unpickler")):
            pytest.fail(f"{path.name}:{call.lineno}: unrestricted pickle")
        for call in _calls(
            tree, "yaml", ("load", "full_load", "unsafe_load", "load_all", "full_load_all", "unsafe_load_all")
        ):
            pytest.fail(f"{path.name}:{call.lineno}: YAML loaded with a loader that builds objects")


def test_building_one_family_imports_no_other():
    probe = (
        "import sys\n"
        "from scaling_search.models import build, get_config\n"
        "build(get_config('efficientnet', width=0.25, depth=0.25, resolution=32, num_classes=10))\n"
        "assert 'scaling_search.models.efficientnet' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m in ('scaling_search.models.efficientdet', "
        "'scaling_search.models.bifpn')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", "building an EfficientNet imported the detector modules"


# -------------------------------------------------------------------- soak


@pytest.mark.slow
def test_soak_three_workers_one_killed_and_restarted(tmp_path, data_env):
    """3 workers share one study of 3 candidates x 5 seeds; one is killed mid-trial
    (SIGKILL) and started again. Every unit completes exactly once."""
    run = tmp_path / "run"
    seeds = range(5)
    args = run_command(tiny_space(tmp_path, seeds=tuple(seeds), train=512), run)
    env = clean_env(data_env)

    def start(i: int) -> subprocess.Popen:
        with open(tmp_path / f"worker{i}.out", "a") as log:  # the child keeps its own copy of the handle
            return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    workers = [start(i) for i in range(3)]
    try:
        victim = workers[0]
        tag = f":{victim.pid}"
        running_by_victim = (
            "select count(*) from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
            f"where t.state = 'RUNNING' and a.key = 'worker' and a.value_json like '%{tag}\"'"
        )
        wait_for(
            lambda: trial_states(run).count("COMPLETE") >= 2 and db_rows(run, running_by_victim) == [(1,)],
            400,
            "the first worker to be mid-trial after two trials finished",
            victim,
            poll=0.05,
        )
        victim.kill()
        victim.wait()
        workers[0] = start(0)
        for w in workers:
            w.wait(timeout=600)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    logs = "".join((tmp_path / f"worker{i}.out").read_text() for i in range(3))
    assert [w.returncode for w in workers] == [0, 0, 0], logs
    attempts = unit_attempts(run)
    grid = {
        f"a{a}-b{b}-g{g}-s{s}"
        for a, b, g in (("1", "1.1", "1.3"), ("1.1", "1.1", "1.2"), ("1.2", "1.1", "1.15"))  # tiny_space's networks
        for s in seeds
    }
    completed = {k for k, states in attempts.items() if "COMPLETE" in states}
    assert completed == grid  # no unit lost
    assert all(states.count("COMPLETE") == 1 for states in attempts.values()), attempts  # none completed twice
    killed = [k for k, states in attempts.items() if states != ["COMPLETE"]]
    assert len(killed) == 1 and attempts[killed[0]] == ["FAIL", "COMPLETE"], (
        attempts
    )  # the killed trial, re-queued and run again
    rows = read_csv(run / "trials.csv")
    assert len(rows) == 15 and {r["state"] for r in rows} == {"COMPLETE"}
    assert len({w for (w,) in db_rows(run, "select value_json from trial_user_attributes where key = 'worker'")}) >= 3


# ------------------------------------------------- infrastructure faults (issue 23)


@pytest.fixture(scope="module")
def postgres():
    from services import PostgresServer

    server = PostgresServer()  # fails the test with the reason when it cannot start
    yield server
    server.stop()


class PgWatch:
    """One connection that reads the run's study while the server comes and goes (reconnects after a
    restart); a fresh connection per poll would start a server process each time."""

    def __init__(self, url: str):
        self.url = url
        self.con = None

    def rows(self, sql: str) -> list[tuple]:
        import psycopg

        for _ in range(2):  # a connection a restart cut fails once, then a new one answers
            try:
                if self.con is None or self.con.closed:
                    self.con = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                return self.con.execute(sql).fetchall()
            except psycopg.Error:  # the server is away, or the table is not there yet
                if self.con is not None:
                    self.con.close()
                self.con = None
        return []

    def trials(self) -> list[tuple[str, str]]:
        """(unit, state) of every trial of the study, in trial order."""
        rows = self.rows(
            "select a.value_json, t.state from trials t join trial_user_attributes a "
            "on a.trial_id = t.trial_id where a.key = 'unit' order by t.number"
        )
        return [(json.loads(unit), state) for unit, state in rows]

    def studies(self) -> int:
        rows = self.rows("select count(*) from studies")
        return rows[0][0] if rows else 0

    def close(self) -> None:
        if self.con is not None:
            self.con.close()


def test_postgres_restarts_are_waited_for_and_a_longer_outage_stops_clearly(tmp_path, postgres, data_env):
    """The server restarts (as `pg_ctl restart -m fast` does: every connection cut) once after the study is
    created and before its units are queued, once while a trial trains: the run waits each time it notices,
    says so in one line each way, and the trial that was training is stored when the server is back, not
    trained again. Then the server stays down past --storage-retry: one clear line, exit 2, and the same
    command resumes, training again only the trial that was under way."""
    url = postgres.create_database("restart")
    space = tiny_space(tmp_path, seeds=(0, 1), train=256, epochs=2)
    args = run_command(space, tmp_path / "run", "--storage", url, "--heartbeat", "2", "--storage-retry", "4")
    env = clean_env(data_env)
    watch = PgWatch(url)

    def states() -> list[str]:
        return [state for _, state in watch.trials()]

    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: watch.studies() == 1, 300, "the study to be created", proc, poll=0.02)
        assert states() == []  # set-up: the units are not queued yet
        postgres.restart()
        wait_for(lambda: (s := states()).count("COMPLETE") == 1 and "RUNNING" in s, 300, "trial 2", proc, poll=0.05)
        postgres.restart()
        wait_for(lambda: (s := states()).count("COMPLETE") == 3 and "RUNNING" in s, 300, "trial 4", proc, poll=0.05)
        postgres.shutdown()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        postgres.restart()
    trials = watch.trials()
    watch.close()
    assert postgres.password not in out + err
    waits = out.count("stopped answering (")
    assert waits >= 2 and out.count("answers again after") == waits - 1, out  # the last wait is the outage
    assert "waiting for it, up to 4 s (--storage-retry)" in out
    assert_one_clear_line(
        proc.returncode,
        err,
        (
            "stopped answering during the run and did not come back within 4 s",
            "connection refused",
            f"3 of {2 * SAMPLE_UNITS} trials are finished and kept in the study",
            "run the same command to resume: scaling-search run --space",
            "--storage-retry 4",
        ),
        never=(postgres.password, "check the URL"),
    )
    assert [s for _, s in trials].count("COMPLETE") == 3 and "FAIL" not in [s for _, s in trials], trials
    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and resumed.stderr == "", resumed.stderr
    by_unit: dict[str, list[str]] = {}
    for unit, state in PgWatch(url).trials():
        by_unit.setdefault(unit, []).append(state)
    assert len(by_unit) == 2 * SAMPLE_UNITS and all(s.count("COMPLETE") == 1 for s in by_unit.values()), by_unit
    # only the trial under way when the server stayed away is trained again; the restarts cost nothing
    assert sorted(len(s) for s in by_unit.values()) == [1] * (2 * SAMPLE_UNITS - 1) + [2], by_unit
    assert [r["state"] for r in read_csv(tmp_path / "run" / "trials.csv")] == ["COMPLETE"] * 2 * SAMPLE_UNITS


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MB filesystem (tmpfs) of the test's own, mounted under its folder: filled, or made
    read-only, while a run writes to it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}"
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """One file that takes all but ``leave`` bytes of the filesystem's free space."""
    filler = disk / "filler"
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
    return filler


def test_full_disk_while_saving_weights_keeps_the_result_and_resumes(tmp_path, small_disk, data_env):
    """The run folder's disk fills up while a trial trains: its weights cannot be written. One line names
    the file and the space, exit 2; the trial's result is in the study, and the same command resumes
    without training it (or any finished trial) again."""
    run = small_disk / "run"
    args = run_command(tiny_space(tmp_path, seeds=(0, 1), train=256), run, "--keep-weights", "all")
    env = clean_env(data_env)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "COMPLETE" in trial_states(run), 300, "a finished trial", proc, poll=0.05)
        filler = fill(small_disk, 256 << 10)  # room for the study's few pages, not for a weights file
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_one_clear_line(
        proc.returncode,
        err,
        ("cannot write", "weights/a", ".safetensors: no space left on its device", "KB free", "needed", "is stored"),
    )
    (refused,) = re.findall(r"weights/(\S+\.safetensors)", err)
    states = trial_states(run)
    done = states.count("COMPLETE")
    assert set(states) == {"COMPLETE", "WAITING"} and done >= 2, states  # the refused trial's result is stored
    assert not (run / "weights" / refused).exists() and not list(run.rglob(".*.tmp"))
    filler.unlink()
    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and resumed.stderr == "", resumed.stderr
    assert f"resuming: {done} of {2 * SAMPLE_UNITS} trials already finished" in resumed.stdout
    assert all(s == ["COMPLETE"] for s in unit_attempts(run).values()), unit_attempts(run)  # none trained twice
    assert len(list((run / "weights").glob("*.safetensors"))) == 2 * SAMPLE_UNITS - 1  # all but the refused one


def test_full_or_read_only_disk_while_writing_the_report_is_one_line(tmp_path, small_disk, inproc, capsys):
    """The report of a finished run on a full, then a read-only disk: one line naming the file, exit 2,
    every earlier file intact; with the space back the same command writes it."""
    run = small_disk / "run"
    study = f"sqlite:///{tmp_path / 'study.db'}"  # the study elsewhere: only the folder's disk is at fault
    rc, _, err = cli(capsys, *run_args(tiny_space(tmp_path), run, "--storage", study, "--keep-weights", "none"))
    assert rc == 0, err
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    filler = fill(small_disk, 0)
    rc, _, err = cli(capsys, "report", run)
    assert_one_clear_line(rc, err, (f"cannot write {run / 'trials.csv'}: no space left on its device", "needed"))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        rc, _, err = cli(capsys, "report", run)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert_one_clear_line(rc, err, (f"cannot write {run / 'trials.csv'}: read-only file system", "make it writable"))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    rc, out, err = cli(capsys, "report", run)
    assert rc == 0 and err == "", err
    assert (run / "trials.csv").read_bytes() == before["trials.csv"]


TERM_GRACE = 60  # seconds the tests give a stopped run to exit (README: a grace period of 30 s on a quiet machine)


def sigterm_mid_trial(args: list[str], env: dict, ready: Callable[[], bool], log: Path) -> tuple[int, float]:
    """Start ``args`` in a session of its own, send SIGTERM to the whole session (as a batch scheduler
    does to a job's processes) once ``ready``; its exit status and the seconds it took to exit."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(ready, 300, "a trial under way after a finished one", proc, poll=0.05)
            sent = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=TERM_GRACE)
            return proc.returncode, time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def test_sigterm_with_two_jobs_abandons_the_trials_reports_and_exits_143(tmp_path, data_env):
    """SIGTERM to the parent and its two workers mid-trial: the trials under way are abandoned and
    queued again at once, the report of what is finished is written, exit 143 within the grace period;
    the same command resumes and trains each unit to completion once."""
    run = tmp_path / "run"
    args = run_command(tiny_space(tmp_path, seeds=(0, 1), train=256), run, "--jobs", "2")
    env = clean_env(data_env)
    rc, took = sigterm_mid_trial(
        args, env, lambda: "COMPLETE" in (s := trial_states(run)) and "RUNNING" in s, tmp_path / "out.txt"
    )
    printed = (tmp_path / "out.txt").read_text()
    assert rc == 143, (rc, printed[-3000:])
    assert "terminating (SIGTERM)" in printed and "stopped early: run the same command again" in printed
    assert "Traceback" not in printed and "worker failed" not in printed, printed[-3000:]
    states = trial_states(run)
    assert "RUNNING" not in states  # nothing left for a heartbeat to time out: abandoned trials are queued again
    attempts = unit_attempts(run)
    abandoned = [k for k, s in attempts.items() if s[0] == "FAIL"]
    assert 1 <= len(abandoned) <= 2 and all(attempts[k] == ["FAIL", "WAITING"] for k in abandoned), attempts
    done = states.count("COMPLETE")
    best = json.loads((run / "best.json").read_text())
    assert best["units_finished"] == done >= 1 and not best["complete"]
    assert sorted(r["state"] for r in read_csv(run / "trials.csv")).count("COMPLETE") == done
    resumed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = unit_attempts(run)
    assert all(s.count("COMPLETE") == 1 for s in final.values()) and len(final) == 2 * SAMPLE_UNITS, final
    assert all(final[k] == ["FAIL", "COMPLETE"] for k in abandoned), final  # trained again, once
    print(f"SIGTERM with --jobs 2: exit 143 {took:.1f} s after the signal")


RAY_TOKEN = "7" * 64


@pytest.fixture(scope="module")
def two_nodes():
    """A real two-node Ray cluster on this machine: a head and a second ``ray start --address`` node, one
    CPU each, with token authentication (Ray 2.60's default)."""
    pytest.importorskip("ray", reason="the ray extra is part of the test install")
    from services import RayHead

    head = RayHead(token=RAY_TOKEN, num_cpus=1)
    try:
        node = RayHead(token=RAY_TOKEN, num_cpus=1, join=head.address)
    except BaseException:
        head.stop()
        raise
    yield head, node
    node.stop(timeout=5)
    head.stop(timeout=5)


def ray_env(data_env: dict, tmp_path: Path) -> dict:
    env = {**clean_env(data_env), "HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": RAY_TOKEN}
    env.pop("RAY_ADDRESS", None)
    return env


def ray_finished(run: Path) -> list[str]:
    """Units stored in the Ray backend's file of finished records, one line each."""
    path = run / "ray" / "finished.jsonl"
    if not path.is_file():
        return []
    from scaling_search.records import unit_key

    units = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # the driver is appending this line right now
            continue
        units.append(unit_key(r["alpha"], r["beta"], r["gamma"], r["seed"], r.get("rung"), r.get("fidelity")))
    return units


def training_on(node) -> bool:
    """Whether a Tune trial's actor (Ray titles it ``ray::ImplicitFunc``) runs on ``node``."""
    for pid in node.pids():
        try:
            if "ImplicitFunc" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                return True
        except OSError:
            pass
    return False


def test_ray_sigterm_then_a_lost_node_resumes_to_the_undisturbed_decision(
    tmp_path, two_nodes, data_env, inproc, capsys
):
    """On a real two-node cluster: SIGTERM to the run's driver (as Kubernetes sends it, to the main process)
    while trials train on both nodes: exit 143 within the grace period with the report of what is finished.
    The same command resumes; while it trains, the second node's processes are killed: its trial is
    trained again on the head's node, the round completes, every unit is stored once, and the results and
    the decision are those of an undisturbed run of the same search."""
    head, node = two_nodes
    space = tiny_space(tmp_path, seeds=(0, 1), train=512)
    run = tmp_path / "run"
    args = run_command(space, run, "--backend", "ray", "--ray-address", head.address, "--cpus-per-trial", "1")
    env = ray_env(data_env, tmp_path)
    with open(tmp_path / "stopped.txt", "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: len(ray_finished(run)) >= 1 and training_on(node), 300, "trials on both", proc, poll=0.1)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=TERM_GRACE)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    printed = (tmp_path / "stopped.txt").read_text()
    assert proc.returncode == 143, (proc.returncode, printed[-3000:])
    assert "terminating (SIGTERM)" in printed and "Traceback" not in printed, printed[-3000:]
    done = ray_finished(run)
    assert len(done) == len(set(done)) < 2 * SAMPLE_UNITS - 1  # two trials were under way: abandoned
    best = json.loads((run / "best.json").read_text())
    assert best["units_finished"] == len(done) and not best["complete"]

    with open(tmp_path / "resumed.txt", "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: training_on(node), 300, "a trial on the second node", proc, poll=0.1)
            killed = node.pids()
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    printed = (tmp_path / "resumed.txt").read_text()
    assert proc.returncode == 0, printed[-3000:]
    assert not node.alive() and killed
    stored = ray_finished(run)
    assert len(stored) == len(set(stored)) == 2 * SAMPLE_UNITS and stored[: len(done)] == done  # each unit once

    rc, _, err = cli(capsys, *run_args(space, tmp_path / "undisturbed", "--keep-weights", "none"))
    assert rc == 0, err
    rows = {r["unit"]: r for r in read_csv(run / "trials.csv")}
    reference = {r["unit"]: r for r in read_csv(tmp_path / "undisturbed" / "trials.csv")}
    assert {u: r["state"] for u, r in rows.items()} == {u: "COMPLETE" for u in reference}
    assert {u: r["accuracy"] for u, r in rows.items()} == {u: r["accuracy"] for u, r in reference.items()}
    best = json.loads((run / "best.json").read_text())
    same = json.loads((tmp_path / "undisturbed" / "best.json").read_text())
    decision = ("alpha", "beta", "gamma", "verdict", "accuracy_mean", "confidence_set")
    assert {k: best.get(k) for k in decision} == {k: same.get(k) for k in decision}
    print(f"SIGTERM with --backend ray: exit 143 {took:.1f} s after the signal")
