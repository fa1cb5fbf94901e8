"""Waiting out a database server that stops answering in the middle of a run.

A PostgreSQL or MySQL server restarts, fails over or drops connections now and
then; a worker of a multi-hour study should wait for it, not die. Once the
storage has answered this process, a lost connection or a refused one is
retried with backoff for a bounded time (``--storage-retry``), with one line
when the wait starts and one when the server answers again; past the bound
the run stops with ``StorageLost``. Before the first answer nothing is
retried: a wrong URL or password is said at once.

A SQLite file is never retried: its errors (a full disk, a damaged file) do
not go away by waiting, and a lock has its own wait (``lock_timeout``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import UsageError

DEFAULT_STORAGE_RETRY = 60.0  # seconds a run waits for a storage server that stopped answering
FIRST_DELAY = 0.5  # seconds before the first retry; doubled each time up to MAX_DELAY
MAX_DELAY = 5.0

T = TypeVar("T")


class StorageLost(UsageError):
    """The storage server stopped answering during the run for longer than the retry bound."""

    def __init__(self, url: str, waited: float, reason: str):
        self.url, self.waited, self.reason = url, waited, reason
        super().__init__(
            f"the study storage {url!r} stopped answering during the run and did not come back within "
            f"{waited:.0f} s ({reason})"
        )


def is_transient(exc: BaseException) -> bool:
    """A lost, refused or timed-out connection (anywhere in the exception's chain): worth waiting for."""
    import sqlalchemy.exc as sa

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StorageLost):  # the wait is over: never waited for again
            return False
        if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError)):
            return True
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return False


def first_line(exc: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's "(Background on this error ...)" tail."""
    import sqlalchemy.exc as sa

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    # The driver's message where there is one ("connection refused"), else SQLAlchemy's, else the first.
    driver = [x.orig for x in chain if isinstance(x, sa.DBAPIError) and x.orig is not None]
    ours = [x for x in chain if isinstance(x, sa.SQLAlchemyError)]
    text = str((driver or ours or chain)[0]).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class StorageRetry:
    """Calls storage operations, retrying transient failures for up to ``seconds`` once the storage has answered.

    ``say`` prints one line (stdout by default). ``redacted`` is the URL as messages show it.
    """

    def __init__(self, redacted: str, seconds: float, *, say: Callable[[str], None] | None = None):
        self.redacted = redacted
        self.seconds = seconds
        self.say = say or (lambda text: print(text, flush=True))
        self.answered = False  # nothing is retried before the storage has answered once
        self.outages = 0  # waits that ended with the server answering again (what the soak counts)

    def __call__(self, operation: Callable[[], T]) -> T:
        started: float | None = None
        delay = FIRST_DELAY
        while True:
            try:
                result = operation()
            except Exception as exc:
                if not (self.answered and self.seconds > 0 and is_transient(exc)):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    self.say(
                        f"study storage {self.redacted!r} stopped answering ({first_line(exc)}): waiting for it, up "
                        f"to {self.seconds:g} s (--storage-retry)"
                    )
                left = started + self.seconds - now
                if left <= 0:
                    raise StorageLost(self.redacted, now - started, first_line(exc)) from None
                time.sleep(min(delay, left))
                delay = min(2 * delay, MAX_DELAY)
                continue
            self.answered = True
            if started is not None:
                self.outages += 1
                self.say(f"study storage {self.redacted!r} answers again after {time.monotonic() - started:.1f} s")
            return result


def lost_storage_message(
    exc: StorageLost, finished_before: int, finished_here: int, total: int, command: str | None
) -> str:
    """The one line a run ends with when its storage is lost: what happened, what is kept, how to resume."""
    resume = f": {command}" if command else ""
    return (
        f"{exc}: {finished_before + finished_here} of {total} trials are finished and kept in the study "
        f"({finished_here} by this run; a trial under way is trained again); once the server answers, run the same "
        f"command to resume{resume}"
    )
