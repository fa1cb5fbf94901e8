"""How a run stops when asked: Ctrl-C finishes the units under way, a scheduler's SIGTERM abandons them.

A batch scheduler (SLURM, Kubernetes) sends SIGTERM and, after a grace
period, SIGKILL. A unit can train for longer than any grace period, so on
SIGTERM the units under way are abandoned at once: training stops where it
is, the unit's trial goes back to the queue (no heartbeat to wait out), and
the run writes the report of what is finished and exits with 143. Ctrl-C
(SIGINT) keeps the gentler meaning: finish the units under way, then report
(130).

Signals reach a process's main thread, where its units train, so the state
here is the process's own: ``abandonable`` marks a unit's training, and the
SIGTERM handler raises ``Abandoned`` only inside one (never in the middle of
a storage write or the report).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_state = {"in_unit": False, "requested": False, "raised": False}


class Abandoned(BaseException):
    """A unit's training cut short by SIGTERM. A BaseException, so no ``except Exception`` records it as
    the unit's failure: it is not a result, the unit is trained again on resume."""


def requested() -> bool:
    """Whether this process was asked to terminate (SIGTERM)."""
    return _state["requested"]


def request() -> None:
    """Terminate: abandon the unit under way (raise ``Abandoned`` in it, once) and start no other.

    Called from a SIGTERM handler, on the main thread.
    """
    _state["requested"] = True
    if _state["in_unit"] and not _state["raised"]:
        _state["raised"] = True
        raise Abandoned


@contextmanager
def abandonable() -> Iterator[None]:
    """The training of one unit: SIGTERM abandons it here, and no unit starts once SIGTERM has come."""
    if _state["requested"]:
        raise Abandoned
    _state["in_unit"] = True
    try:
        yield
    finally:
        _state["in_unit"] = False


def install_worker_handler() -> None:
    """A worker process's SIGTERM: abandon its unit (its parent writes the report)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: request())


def reset() -> None:
    """Forget an earlier request (a process that runs more than one command, e.g. the tests)."""
    _state.update(in_unit=False, requested=False, raised=False)
