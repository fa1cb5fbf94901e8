"""The code's shape: the analysis layer never imports the search layer, and trial
states are spelled in one module only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scaling_search.records import TrialRecord, TrialState, parse_trials, trials_csv

PACKAGE = Path(__file__).resolve().parent.parent / "scaling_search"
STATES = {"COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"}


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of the scaling_search modules ``path`` imports (relative imports resolved)."""
    package = ["scaling_search", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]]
    names = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("module", ["report", "ranking", "plots", "tables"])
def test_analysis_imports_nothing_from_search(module):
    found = _imports(PACKAGE / "analysis" / f"{module}.py")
    assert "scaling_search.records" in found or module in ("plots", "tables")  # the resolver sees real imports
    assert not [n for n in found if n.startswith("scaling_search.search")], found


def test_the_import_resolver_sees_an_upward_import():
    # The layering check must be able to fail: the same resolver on an upward import.
    names = _imports(PACKAGE / "analysis" / "report.py", "from ..search.trials import Unit\nimport os\n")
    assert "scaling_search.search.trials" in names and "scaling_search.search.trials.Unit" in names


def test_no_state_literal_outside_records():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "records.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in STATES:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def _record(**changes) -> TrialRecord:
    base = TrialRecord(
        alpha=1.2,
        beta=1.1,
        gamma=1.15,
        seed=1,
        epochs=2,
        depth=0.3,
        width=0.275,
        resolution=40,
        params=126822,
        macs=1148736,
        theoretical_ratio=1.92,
        measured_ratio=2.05,
    )
    return base.replace(**changes)


def test_trials_csv_round_trip_keeps_types_and_lists():
    records = [
        _record(),
        _record(
            seed=0,
            state=TrialState.COMPLETE,
            accuracy=0.345,
            epochs_run=2,
            attempts=1,
            epoch_accuracies=(0.292, 0.345),
            epoch_losses=(2.19, 1.94),
            wall_seconds=9.5,
            device="cpu",
        ),
        _record(seed=2, state=TrialState.FAIL, failure='out of memory, "batch" 64', attempts=2),
    ]
    text = trials_csv(records)
    header, first = text.splitlines()[:2]
    assert header.startswith("unit,candidate,alpha") and first.startswith("a1.2-b1.1-g1.15-s0,a1.2-b1.1-g1.15,")
    assert ",126822,1148736," in first and '"[0.292, 0.345]"' in first  # ints are ints, lists JSON
    back = parse_trials(text)
    assert back == sorted(records, key=lambda r: r.seed)


def test_reader_opens_a_file_of_the_previous_release():
    old = (
        "unit,alpha,beta,gamma,seed,state,accuracy,epochs_run,epochs,depth,width,resolution,params,macs,"
        "theoretical_ratio,measured_ratio,images_per_second,wall_seconds,device,failure,epoch_accuracies,"
        "epoch_losses,attempts\n"
        "a1-b1-g1.4-s1,1.0,1.0,1.4,1,PRUNED,0.258,1,2,0.25,0.25,44,126822.0,,1.96,2.29,,,,,[0.258],[2.216637],1\n"
    )
    (r,) = parse_trials(old)
    assert r.state is TrialState.PRUNED and r.candidate == "a1-b1-g1.4" and r.params == 126822
    assert isinstance(r.params, int) and r.macs is None and r.epoch_accuracies == (0.258,)


def _module_name(path: Path) -> str:
    parts = ["scaling_search", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its body (a function-level import counts too)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {n for n in _imports(path) if n in paths and n != name} for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import loop (strongly connected group of more than one module), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other():
    graph = _import_graph()
    assert "scaling_search.search.trials" in graph["scaling_search.search.runner"]  # the graph sees real imports
    assert not _cycles(graph), _cycles(graph)


def test_the_cycle_finder_sees_a_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_only_models_imports_the_efficientnet_stage_table():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.parent.name != "models" and any("efficientnet_config" in n for n in _imports(path))
    ]
    assert not offenders, offenders
    assert any("efficientnet_config" in n for n in _imports(PACKAGE / "models" / "registry.py"))
