"""Soak: four workers on one PostgreSQL study, the server restarted twice and one worker killed.

    PYTHONPATH=. python3 benchmarks/soak_storage.py [--seeds 4] [--train 512] [--epochs 2]

A real PostgreSQL server (``tests/services.py``) holds one study; first one
worker runs the search undisturbed (its own database) as the reference. Then
four ``scaling-search run`` workers share a second database; while they
train, the server is restarted (fast shutdown: every connection cut) once a
quarter of the units is finished, one worker is killed with SIGKILL in the
middle of a trial at half (and started again), and the server is restarted
again at three quarters. The seeds are raced (rounds of one more seed for the
candidates still in contention, up to ``--max-seeds``; 0: every seed at once).

Checked, and the run fails (exit 1) otherwise: every worker ends with 0,
every unit of the study has exactly one COMPLETE trial, each unit's accuracy
and the decision (winner, verdict, confidence set) equal the undisturbed
run's, and the trainings repeated (trials beyond one per unit) are at most
one per disruption. Printed: the machine and its load, the wall times, the
repeated trainings and the storage waits the workers reported.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from conftest import SHARED_DATA, TINY  # noqa: E402  (the tests' tiny search space and data)
from protocol import load, machine  # noqa: E402
from services import PostgresServer  # noqa: E402


def space_file(folder: Path, seeds: int, train: int, epochs: int, max_seeds: int) -> Path:
    """The tests' tiny space (3 networks); racing from ``seeds`` seeds up to ``max_seeds`` (0: uniform)."""
    text = TINY.format(epochs=epochs, train=train, seeds=list(range(seeds)), pruning="false", lr=0.05)
    if max_seeds:
        text += f"racing: {{enabled: true, max_seeds: {max_seeds}}}\n"
    path = folder / "soak.yaml"
    path.write_text(text)
    return path


def trials(url: str) -> list[tuple[str, str, str | None]]:
    """(unit, state, worker) of every trial in the study, in trial order."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as con:
            rows = con.execute(
                "select t.number, a.key, a.value_json, t.state from trials t join trial_user_attributes a "
                "on a.trial_id = t.trial_id where a.key in ('unit', 'worker') order by t.number"
            ).fetchall()
    except psycopg.Error:
        return []
    by_number: dict[int, dict] = {}
    for number, key, value, state in rows:
        by_number.setdefault(number, {"state": state})[key] = json.loads(value)
    return [(t["unit"], t["state"], t.get("worker")) for _, t in sorted(by_number.items()) if "unit" in t]


def worker(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="seeds of the first round")
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-seeds", type=int, default=6, help="racing.max_seeds; 0: no race, every seed at once")
    opts = ap.parse_args()

    print(f"machine: {machine()}; load before: {load()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    space = space_file(tmp, opts.seeds, opts.train, opts.epochs, opts.max_seeds)
    env = {
        **os.environ,
        "SCALING_SEARCH_DATA": str(SHARED_DATA),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": str(ROOT),
    }
    server = PostgresServer()
    failures: list[str] = []
    try:
        cli = [sys.executable, "-m", "scaling_search.cli", "run", "--space", str(space), "--heartbeat", "2"]
        ref_url = server.create_database("reference")
        started = time.monotonic()
        ref = subprocess.run(
            [*cli, "--out", str(tmp / "reference"), "--storage", ref_url], cwd=ROOT, env=env, capture_output=True
        )
        ref_wall = time.monotonic() - started
        if ref.returncode != 0:
            print(ref.stdout.decode()[-3000:], ref.stderr.decode()[-3000:])
            return 1
        units = len({u for u, _, _ in trials(ref_url)})
        print(f"reference: one worker, {units} units, {ref_wall:.0f} s", flush=True)

        url = server.create_database("soak")
        args = [[*cli, "--out", str(tmp / f"w{i}"), "--storage", url] for i in range(opts.workers)]
        logs = [tmp / f"w{i}.log" for i in range(opts.workers)]
        started = time.monotonic()
        procs = [worker(args[i], env, logs[i]) for i in range(opts.workers)]
        events: list[str] = []
        plan = [(0.25, "restart"), (0.5, "kill"), (0.75, "restart")]
        for fraction, what in plan:
            while True:
                rows = trials(url)
                done = sum(s == "COMPLETE" for _, s, _ in rows)
                if done >= fraction * units and "RUNNING" in {s for _, s, _ in rows}:
                    break
                if all(p.poll() is not None for p in procs):
                    break
                time.sleep(0.1)
            at = time.monotonic() - started
            if what == "restart":
                down = server.restart()
                events.append(f"server restarted at {at:.0f} s ({done} of {units} done; down {down:.1f} s)")
            else:
                tags = {w for _, s, w in trials(url) if s == "RUNNING" and w}
                victim = next(
                    (i for i, p in enumerate(procs) if any(t.endswith(f":{p.pid}") for t in tags)), 0
                )  # a worker in mid-trial
                os.killpg(procs[victim].pid, signal.SIGKILL)
                procs[victim].wait()
                procs[victim] = worker(args[victim], env, logs[victim])
                events.append(f"worker {victim} killed mid-trial at {at:.0f} s ({done} of {units} done), restarted")
            print(events[-1], flush=True)
        codes = [p.wait(timeout=3600) for p in procs]
        wall = time.monotonic() - started

        rows = trials(url)
        by_unit: dict[str, list[str]] = {}
        for unit, state, _ in rows:
            by_unit.setdefault(unit, []).append(state)
        repeated = sum(len(s) - 1 for s in by_unit.values())
        waits = sum(log.read_text().count("stopped answering (") for log in logs)
        back = sum(log.read_text().count("answers again after") for log in logs)
        print(f"disturbed: {opts.workers} workers, {len(by_unit)} units, {wall:.0f} s; exit statuses {codes}")
        print(f"trainings repeated: {repeated} (disruptions: {len(plan)}); storage waits reported {waits}, over {back}")
        if codes != [0] * opts.workers:
            failures.append(f"worker exit statuses {codes}")
        once = all(s.count("COMPLETE") == 1 for s in by_unit.values()) and len(by_unit) == units
        if not once:
            failures.append(f"units not stored exactly once: {by_unit}")
        if repeated > len(plan):
            failures.append(f"{repeated} trainings repeated for {len(plan)} disruptions")

        def result(folder: Path) -> tuple[dict, dict]:
            import csv

            with open(folder / "trials.csv") as f:
                acc = {r["unit"]: r["accuracy"] for r in csv.DictReader(f)}
            best = json.loads((folder / "best.json").read_text())
            keys = ("alpha", "beta", "gamma", "verdict", "accuracy_mean", "confidence_set")
            return acc, {k: best.get(k) for k in keys}

        ref_acc, ref_decision = result(tmp / "reference")
        for i in range(opts.workers):
            acc, decision = result(tmp / f"w{i}")
            if acc != ref_acc or decision != ref_decision:
                failures.append(f"worker {i}'s results differ from the undisturbed run's: {decision} vs {ref_decision}")
        print(f"decision: {ref_decision} (equal in every worker's report: {not any('differ' in f for f in failures)})")
    finally:
        server.stop()
        print(f"load after: {load()}; folders in {tmp}")
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
