"""Run folders that move, tables a person can load, upsampled candidates flagged, kept weights."""

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, SHARED_DATA, run_cli, tiny_space

COMMITTED = sorted(p.parent for p in (ROOT / "results").glob("*/run.json"))


def _trials_table(run_dir: Path) -> list[tuple]:
    con = sqlite3.connect(run_dir / "study.db")
    try:
        return con.execute(
            "select number, state, value from trials t left join trial_values v using (trial_id)"
        ).fetchall()
    finally:
        con.close()


def _described(columns_md: str) -> dict[str, dict[str, str]]:
    """COLUMNS.md as {table: {column: description}}."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in columns_md.splitlines():
        if line.startswith("## "):
            current = tables.setdefault(line[3:].strip(), {})
        elif current is not None and line.startswith("| `"):
            name, meaning = line[3:].split("` |", 1)
            current[name] = meaning.strip(" |")
    return tables


@pytest.mark.parametrize("folder", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_run_folder_resumes_and_reports_from_a_new_location(folder, tmp_path, data_env):
    copy = tmp_path / "moved" / folder.name
    shutil.copytree(folder, copy)
    before = _trials_table(copy)
    best = json.loads((copy / "best.json").read_text())
    # The documented command, pointed at the copy; the data may live elsewhere on this machine.
    command = ["run", "--space", str(copy / "space.yaml"), "--out", str(copy), "--data-dir", str(SHARED_DATA)]
    # Finished: every unit of the search, and of its fidelity check where it has one.
    if best.get("complete") and (best.get("fidelity") or {}).get("complete", True):
        proc = run_cli(*command, env=data_env)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "already finished" in proc.stdout
        assert json.loads((copy / "run.json").read_text())["storage"] == "sqlite:///study.db"
    else:  # an incomplete study would train its missing units: check the plan only
        proc = run_cli(*command, "--estimate", env=data_env)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "trials left of" in proc.stdout or (best.get("complete") and "fidelity check on" in proc.stdout)
    assert _trials_table(copy) == before  # nothing trained again, nothing re-queued by looking
    running = [s for _, s, _ in before if s == "RUNNING"]
    assert ("left RUNNING by a worker that stopped" in proc.stdout) == bool(running)

    proc = run_cli("report", str(copy), env=data_env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rebuilt = json.loads((copy / "best.json").read_text())
    assert len(rebuilt["stale_running"]) == len(running)  # the original's heartbeats stopped long ago
    trials = pd.read_csv(copy / "trials.csv")
    assert "candidate" in trials and trials["params"].dtype == "int64" and trials["macs"].dtype == "int64"


def test_tiny_run_moves_keeps_the_winners_weights_and_describes_its_tables(tmp_path, data_env):
    space = tiny_space(tmp_path, seeds=(0, 1), epochs=2, pruning=True)
    out = tmp_path / "run"
    proc = run_cli("run", "--space", str(space), "--out", str(out), "--heartbeat", "1", env=data_env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    meta = json.loads((out / "run.json").read_text())
    assert meta["storage"] == "sqlite:///study.db" and (meta["native_size"], meta["stored_size"]) == (32, 32)

    # --keep-weights best (the default): exactly the winner's seeds
    best = json.loads((out / "best.json").read_text())
    winner = (best["alpha"], best["beta"], best["gamma"])
    kept = sorted(p.name for p in (out / "weights").iterdir())
    assert kept == [f"a{winner[0]:g}_b{winner[1]:g}_g{winner[2]:g}_seed{s}.safetensors" for s in (0, 1)]

    # each reloads from its own config and scores its recorded held-out accuracy on the same subset
    from scaling_search.data.sources import DataSpec, balanced_subset, load_dataset
    from scaling_search.train.loop import TEST_SUBSET_SEED, evaluate
    from scaling_search.weights import load_model, load_weights

    data = load_dataset(DataSpec("cifar10", data_dir=str(SHARED_DATA)), cache_dir=data_env["SCALING_SEARCH_CACHE"])
    index = balanced_subset(data.test_y, 128, TEST_SUBSET_SEED)
    test_x, test_y = torch.from_numpy(data.test_x[index]), torch.from_numpy(data.test_y[index])
    trials = pd.read_csv(out / "trials.csv")
    for seed, name in enumerate(kept):
        stored = load_weights(out / "weights" / name)
        model = load_model(out / "weights" / name)
        p = stored.preprocess
        accuracy = evaluate(
            model,
            test_x,
            test_y,
            resolution=p.resolution,
            mean=torch.tensor(p.mean),
            std=torch.tensor(p.std),
            batch_size=64,
            channels_last=True,
            autocast=False,
        )
        row = trials[
            (trials["candidate"] == f"a{winner[0]:g}-b{winner[1]:g}-g{winner[2]:g}")
            & (trials["seed"] == seed)
            & trials["rung"].isna()  # the full schedule; a shorter halving rung leaves no weights
        ]
        assert accuracy == pytest.approx(float(row["accuracy"].iloc[0]), abs=1e-6)

    # COLUMNS.md describes every column of every table written
    tables = _described((out / "COLUMNS.md").read_text())
    for name in ("trials.csv", "b_series.csv", "d_series.csv"):
        if (out / name).is_file():
            columns = list(pd.read_csv(out / name).columns)
            assert columns and all(tables[name].get(c) for c in columns), (name, tables.get(name))
    assert trials["params"].notna().all() and trials["params"].dtype == "int64" and trials["seed"].dtype == "int64"

    # the folder moves: the same command resumes it where it now is, and report reads its study
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    out.rename(moved)
    proc = run_cli("run", "--space", str(space), "--out", str(moved), env=data_env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "already finished" in proc.stdout and f"{len(trials)} of {len(trials)} trials finished" in proc.stdout
    assert not [line for line in proc.stdout.splitlines() if line.startswith("[")]  # nothing trained again
    proc = run_cli("report", str(moved), env=data_env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert json.loads((moved / "best.json").read_text())["stale_running"] == []


def test_an_old_absolute_storage_falls_back_to_the_folders_own_study(tmp_path):
    from scaling_search.errors import UsageError
    from scaling_search.search.runner import record_storage, resolve_storage

    out = tmp_path / "run"
    out.mkdir()
    assert record_storage(f"sqlite:///{out.resolve()}/study.db", out) == "sqlite:///study.db"
    assert record_storage("sqlite:////elsewhere/shared.db", out) == "sqlite:////elsewhere/shared.db"
    assert resolve_storage("sqlite:///study.db", out) == f"sqlite:///{out.resolve()}/study.db"
    with pytest.raises(UsageError, match="is gone"):
        resolve_storage("sqlite:////no/such/folder/study.db", out)
    (out / "study.db").write_bytes(b"")
    assert resolve_storage("sqlite:////no/such/folder/study.db", out) == f"sqlite:///{out.resolve()}/study.db"


def test_report_flags_candidates_trained_above_the_stored_size():
    from scaling_search.analysis.report import mark_upsampled
    from scaling_search.records import TrialRecord

    def record(gamma: float, resolution: int) -> TrialRecord:
        return TrialRecord(1.0, 1.0, gamma, 0, 1, 1.0, 1.0, resolution, 1, 1, 1.0, 1.0)

    trials = [record(1.0, 128), record(1.2, 152)]
    rows = [{"resolution": 128}, {"resolution": 152}]
    # a baseline above the stored size: every candidate is upsampled
    fields = mark_upsampled(rows, trials, {"native_size": 320, "stored_size": 96})
    assert fields["upsampled"] == ["a1-b1-g1", "a1-b1-g1.2"] and [r["upsampled"] for r in rows] == [True, True]
    assert "320 px natively, stored at 96 px" in fields["resolution_statement"]
    fields = mark_upsampled(rows, trials, {"native_size": 320, "stored_size": 128})
    assert fields["upsampled"] == ["a1-b1-g1.2"] and [r["upsampled"] for r in rows] == [False, True]


def test_storage_size_left_out_is_the_native_size_and_keeps_the_fingerprint():
    from scaling_search.space import parse_space

    def space(data: dict):
        return parse_space({"name": "s", "data": data, "proxy": {"epochs": 1}})

    assert space({"name": "imagenette"}).data.effective_storage_size() == 128
    assert space({"name": "cifar10"}).fingerprint() == space({"name": "cifar10", "storage_size": 32}).fingerprint()
    assert space({"name": "cifar10"}).fingerprint() != space({"name": "cifar10", "storage_size": 64}).fingerprint()
    # where the data lies is not part of what a run means
    assert space({"name": "cifar10", "data_dir": "/a"}).fingerprint() == space({"name": "cifar10"}).fingerprint()


@pytest.mark.slow
def test_ray_and_optuna_tables_load_with_the_same_dtypes(tmp_path, data_env):
    pytest.importorskip("ray", reason="the ray extra is part of the test install")
    space = tiny_space(tmp_path)
    frames = {}
    for backend in ("ray", "optuna"):
        out = tmp_path / backend
        args = ("run", "--space", str(space), "--backend", backend, "--out", str(out), "--keep-weights", "all")
        proc = run_cli(*args, env=data_env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
        frames[backend] = pd.read_csv(out / "trials.csv")
        assert len(list((out / "weights").glob("*.safetensors"))) == 3  # Ray's workers write into the run folder
    assert dict(frames["ray"].dtypes) == dict(frames["optuna"].dtypes)
    assert frames["ray"]["params"].dtype == "int64" and frames["ray"]["macs"].dtype == "int64"
