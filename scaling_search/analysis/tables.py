"""Rendering rows of dicts as Markdown, CSV, JSON or LaTeX.

Rows stay plain dicts with stable keys (the JSON and CSV contract); the human
formats pick columns and headers through ``Column``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

FORMATS = ("md", "csv", "json", "latex")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[Any], str] = str


def millions(value: Any) -> str:
    return "" if value is None else f"{value / 1e6:.2f}M"


def giga(value: Any) -> str:
    return "" if value is None else f"{value / 1e9:.3f}"


def ratio(value: Any) -> str:
    return "" if value is None else f"{value:.2f}x"


def num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent(value: Any) -> str:
    return "" if value is None else f"{value * 100:+.1f}%"


# The three coefficients of a candidate, as every candidate table shows them.
COEFFICIENT_COLUMNS = (Column("alpha", "alpha", num), Column("beta", "beta", num), Column("gamma", "gamma", num))


def _cells(rows: Sequence[dict], columns: Sequence[Column]) -> list[list[str]]:
    return [[c.fmt(r.get(c.key)) if r.get(c.key) is not None else "" for c in columns] for r in rows]


def to_markdown(rows: Sequence[dict], columns: Sequence[Column], title: str = "", notes: Sequence[str] = ()) -> str:
    headers = [c.header for c in columns]
    body = _cells(rows, columns)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in body:
        lines.append("| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |")
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text


def to_latex(rows: Sequence[dict], columns: Sequence[Column], title: str = "", notes: Sequence[str] = ()) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if title:
        lines.append(r"\caption{" + _latex_escape(title) + "}")
    lines.append(r"\begin{tabular}{" + "r" * len(columns) + "}")
    lines.append(r"\toprule")
    lines.append(" & ".join(_latex_escape(c.header) for c in columns) + r" \\")
    lines.append(r"\midrule")
    for r in _cells(rows, columns):
        lines.append(" & ".join(_latex_escape(v) for v in r) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    for n in notes:
        lines.append("% " + n)
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def render(
    fmt: str,
    rows: Sequence[dict],
    columns: Sequence[Column],
    *,
    title: str = "",
    notes: Sequence[str] = (),
    meta: dict | None = None,
) -> str:
    """One of FORMATS; JSON carries ``meta`` and the notes beside the rows."""
    if fmt == "md":
        return to_markdown(rows, columns, title, notes)
    if fmt == "latex":
        return to_latex(rows, columns, title, notes)
    if fmt == "csv":
        return to_csv(rows)
    if fmt == "json":
        return json.dumps({**(meta or {}), "rows": list(rows), "notes": list(notes)}, indent=2) + "\n"
    raise UsageError(f"format {fmt!r} is unknown: use one of {', '.join(FORMATS)}")
