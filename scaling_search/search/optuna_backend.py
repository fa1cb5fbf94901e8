"""Optuna backend: every (candidate, seed) unit is a queued trial, run exactly once.

GridSampler ignores constraints, so the valid units are enqueued explicitly,
their alpha, beta, gamma and seed as native trial parameters over one fixed
search space (so importances, slice and contour plots and optuna-dashboard
work on a run's study), and workers claim them with ``Study.ask()``. A worker
records a heartbeat while it trains; a trial whose heartbeat stops (a killed
worker) is failed by whoever notices and its unit is queued again, so a
resumed or shared study loses no unit and trains none twice.

Queueing, claiming and requeueing hold one lock across all workers of a
database: a file lock beside a SQLite study, an advisory lock on PostgreSQL
and MySQL. Without it, workers starting together each see units missing and
enqueue them twice (both copies then get trained), and ``ask()`` with an
empty queue would create a trial that is no unit.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import secrets
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.trial import TrialState

from ..errors import UsageError
from ..records import TrialRecord, stored_fields, updated
from ..records import TrialState as State
from ..train.faults import DeviceFault
from . import stopping
from .backend import Hooks, Train, merge
from .plan import Unit
from .storage_retry import DEFAULT_STORAGE_RETRY, StorageRetry, is_transient
from .trials import OutputNotSaved, unit_of

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _not_a_lost_connection(record) -> bool:
    # Optuna falls back to a slower query on a lost connection and warns; the wait for the server is said
    # in one line of the run's own (storage_retry.py).
    return not str(record.msg).startswith("Caught an error from sqlalchemy")


optuna.logging.get_logger("optuna.storages._rdb.storage").addFilter(_not_a_lost_connection)

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


METRIC = "accuracy"  # the objective's name in the study (optuna-dashboard, plots)
PARAMS = ("alpha", "beta", "gamma", "seed")  # a unit's native trial parameters
_SPACE_ATTR = "search_space"  # study user attr: the parameters' fixed distributions, as JSON

# Python packages that provide SQLAlchemy's default driver of each database (SQLAlchemy 2.1: psycopg 3).
_DRIVERS = {
    "postgresql": "'psycopg[binary]'",
    "postgres": "'psycopg[binary]'",
    "mysql": "mysqlclient (or use mysql+pymysql:// with PyMySQL)",
}


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    return None


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


def _scrub(text: str, url: str) -> str:
    """A driver's message without the URL's password, wherever the driver put it."""
    m = re.search(r"//[^/:@]*:([^/@]*)@", url)
    return text.replace(m.group(1), "***") if m and m.group(1) else text


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


class _ServerLock:
    """A lock shared by every worker on one database server: a session-level
    advisory lock (PostgreSQL) or named lock (MySQL) on a connection of its own.
    The server drops it when a killed worker's connection closes."""

    _NAME = "scaling-search/queue"
    _KEY = int.from_bytes(hashlib.sha256(_NAME.encode()).digest()[:8], "big", signed=True)

    def __init__(self, url: str, retry: StorageRetry | None = None):
        self.url = url
        self.retry = retry
        self._engine = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        import sqlalchemy

        try:
            if self._engine is None:
                self._engine = sqlalchemy.create_engine(self.url, pool_size=1, pool_pre_ping=True)
            backend = self._engine.dialect.name
            if backend not in ("postgresql", "mysql"):
                raise UsageError(
                    f"storage {redact(self.url)!r}: {backend} has no lock shared by workers here: use sqlite:///PATH "
                    "(one machine), postgresql:// or mysql://"
                )
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if backend == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._KEY})
                unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._KEY}
            else:
                conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": self._NAME})
                unlock = sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": self._NAME}
        except UsageError:
            raise
        except ImportError as exc:
            raise _driver_error(self.url, exc) from None
        except Exception as exc:  # unreachable, refused, bad credentials: all "cannot use this storage"
            raise storage_error(self.url, exc) from exc  # the cause says whether waiting may help
        if self.retry is not None:
            self.retry.answered = True  # the server answered: from now on a lost connection is waited for
        try:
            yield
        finally:
            try:
                conn.execute(*unlock)
            except Exception:  # a lost connection has released the lock already
                pass
            conn.close()


def _requeue_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    # Called once per stale trial, by the worker whose FAIL transition succeeded, under the queue lock.
    attrs = {k: v for k, v in trial.user_attrs.items() if k in _UNIT_ATTRS}
    study.enqueue_trial({k: attrs[k] for k in PARAMS if k in attrs}, user_attrs=attrs)


_UNIT_ATTRS = (
    "unit", "alpha", "beta", "gamma", "seed", "theoretical_ratio", "measured_ratio", "rung", "epochs", "fidelity"
)  # fmt: skip


def unit_search_space(units: list[Unit], seeds: Sequence[int] = ()) -> dict[str, BaseDistribution]:
    """One fixed distribution per parameter for the whole study: Optuna's importances
    and contour plots use only parameters whose distribution every trial shares.

    ``seeds``: every seed the study may train (a race adds seeds round by round, and Optuna
    refuses a categorical parameter whose choices change within a study)."""
    if not units:
        raise ValueError("a study needs at least one unit")
    space: dict[str, BaseDistribution] = {
        name: FloatDistribution(min(1.0, *(getattr(u, name) for u in units)), max(getattr(u, name) for u in units))
        for name in ("alpha", "beta", "gamma")
    }
    space["seed"] = CategoricalDistribution(sorted({u.seed for u in units} | set(seeds)))
    return space


class UnitSampler(optuna.samplers.BaseSampler):
    """Samples nothing: a trial's parameters are its unit's coefficients.

    Enqueued trials carry them as fixed parameters already; this supplies them
    from the unit's user attributes for trials queued without (studies of
    earlier versions), and refuses a trial that is not a queued unit.
    """

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        if param_name not in trial.user_attrs:
            raise RuntimeError(f"trial {trial.number} is not a queued unit: it has no {param_name!r}")
        return trial.user_attrs[param_name]


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; a clear error when it cannot be reached."""
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": lock_timeout()}}  # wait for a writer rather than fail at once
    else:
        # A pooled connection cut by a server restart is noticed before use and replaced.
        engine_kwargs = {"pool_pre_ping": True}
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
        raise _driver_error(url, exc) from None
    except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use this storage"
        raise storage_error(url, exc) from exc  # the cause says whether waiting may help


def _driver_error(url: str, exc: ImportError) -> UsageError:
    missing = getattr(exc.__cause__, "name", None) or exc.name
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    package = _DRIVERS.get(scheme, missing or "the driver for this database")
    return UsageError(
        f"storage {redact(url)!r} needs a database driver that is not installed ({missing or exc}): pip "
        f"install {package}, or use sqlite:///PATH"
    )


def storage_error(url: str, exc: BaseException) -> UsageError:
    """One line for a storage that failed: locked, unreachable or refused."""
    text = _scrub(str(exc).strip(), url)
    first = text.splitlines()[0] if text else type(exc).__name__
    db = sqlite_path(url)
    if db is not None and ("database or disk is full" in text or "readonly database" in text):
        return _study_refused(db, full="disk is full" in text)
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


def _retried(method):
    """A storage operation that is whole or not done: run again while the server is away (``StorageRetry``)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return self.retry(lambda: method(self, *args, **kwargs))

    return wrapper


def _study_refused(db: Path, *, full: bool) -> UsageError:
    """A SQLite study on a disk that filled up or turned read-only during the run."""
    from ..atomic import OutputRefused, free_bytes, human_bytes

    if full:
        size = db.stat().st_size if db.is_file() else 0
        return OutputRefused(
            f"cannot write the study {db}: no space left on its device ({human_bytes(free_bytes(db.parent))} free, "
            f"up to {human_bytes(size + 2**20)} needed for its journal): free space there and run the same command "
            "again; every result stored before is intact",
            db,
        )
    return OutputRefused(
        f"cannot write the study {db}: its folder stopped taking writes (read-only): make it writable and run the "
        "same command again; every result stored before is intact",
        db,
    )


class OptunaStudy:
    """One study on one storage, shared by any number of worker processes."""

    def __init__(
        self,
        url: str,
        study_name: str,
        *,
        heartbeat: int = DEFAULT_HEARTBEAT,
        storage_retry: float = DEFAULT_STORAGE_RETRY,
        seeds: Sequence[int] = (),
    ):
        self.url = url
        self.heartbeat = heartbeat
        self.seeds = tuple(seeds)  # every seed the study may train: the seed parameter's choices
        _check_sqlite(url)
        db = sqlite_path(url)
        # A SQLite file is never waited for: its errors (a full disk) stay; its lock has its own wait.
        self.retry = StorageRetry(redact(url), 0.0 if db is not None else storage_retry)
        self._lock_path = db.with_name(db.name + ".lock") if db is not None else None
        self._server_lock = _ServerLock(url, self.retry) if db is None else None
        self._calm_until = 0.0  # no stale trials are failed before then: the beats of a server outage's trials
        self.retry(lambda: self._open(study_name))

    def _open(self, study_name: str) -> None:
        url = self.url
        try:
            with self.lock():  # two workers creating the SQLite schema at once collide
                self.storage = open_storage(url, self.heartbeat)
                self.study = optuna.create_study(
                    storage=self.storage,
                    study_name=study_name,
                    direction="maximize",
                    load_if_exists=True,
                    # Never pruned by Optuna: first-come pruning has order effects; halving is synchronous (halving.py).
                    pruner=optuna.pruners.NopPruner(),
                    sampler=UnitSampler(),
                )
        except optuna.exceptions.StorageInternalError as exc:
            raise storage_error(url, exc.__cause__ or exc) from exc
        except OSError as exc:  # the lock file beside a SQLite study
            raise UsageError(f"cannot use study storage {redact(url)!r}: {exc.strerror}: {exc.filename}") from None

    def lock(self):
        """The queue lock of every worker on this storage (see the module's docstring)."""
        if self._server_lock is not None:
            return self._server_lock()
        return _file_lock(self._lock_path)

    # ---------------------------------------------------------------- queue

    @_retried
    def ensure_units(self, units: list[Unit]) -> int:
        """Queue every unit that has no trial yet (or only interrupted ones). Returns how many.

        Under the queue lock: workers starting together would otherwise each
        find the same units missing and queue them twice.
        """
        space = unit_search_space(units, self.seeds)
        stored = {name: distribution_to_json(d) for name, d in space.items()}
        with self.lock():
            if self.study.user_attrs.get(_SPACE_ATTR) != stored:
                self.study.set_user_attr(_SPACE_ATTR, stored)
            if self.study.metric_names != [METRIC]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self.study.set_metric_names([METRIC])
            present = {t.user_attrs.get("unit") for t in self.study.get_trials(deepcopy=False) if not _interrupted(t)}
            missing = [u for u in units if u.key not in present]
            for u in missing:
                attrs = u.attrs()
                self.study.enqueue_trial({k: attrs[k] for k in PARAMS}, user_attrs=attrs)
        self._space = space
        return len(missing)

    def search_space(self) -> dict[str, BaseDistribution]:
        """The units' parameter distributions, as ``ensure_units`` stored them in the study."""
        space = getattr(self, "_space", None)
        if space is None:
            stored = self.study.user_attrs.get(_SPACE_ATTR)
            if stored is None:
                raise RuntimeError("the study has no units queued: call ensure_units first")
            space = self._space = {name: json_to_distribution(d) for name, d in stored.items()}
        return space

    def _claim(self, units: set[str]) -> optuna.trial.FrozenTrial | None:
        """The next queued unit, now RUNNING with a heartbeat, or None when the queue is empty
        or its head is not one of ``units`` (a later halving rung's unit, queued by a worker ahead).

        ``Study.ask()`` pops the first WAITING trial through public API, but
        creates a new trial when none is left: under the queue lock no other
        worker claims, so a WAITING trial seen here is the one ask() pops
        (``test_ask_pops_the_first_waiting_trial`` fails if Optuna changes that).
        The heartbeat goes in before the claim, so a worker killed in between
        leaves a trial that can go stale, never one that runs forever. The claimed
        trial carries a token of this claim before ask() pops it, so a claim whose
        answer a server restart cut off is found again when it is retried, not
        left RUNNING for its heartbeat to go stale (and be trained twice).
        Trial ids have no public accessor: ``_trial_id`` is read for the heartbeat.
        """
        token = secrets.token_hex(8)
        return self.retry(lambda: self._claim_once(units, token))

    def _claim_once(self, units: set[str], token: str) -> optuna.trial.FrozenTrial | None:
        space = self.search_space()
        with self.lock():
            running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            lost = [t for t in running if t.user_attrs.get("claim") == token]
            if lost:  # this very claim went through, only its answer was lost with the connection
                return self.storage.get_trial(lost[0]._trial_id)
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not waiting:
                return None
            first = min(waiting, key=lambda t: t.number)
            if first.user_attrs.get("unit") not in units:
                return None
            self.storage.record_heartbeat(first._trial_id)
            self.storage.set_trial_user_attr(first._trial_id, "claim", token)  # finds a lost claim again (above)
            with warnings.catch_warnings():  # "heartbeat ... supposed to be used with Study.optimize": _beat does it
                warnings.simplefilter("ignore", UserWarning)
                trial = self.study.ask(fixed_distributions=space)
            if trial.number != first.number:  # never under the lock; beat for the one popped all the same
                self.storage.record_heartbeat(trial._trial_id)
            return self.storage.get_trial(trial._trial_id)

    @_retried
    def fail_stale(self) -> None:
        with self.lock(), warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", optuna.exceptions.ExperimentalWarning
            )  # stable here; not the user's concern
            optuna.storages.fail_stale_trials(self.study)

    @property
    def grace_seconds(self) -> int:
        """Seconds without a heartbeat after which a RUNNING trial is stale."""
        return self.heartbeat * GRACE_FACTOR

    @_retried
    def stale_units(self) -> list[str]:
        """Units of RUNNING trials whose worker stopped beating (a killed or stopped process).

        Read-only: ``fail_stale`` is what re-queues them. Optuna has no public reader
        of heartbeats; ``_get_stale_trial_ids`` is the one its own ``fail_stale_trials`` uses.
        """
        ids = set(self.storage._get_stale_trial_ids(self.study._study_id))
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return sorted(t.user_attrs.get("unit", f"trial {t.number}") for t in running if t._trial_id in ids)

    # --------------------------------------------------------------- worker

    def work(self, plan: Sequence[TrialRecord], train: Train, hooks: Hooks) -> None:
        """Claim and run units until none is left (waiting out other workers' trials)."""
        planned = {p.unit: p for p in plan}
        while not hooks.stop.is_set():
            outages = self.retry.outages
            if time.monotonic() >= self._calm_until:
                self.fail_stale()
            frozen = self._claim(set(planned))
            if self.retry.outages != outages:
                # Every worker's beats stopped with the server: give theirs time to resume before calling any stale.
                self._calm_until = time.monotonic() + self.grace_seconds
            if frozen is None:
                if set(planned) <= self.finished_units():
                    return
                running = self.retry(lambda: self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                if not running:
                    return
                hooks.on_wait(len(running))
                hooks.stop.wait(self.heartbeat)  # a dead worker's trial goes stale and comes back to the queue
                continue
            self._run_one(frozen, planned[frozen.user_attrs["unit"]], train, hooks)

    def _run_one(self, frozen, planned: TrialRecord, train: Train, hooks: Hooks) -> None:
        trial = self.retry(lambda: self._started(frozen._trial_id))
        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(frozen._trial_id, beating), daemon=True)
        beat.start()
        pending: list[tuple[int, float]] = []  # intermediate values not stored yet (the server was away)

        def report(epoch: int, loss: float, acc: float) -> None:
            # The dashboard's intermediate values: never a reason to stop training. What the storage
            # does not take now is stored with the result.
            pending.append((epoch + 1, acc))
            try:
                while pending:
                    trial.report(pending[0][1], step=pending[0][0])
                    pending.pop(0)
            except Exception as exc:
                if not is_transient(exc):
                    raise

        unsaved = None
        try:
            with stopping.abandonable():
                record = train(planned, report)
        except OutputNotSaved as exc:  # the result is whole, a file of it was refused: keep the result
            record, unsaved = exc.record, exc
        except stopping.Abandoned:  # SIGTERM: back to the queue now, not after its heartbeat goes stale
            beating.set()
            self.retry(lambda: self._release(frozen._trial_id))
            raise
        except DeviceFault as exc:
            beating.set()
            beat.join()
            # Not the candidate's result: a FAIL without a reason is an interrupted trial, queued again.
            trial.set_user_attr("device_fault", exc.reason)
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        finally:
            beating.set()
            beat.join()
        # Trained and in memory: stored once the server answers, never trained again for a lost connection.
        self.retry(lambda: self._store(trial, record, pending))
        hooks.on_done(record)
        if unsaved is not None:
            raise unsaved

    def _release(self, trial_id: int) -> None:
        """An abandoned unit's trial: ended as interrupted (a FAIL without a reason) and queued again."""
        with self.lock():
            if self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                _requeue_stale(self.study, self.storage.get_trial(trial_id))

    def _started(self, trial_id: int) -> optuna.trial.Trial:
        trial = optuna.trial.Trial(self.study, trial_id)
        trial.set_user_attr("worker", worker_tag())
        return trial

    def _store(self, trial: optuna.trial.Trial, record: TrialRecord, pending: list[tuple[int, float]]) -> None:
        """The finished record into the trial; again after a lost connection, it finds what is already there."""
        stored = self.storage.get_trial(trial._trial_id)
        if _interrupted(stored):
            # Failed as stale while the server was away (no beats reached it) and queued again:
            # the result goes into that queued copy, unless another worker has started it.
            trial = self._adopt(stored)
            if trial is None:
                return
            stored = self.storage.get_trial(trial._trial_id)
        if stored.state.is_finished():
            return  # the earlier try was committed, only its answer was lost
        for step, value in pending:
            if step not in stored.intermediate_values:
                trial.report(value, step=step)
        for key, value in stored_fields(record).items():
            if key not in ("state", "attempts"):  # the trial's own state and count say these
                trial.set_user_attr(key, value)
        if record.state is State.COMPLETE:
            self.study.tell(trial, record.accuracy)
        else:
            self.study.tell(trial, state=TrialState.PRUNED if record.state is State.PRUNED else TrialState.FAIL)

    def _adopt(self, lost: optuna.trial.FrozenTrial) -> optuna.trial.Trial | None:
        """The queued copy of ``lost``'s unit, claimed for a result already trained; None if another worker has it."""
        unit = lost.user_attrs.get("unit")
        space = self.search_space()
        with self.lock():
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            copy = next((t for t in waiting if t.user_attrs.get("unit") == unit), None)
            if copy is None:
                return None
            self.storage.record_heartbeat(copy._trial_id)  # beats first, as in _claim: never RUNNING forever
            if not self.storage.set_trial_state_values(copy._trial_id, TrialState.RUNNING):
                return None
        for name in PARAMS:  # what ask() would have set from the queued copy's fixed parameters
            if name in copy.user_attrs and name in space:
                value = space[name].to_internal_repr(copy.user_attrs[name])
                self.storage.set_trial_param(copy._trial_id, name, value, space[name])
        return self._started(copy._trial_id)

    def _beat(self, trial_id: int, done: threading.Event) -> None:
        while not done.wait(self.heartbeat):
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception:  # a missed beat is retried; a long outage makes the trial stale, by design
                pass

    # -------------------------------------------------------------- results

    @_retried
    def unit_records(self, plan: Sequence[TrialRecord]) -> list[TrialRecord]:
        """Per planned unit, the trial that speaks for it (finished beats running beats queued)."""
        order = {
            TrialState.COMPLETE: 0,
            TrialState.PRUNED: 1,
            TrialState.FAIL: 2,
            TrialState.RUNNING: 3,
            TrialState.WAITING: 4,
        }
        best: dict[str, tuple[tuple, optuna.trial.FrozenTrial]] = {}
        attempts: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            key = t.user_attrs.get("unit")
            if key is None:
                continue
            if t.state != TrialState.WAITING:
                attempts[key] = attempts.get(key, 0) + 1
            rank = (5 if _interrupted(t) else order.get(t.state, 6), -t.number)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, t)
        found = {}
        for p in plan:
            if p.unit not in best:
                continue
            t = best[p.unit][1]
            state = State.WAITING if _interrupted(t) else State[t.state.name]
            found[p.unit] = updated(p, {**t.user_attrs, "state": state, "attempts": attempts.get(p.unit, 0)})
        return merge(plan, found)

    @_retried
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


class OptunaBackend:
    """The ``Backend`` over an Optuna study: queued units claimed by any number of workers."""

    name = "optuna"

    def __init__(self, study: OptunaStudy, storage_url: str):
        self.study, self.storage_url = study, storage_url

    def finished(self, plan: Sequence[TrialRecord]) -> set[str]:
        return self.study.finished_units()

    def execute(self, plan: Sequence[TrialRecord], train: Train, hooks: Hooks) -> list[TrialRecord]:
        try:
            self.study.ensure_units([unit_of(p) for p in plan])
            self.study.work(plan, train, hooks)
        except optuna.exceptions.StorageInternalError as exc:  # locked past the wait limit, or the server went away
            raise storage_error(self.storage_url, exc.__cause__ or exc) from None
        return self.records(plan)

    def records(self, plan: Sequence[TrialRecord]) -> list[TrialRecord]:
        return self.study.unit_records(plan)


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'study.db').resolve()}"


def worker_tag() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
