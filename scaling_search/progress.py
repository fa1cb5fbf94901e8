"""Progress bars on stderr (rich), or nothing at all.

Everything long (download, image decoding, training, a search's trials) reports through
``progress_bar``; with ``enabled=False`` it costs nothing and prints nothing,
which is what tests and pipes get.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[..., None]  # advance(steps=1, **fields shown in the bar's text)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_bar(
    enabled: bool,
    description: str,
    total: float | None,
    *,
    transfer: bool = False,
    text: str = "",
    completed: float = 0,
) -> Iterator[Advance]:
    """Yield ``advance(steps=1, **fields)``; ``text`` is a format string over ``fields``;
    ``completed`` is where a resumed task starts."""
    if not enabled:
        yield lambda steps=1, **fields: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(bar_width=24)]
    columns += [DownloadColumn(), TransferSpeedColumn()] if transfer else [MofNCompleteColumn()]
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    if text:
        columns.append(TextColumn(text))
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, completed=completed, **{k: "" for k in _fields(text)})

        def advance(steps: float = 1, **fields) -> None:
            bar.update(task, advance=steps, **fields)

        yield advance


def _fields(text: str) -> list[str]:
    """Names used as {task.fields[NAME]} in ``text``."""
    return re.findall(r"task\.fields\[(\w+)\]", text)
