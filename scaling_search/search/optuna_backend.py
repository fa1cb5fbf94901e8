"""Optuna backend: every (candidate, seed) unit is a queued trial, run exactly once.

GridSampler ignores constraints, so the valid units are enqueued explicitly
and workers claim them with the storage's own WAITING -> RUNNING transition,
which succeeds for one worker only. A worker records a heartbeat while it
trains; a trial whose heartbeat stops (a killed worker) is failed by whoever
notices and its unit is queued again, so a resumed or shared study loses no
unit and trains none twice. SQLite has no row locks, so claims on a SQLite
file are also serialised by a file lock beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from ..errors import UsageError
from .trials import Unit

optuna.logging.set_verbosity(optuna.logging.WARNING)

DEFAULT_HEARTBEAT = 10  # seconds; a trial is stale after GRACE_FACTOR heartbeats without one
GRACE_FACTOR = 4
# How long a SQLite study waits for another program's lock on the file before
# giving up with a clear error (a backup, a DB browser, a stuck worker).
SQLITE_LOCK_TIMEOUT = 120  # seconds
ENV_LOCK_TIMEOUT = "SCALING_SEARCH_LOCK_TIMEOUT"  # overrides it, in seconds


def lock_timeout() -> float:
    """Seconds a SQLite study waits for another program's lock (``SCALING_SEARCH_LOCK_TIMEOUT`` or 120)."""
    text = os.environ.get(ENV_LOCK_TIMEOUT, "").strip()
    if not text:
        return SQLITE_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"{ENV_LOCK_TIMEOUT}={text!r}: expected a positive number of seconds")
    return value


# Python packages that provide SQLAlchemy's default driver of each database.
_DRIVERS = {
    "postgresql": "psycopg2-binary",
    "postgres": "psycopg2-binary",
    "mysql": "mysqlclient (or use mysql+pymysql:// with PyMySQL)",
}


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    return None


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite(url: str) -> None:
    """What SQLite would trip on, said before anything (the lock file) is written beside it."""
    db = sqlite_path(url)
    if db is None or str(db) == ":memory:":
        return
    folder = db.parent
    if not folder.is_dir():
        raise UsageError(
            f"storage {url!r}: folder {folder} does not exist: create it, or give a sqlite:///PATH in an existing "
            "folder"
        )
    if not os.access(folder, os.W_OK | os.X_OK):  # SQLite writes its journal beside the file
        raise UsageError(
            f"storage {url!r}: folder {folder} cannot be written (permission denied): give a sqlite:///PATH in a "
            "folder you can write"
        )
    if db.exists():
        try:
            with open(db, "rb") as f:
                head = f.read(len(_SQLITE_HEADER))
        except OSError as exc:
            raise UsageError(
                f"storage {url!r} cannot be read ({exc.strerror}): give a SQLite file you can read and write"
            ) from None
        if head and head != _SQLITE_HEADER:  # an empty file is a new database
            raise UsageError(
                f"storage {url!r}: {db} is not a SQLite database: give a new path or the study.db of a run"
            )


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _requeue_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    # Called once per stale trial, by the worker whose FAIL transition succeeded.
    study.enqueue_trial({}, user_attrs={k: v for k, v in trial.user_attrs.items() if k in _UNIT_ATTRS})


_UNIT_ATTRS = ("unit", "alpha", "beta", "gamma", "seed", "theoretical_ratio", "measured_ratio")


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; a clear error when it cannot be reached."""
    engine_kwargs = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": lock_timeout()}}  # wait for a writer rather than fail at once
    try:
        with warnings.catch_warnings():
            # Heartbeats are what makes a dead worker's trial come back; Optuna
            # calls them experimental and would print that on every start.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=heartbeat * GRACE_FACTOR,
                heartbeat_stale_trial_callback=_requeue_stale,
            )
    except ImportError as exc:
        missing = getattr(exc.__cause__, "name", None) or exc.name
        scheme = url.split(":", 1)[0].split("+", 1)[0]
        package = _DRIVERS.get(scheme, missing or "the driver for this database")
        raise UsageError(
            f"storage {redact(url)!r} needs a database driver that is not installed ({missing or exc}): pip "
            f"install {package}, or use sqlite:///PATH"
        ) from None
    except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use this storage"
        raise storage_error(url, exc) from None


def storage_error(url: str, exc: BaseException) -> UsageError:
    """One line for a storage that failed: locked, unreachable or refused."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "database is locked" in text:
        return UsageError(
            f"study storage {redact(url)!r} stayed locked by another program for over {lock_timeout():g} s: "
            "close that program (or wait for it) and run the same command again; finished trials are kept"
        )
    hint = (
        "check the path and that the file is a SQLite database"
        if url.startswith("sqlite")
        else "check the URL and that the database server is running and reachable"
    )
    return UsageError(f"cannot use study storage {redact(url)!r}: {first}: {hint}")


@dataclass
class TrialOutcome:
    unit: Unit
    state: str
    fields: dict
    number: int


class OptunaStudy:
    """One study on one storage, shared by any number of worker processes."""

    def __init__(
        self,
        url: str,
        study_name: str,
        *,
        heartbeat: int = DEFAULT_HEARTBEAT,
        pruner: optuna.pruners.BasePruner | None = None,
    ):
        self.url = url
        self.pruning = pruner is not None
        self.heartbeat = heartbeat
        _check_sqlite(url)
        db = sqlite_path(url)
        self._lock_path = db.with_name(db.name + ".lock") if db is not None else None
        try:
            with self.lock():  # two workers creating the SQLite schema at once collide
                self.storage = open_storage(url, heartbeat)
                self.study = optuna.create_study(
                    storage=self.storage,
                    study_name=study_name,
                    direction="maximize",
                    load_if_exists=True,
                    pruner=pruner,
                )
        except optuna.exceptions.StorageInternalError as exc:
            raise storage_error(url, exc.__cause__ or exc) from None
        except OSError as exc:  # the lock file beside a SQLite study
            raise UsageError(f"cannot use study storage {redact(url)!r}: {exc.strerror}: {exc.filename}") from None

    def lock(self):
        return _file_lock(self._lock_path)

    # ---------------------------------------------------------------- queue

    def ensure_units(self, units: list[Unit]) -> int:
        """Queue every unit that has no trial yet (or only interrupted ones). Returns how many."""
        with self.lock():
            present = {t.user_attrs.get("unit") for t in self.study.get_trials(deepcopy=False) if not _interrupted(t)}
            missing = [u for u in units if u.key not in present]
            for u in missing:
                self.study.enqueue_trial({}, user_attrs=u.attrs())
        return len(missing)

    def _claim(self) -> optuna.trial.FrozenTrial | None:
        with self.lock():
            for t in sorted(
                self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)), key=lambda t: t.number
            ):
                # Heartbeat first: a claimed trial never exists without one, so it can always go stale.
                self.storage.record_heartbeat(t._trial_id)
                try:
                    if self.storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                        return t
                except UpdateFinishedTrialError:
                    continue
        return None

    def fail_stale(self) -> None:
        with self.lock(), warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", optuna.exceptions.ExperimentalWarning
            )  # stable here; not the user's concern
            optuna.storages.fail_stale_trials(self.study)

    # --------------------------------------------------------------- worker

    def work(
        self,
        train: Callable[[Unit, Callable[[int, float, float], None] | None], tuple[str, dict]],
        *,
        stop: threading.Event,
        on_done: Callable[[TrialOutcome], None],
        on_wait: Callable[[int], None] | None = None,
    ) -> None:
        """Claim and run units until none is left (waiting out other workers' trials)."""
        while not stop.is_set():
            self.fail_stale()
            frozen = self._claim()
            if frozen is None:
                running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if not running:
                    return
                if on_wait is not None:
                    on_wait(len(running))
                stop.wait(self.heartbeat)  # a dead worker's trial goes stale and comes back to the queue
                continue
            self._run_one(frozen, train, on_done)

    def _run_one(self, frozen, train, on_done) -> None:
        unit = Unit.from_attrs(frozen.user_attrs)
        trial = optuna.trial.Trial(self.study, frozen._trial_id)
        trial.set_user_attr("worker", worker_tag())
        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(frozen._trial_id, beating), daemon=True)
        beat.start()

        def report(epoch: int, loss: float, acc: float) -> None:
            from ..train.loop import TrialPruned

            trial.report(acc, step=epoch + 1)
            if self.pruning and trial.should_prune():
                raise TrialPruned(f"pruned after epoch {epoch + 1}")

        try:
            state, fields = train(unit, report)
        finally:
            beating.set()
            beat.join()
        for key, value in fields.items():
            if value is not None:
                trial.set_user_attr(key, value)
        if state == "COMPLETE":
            self.study.tell(trial, fields["accuracy"])
        else:
            self.study.tell(trial, state=TrialState.PRUNED if state == "PRUNED" else TrialState.FAIL)
        on_done(TrialOutcome(unit, state, fields, frozen.number))

    def _beat(self, trial_id: int, done: threading.Event) -> None:
        while not done.wait(self.heartbeat):
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception:  # a missed beat is retried; a long outage makes the trial stale, by design
                pass

    # -------------------------------------------------------------- results

    def unit_records(self) -> dict[str, dict]:
        """Per unit, the trial that speaks for it (finished beats running beats queued)."""
        order = {
            TrialState.COMPLETE: 0,
            TrialState.PRUNED: 1,
            TrialState.FAIL: 2,
            TrialState.RUNNING: 3,
            TrialState.WAITING: 4,
        }
        best: dict[str, tuple[tuple, dict]] = {}
        attempts: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            key = t.user_attrs.get("unit")
            if key is None:
                continue
            if t.state != TrialState.WAITING:
                attempts[key] = attempts.get(key, 0) + 1
            interrupted = _interrupted(t)
            rank = (5 if interrupted else order.get(t.state, 6), -t.number)
            record = dict(t.user_attrs)
            record["state"] = "WAITING" if interrupted else t.state.name
            record["number"] = t.number
            if key not in best or rank < best[key][0]:
                best[key] = (rank, record)
        out = {}
        for key, (_, record) in best.items():
            record["attempts"] = attempts.get(key, 0)
            out[key] = record
        return out

    def finished_units(self) -> set[str]:
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return {
            t.user_attrs.get("unit")
            for t in self.study.get_trials(deepcopy=False, states=finished)
            if not _interrupted(t)
        }

    def count_finished(self) -> int:
        return len(self.finished_units())


def _interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """A FAIL without a recorded reason is a worker that died mid-trial, not a result."""
    return trial.state == TrialState.FAIL and "failure" not in trial.user_attrs


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'study.db').resolve()}"


def worker_tag() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
