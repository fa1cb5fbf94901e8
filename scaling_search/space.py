"""Search spaces: YAML files validated into frozen dataclasses.

A space says what to scale (baseline), on what (data), which candidates
(grid, constraint), how to judge them (proxy recipe, seeds, pruning) and how
to extrapolate the winner. Loading is strict: an unknown key, a wrong type or
a missing field is a ``UsageError`` that names the key, and YAML is read with
``safe_load`` (no object construction).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .scaling import CONSTRAINT_MODES, GRID_KINDS, parse_budget
from .train.recipe import PRECISIONS, Recipe

# The shipped spaces live at the top of the repository (installed editable).
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
# A space's name becomes the default run folder runs/<name>-<budget>: a plain
# word, so that it can never point outside runs/.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass(frozen=True)
class BaselineSpec:
    # efficientnet-b0 (a named EfficientNet), efficientnet, mobilenetv2, resnet18/34/50 (with width/depth), or a
    # user's function "package.module:build" / "path/file.py:build" (run as the space asks; never by report)
    model: str = "efficientnet-b0"
    width: float | None = None
    depth: float | None = None
    resolution: int = 64  # base resolution r0 of the proxy task


@dataclass(frozen=True)
class DataSection:
    name: str  # cifar10 | imagefolder:PATH
    data_dir: str | None = None
    storage_size: int | None = None  # side of the stored squares; None: the dataset's native size

    def effective_storage_size(self) -> int:
        """The side images are stored at: ``storage_size``, else the native size (imagefolder: 32)."""
        from .data.sources import DEFAULT_STORAGE_SIZE, NATIVE_SIZES

        return self.storage_size or NATIVE_SIZES.get(self.name.split(":", 1)[0], DEFAULT_STORAGE_SIZE)


@dataclass(frozen=True)
class GridSpec:
    kind: str = "derived"  # full | derived
    step: float | None = None  # default 0.05 (full) or 0.1 (derived)
    max_alpha: float = 2.0
    max_beta: float = 2.0
    max_gamma: float = 2.0


@dataclass(frozen=True)
class ConstraintSpec:
    budget: str = "2x"
    mode: str = "theoretical"
    tolerance: float = 0.05
    resolution_multiple: int = 8


@dataclass(frozen=True)
class PruningSpec:
    """Synchronous successive halving: rungs of min_epochs, eta * min_epochs, ..., proxy.epochs,
    each a complete schedule; the best 1/eta by seed mean go on, ties kept, the paper's triple always."""

    enabled: bool = False
    min_epochs: int = 1  # the first rung's epochs
    reduction_factor: int = 3  # eta


@dataclass(frozen=True)
class RacingSpec:
    """Racing seeds: after the space's seeds, rounds of one more seed for the candidates still in contention,
    until one is better than every other, the rest are equivalent within ``delta``, or the limits are spent
    (``search/racing.py`` states the rule and its guarantee)."""

    enabled: bool = False
    delta: float = 0.01  # indifference zone, in top-1: differences below it are "equivalent"
    alpha: float = 0.05  # the probability of a wrong decision, at most
    max_seeds: int = 8  # seeds per candidate, at most (the space's seeds are the first round)
    max_trainings: int | None = None  # trainings of the whole race, at most; None: only max_seeds bounds it


@dataclass(frozen=True)
class FidelitySpec:
    """Once the search has decided: the decision set, the paper's triple and the best candidate of each leaning
    (depth-, width-, resolution-heavy) trained again at ``epochs_factor`` times the proxy's epochs, same seeds,
    to see whether the decision survives a longer schedule. Its units have their own keys: the search's are
    untouched, so it is not part of the fingerprint and a finished run folder can add it."""

    enabled: bool = False
    epochs_factor: int = 3


@dataclass(frozen=True)
class ExtrapolationSpec:
    max_phi: int = 7
    base_resolution: int = 224  # the B-series is reported at ImageNet scale
    resolution_multiple: int = 8
    num_classes: int = 1000
    detection: bool = True  # also write the EfficientDet D-series


@dataclass(frozen=True)
class SearchSpace:
    name: str
    data: DataSection
    proxy: Recipe  # the proxy training, key for key
    description: str = ""
    baseline: BaselineSpec = field(default_factory=BaselineSpec)
    grid: GridSpec = field(default_factory=GridSpec)
    constraint: ConstraintSpec = field(default_factory=ConstraintSpec)
    seeds: tuple[int, ...] = (0, 1)
    order_seed: int = 0  # shuffles the run order within each seed (recorded, so a run is reproducible)
    pruning: PruningSpec = field(default_factory=PruningSpec)
    racing: RacingSpec = field(default_factory=RacingSpec)
    fidelity: FidelitySpec = field(default_factory=FidelitySpec)
    extrapolation: ExtrapolationSpec = field(default_factory=ExtrapolationSpec)
    # The trials' precision (train.recipe.Runtime): auto picks per card; another value is part of the search.
    precision: str = "auto"

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    def fingerprint(self, data_dir: str | None = None) -> str:
        """Hash of everything that decides which trials exist and what they mean.

        Where the data lies is not part of it (hashed as ``data_dir: null``), so a
        run folder resumes on a machine that keeps the data elsewhere. Folders made
        by earlier releases hashed the space's ``data_dir``: pass it to recompute theirs.
        The order seed changes when a unit runs, never which units exist or what they mean; the
        fidelity check adds units of its own, after the search, and leaves the search's alone.
        """
        skip = ("description", "extrapolation", "order_seed", "fidelity")
        plain = {k: v for k, v in self.to_dict().items() if k not in skip}
        if not self.racing.enabled:  # no race, no extra units: folders made before racing existed keep their hash
            plain.pop("racing")
        if self.precision == "auto":  # chosen per card; folders made before the key existed keep their hash
            plain.pop("precision")
        # Hashed where dropout and drop_path used to live (baseline), so that run
        # folders made before they joined the proxy recipe still resume.
        proxy = dict(plain["proxy"])
        plain["baseline"] = {**plain["baseline"], "dropout": proxy.pop("dropout"), "drop_path": proxy.pop("drop_path")}
        # Hashed only when on, so folders made before the key existed (always off) still resume.
        if not proxy.get("zero_init_residual"):
            proxy.pop("zero_init_residual", None)
        plain["proxy"] = proxy
        # Hashed as the size used, so spaces that spell out the native size keep their hash.
        plain["data"] = {**plain["data"], "storage_size": self.data.effective_storage_size(), "data_dir": data_dir}
        blob = json.dumps(plain, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def with_model(self, model: str | None) -> SearchSpace:
        """The same study of another baseline network (``--model``): at width 1 and depth 1, the space's
        resolution, data and recipe kept. None: this space."""
        if model is None:
            return self
        space = dataclasses.replace(
            self, baseline=dataclasses.replace(self.baseline, model=model, width=None, depth=None)
        )
        _validate(space)
        return space

    def with_overrides(self, **sections: dict) -> SearchSpace:
        """Replace fields of sections, e.g. with_overrides(constraint={"budget": "4x"})."""
        changes = {}
        for section, values in sections.items():
            values = {k: v for k, v in values.items() if v is not None}
            if not values:
                continue
            current = getattr(self, section)
            changes[section] = dataclasses.replace(current, **values) if dataclasses.is_dataclass(current) else values
        space = dataclasses.replace(self, **changes) if changes else self
        _validate(space)
        return space


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# ------------------------------------------------------------------ loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {type(None): "null", float: "number", int: "integer", str: "string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except UsageError:
                continue
        raise UsageError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; the user meant a number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # "budget: 2" is a fine way to write 2x
    raise UsageError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{where or 'search space'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise UsageError(f"unknown key '{_join(where, key)}' in search space: known keys are {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise UsageError(f"search space is missing required key '{_join(where, name)}': add it")
    try:
        return cls(**kwargs)
    except UsageError as exc:  # a section that validates itself (the proxy Recipe)
        key = getattr(exc, "key", None)
        raise UsageError(f"{where} section: {exc}" + (f" ({_join(where, key)})" if key else "")) from None


def _legacy_dropout(data: Any) -> Any:
    """Spaces written before dropout and drop_path joined the proxy recipe kept them under baseline."""
    if not isinstance(data, dict) or not isinstance(data.get("baseline"), dict):
        return data
    baseline = dict(data["baseline"])
    moved = {k: baseline.pop(k) for k in ("dropout", "drop_path") if k in baseline}
    if not moved:
        return data
    proxy = dict(data.get("proxy") or {})
    for key, value in moved.items():
        if key in proxy and proxy[key] != value:
            raise UsageError(f"baseline.{key} and proxy.{key} differ: give it once, under proxy")
        proxy[key] = value
    return {**data, "baseline": baseline, "proxy": proxy}


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _validate(space: SearchSpace) -> None:
    b, c, g = space.baseline, space.constraint, space.grid  # the proxy Recipe validates itself
    _check(space.precision in PRECISIONS, f"precision {space.precision!r} must be one of {', '.join(PRECISIONS)}")
    parse_budget(c.budget)
    _check(c.mode in CONSTRAINT_MODES, f"constraint.mode {c.mode!r} must be one of {', '.join(CONSTRAINT_MODES)}")
    _check(0 < c.tolerance < 1, f"constraint.tolerance {c.tolerance} must be in (0, 1)")
    _check(c.resolution_multiple >= 1, "constraint.resolution_multiple must be a positive integer")
    _check(g.kind in GRID_KINDS, f"grid.kind {g.kind!r} must be one of {', '.join(GRID_KINDS)}")
    _check(g.step is None or 0 < g.step <= 1, f"grid.step {g.step} must be in (0, 1]")
    for key in ("max_alpha", "max_beta", "max_gamma"):
        _check(getattr(g, key) >= 1, f"grid.{key} must be at least 1")
    _check(b.resolution > 0, f"baseline.resolution must be a positive integer, got {b.resolution}")
    _check(
        not b.model.startswith("efficientdet"),
        f"baseline.model {b.model!r}: only classifier families can be searched (efficientnet, mobilenetv2, resnet, "
        "a function); search the detector's backbone and read the D-series",
    )
    _check(
        not b.model.startswith("efficientnet-") or (b.width is None and b.depth is None),
        f"baseline.width/depth do not apply to {b.model}, whose width and depth are fixed: use model 'efficientnet'",
    )
    _check(len(space.seeds) >= 1, "seeds must list at least one seed")
    _check(len(set(space.seeds)) == len(space.seeds), "seeds must not repeat")
    _check(
        space.pruning.min_epochs >= 1 and space.pruning.reduction_factor >= 2,
        "pruning.min_epochs >= 1 and pruning.reduction_factor >= 2",
    )
    _check(
        not space.pruning.enabled or space.pruning.min_epochs < space.proxy.epochs,
        f"pruning.min_epochs {space.pruning.min_epochs} must be below proxy.epochs {space.proxy.epochs} for "
        "halving to have a rung before the last: lower it, or set pruning.enabled: false",
    )
    r = space.racing
    _check(
        not (r.enabled and space.pruning.enabled),
        "racing.enabled and pruning.enabled: choose one allocation (racing seeds or successive halving)",
    )
    _check(0 < r.delta < 1, f"racing.delta {r.delta} must be in (0, 1) (top-1 accuracy)")
    _check(0 < r.alpha < 0.5, f"racing.alpha {r.alpha} must be in (0, 0.5)")
    _check(
        not r.enabled or r.max_seeds >= max(2, len(space.seeds)),
        f"racing.max_seeds {r.max_seeds} must be at least 2 and at least the {len(space.seeds)} seeds of the first "
        "round",
    )
    _check(
        r.max_trainings is None or r.max_trainings >= 1,
        f"racing.max_trainings {r.max_trainings} must be a positive integer (or null: no cap)",
    )
    _check(
        space.data.storage_size is None or space.data.storage_size > 0,
        "data.storage_size must be a positive integer (or left out: the dataset's native size)",
    )
    _check(
        space.fidelity.epochs_factor >= 2,
        f"fidelity.epochs_factor {space.fidelity.epochs_factor} must be an integer of at least 2 (a longer schedule)",
    )
    e = space.extrapolation
    _check(
        e.max_phi >= 1 and e.base_resolution > 0 and e.resolution_multiple >= 1 and e.num_classes >= 1,
        "extrapolation values must be positive",
    )
    _check(
        _NAME.fullmatch(space.name) is not None,
        f"name {space.name!r} must be a plain word (letters, digits, '.', '_', '-'; up to 64) as it names the run "
        "folder",
    )


def parse_space(data: Any, source: str = "search space") -> SearchSpace:
    try:
        space = _build(SearchSpace, _legacy_dropout(data), "")
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    try:
        _validate(space)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    return space


def load_space(path: str | Path) -> SearchSpace:
    p = Path(path)
    if not p.is_file():
        raise UsageError(
            f"search space {p} does not exist (or is not a file): give a YAML file, or --preset {'|'.join(presets())}"
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.constructor.ConstructorError as exc:  # a tag such as !!python/object: never constructed
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(
            f"search space {p} uses a YAML tag that is not allowed{at}: write plain mappings, lists, numbers and "
            "strings"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsageError(f"search space {p} is not valid YAML{at}: fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"search space {p} cannot be read: {exc}") from None
    return parse_space(data, str(p))


def presets() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    candidate = SPACES_DIR / f"{name}.yaml"
    if name in presets() and candidate.is_file():
        return candidate
    raise UsageError(f"unknown preset {name!r}: choose one of {', '.join(presets())}, or give --space FILE")


def dump_space(space: SearchSpace) -> str:
    return yaml.safe_dump(space.to_dict(), sort_keys=False)
