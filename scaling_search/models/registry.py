"""Named models and model families.

A family turns a name plus options into a frozen config (no torch needed),
and names the module class that builds it; the class is imported only when a
model is actually built.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..scaling import PAPER, Coefficients
from .efficientdet_config import NUM_CLASSES as DET_NUM_CLASSES
from .efficientdet_config import OFFICIAL_D, EfficientDetConfig
from .efficientnet_config import OFFICIAL, EfficientNetConfig, official_config


@dataclass(frozen=True)
class Family:
    name: str
    members: tuple[str, ...]  # registered names, e.g. efficientnet-b0
    configure: Callable[..., Any]  # (name, **options) -> config
    config_type: type
    builder: str  # "module:Class", relative to this package


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    _FAMILIES[family.name] = family


def _family(name: str, variants, configure: Callable[..., Any], config_type: type) -> Family:
    """A family whose members are ``name`` and ``name-<variant>``, built by its module's class of the config's name."""
    members = (name,) + tuple(f"{name}-{v}" for v in variants)
    return Family(name, members, configure, config_type, f".{name}:{config_type.__name__.removesuffix('Config')}")


def _reject(name: str, options: dict[str, Any], keys: tuple[str, ...], why: str) -> None:
    given = [k for k in keys if options.get(k) is not None]
    if given:
        raise UsageError(f"{name} takes no {', '.join(given)}: {why}")


def _with_given(config, options: dict[str, Any], keys: tuple[str, ...]):
    """``config`` with those of ``keys`` that ``options`` gives (None: not given)."""
    changes = {k: options[k] for k in keys if options.get(k) is not None}
    return config.with_(**changes) if changes else config


def _configure_efficientnet(name: str, **options: Any) -> EfficientNetConfig:
    """Options: width, depth, resolution, num_classes, dropout, drop_path; None or absent: the model's own."""
    _reject(name, options, ("phi", "alpha", "beta", "gamma"), "they scale detectors: use 'efficientdet --phi K'")
    width, depth, resolution = options.get("width"), options.get("depth"), options.get("resolution")
    if name == "efficientnet":
        config = EfficientNetConfig(
            width=1.0 if width is None else width,
            depth=1.0 if depth is None else depth,
            resolution=224 if resolution is None else resolution,
        )
    else:
        if width is not None or depth is not None:
            raise UsageError(
                f"{name} has fixed width and depth: use 'efficientnet --width W --depth D' for other values"
            )
        config = _with_given(official_config(name.split("-", 1)[1]), options, ("resolution",))
    return _with_given(config, options, ("num_classes", "dropout", "drop_path"))


def _configure_efficientdet(name: str, **options: Any) -> EfficientDetConfig:
    """Options: phi, alpha, beta, gamma (the backbone's; default the paper's), resolution, num_classes."""
    _reject(name, options, ("width", "depth"), "detectors are scaled by phi (and the backbone by alpha, beta, gamma)")
    phi, num_classes = options.get("phi"), options.get("num_classes")
    classes = DET_NUM_CLASSES if num_classes is None else num_classes
    if name == "efficientdet":
        if phi is None:
            raise UsageError(
                "efficientdet needs phi: e.g. 'efficientdet --phi 3' (optionally --alpha/--beta/--gamma for the "
                "backbone)"
            )
        given = (options.get(k) for k in ("alpha", "beta", "gamma"))
        coeffs = Coefficients(*(paper if v is None else v for paper, v in zip(PAPER.as_tuple(), given)))
        config = EfficientDetConfig.from_formula(phi, coeffs, num_classes=classes)
    else:
        variant = name.split("-", 1)[1]
        _reject(
            name,
            options,
            ("phi", "alpha", "beta", "gamma"),
            f"it is the official configuration; use 'efficientdet --phi {variant[1:]}' for the formula",
        )
        config = EfficientDetConfig.official(variant, classes)
    return _with_given(config, options, ("resolution",))


register(_family("efficientnet", OFFICIAL, _configure_efficientnet, EfficientNetConfig))
register(_family("efficientdet", OFFICIAL_D, _configure_efficientdet, EfficientDetConfig))


def families() -> dict[str, Family]:
    return dict(_FAMILIES)


def model_names() -> list[str]:
    return [m for f in _FAMILIES.values() for m in f.members]


def get_config(name: str, **options: Any):
    """The frozen config for a registered model name (options override its defaults)."""
    for family in _FAMILIES.values():
        if name in family.members:
            return family.configure(name, **options)
    known = ", ".join(model_names())
    raise UsageError(f"unknown model {name!r}: choose one of {known}")


def build(config) -> Any:
    """Build the torch module for a config returned by ``get_config``."""
    for family in _FAMILIES.values():
        if isinstance(config, family.config_type):
            module_name, cls = family.builder.split(":")
            module = importlib.import_module(module_name, __package__)
            return getattr(module, cls)(config)
    raise TypeError(f"no model family builds {type(config).__name__}")


# ------------------------------------------------------------ configs as JSON

CONFIG_FORMAT = "scaling-search-config/1"
_CONFIG_TYPES: dict[str, type] = {"efficientnet": EfficientNetConfig, "efficientdet": EfficientDetConfig}


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def config_to_dict(config: EfficientNetConfig | EfficientDetConfig) -> dict[str, Any]:
    """Every field of a model config (the stage table included), as plain JSON data."""
    for family, cls in _CONFIG_TYPES.items():
        if isinstance(config, cls):
            return {"format": CONFIG_FORMAT, "family": family, "config": _encode(config)}
    raise TypeError(f"no model family has configs of type {type(config).__name__}")


def _decode(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(f"{where} has unknown key(s) {', '.join(unknown)}: expected {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {key: _decode_value(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise UsageError(f"{where}: {exc}") from None


def _decode_value(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _decode_value(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise UsageError(f"{where} must be a list, got {type(value).__name__}")
        return tuple(_decode_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _decode(tp, value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str) and isinstance(value, tp) and not isinstance(value, bool):
        return value
    raise UsageError(f"{where} must be {getattr(tp, '__name__', tp)}, got {value!r}")


def config_from_dict(data: Any, where: str = "config") -> EfficientNetConfig | EfficientDetConfig:
    """The config that ``config_to_dict`` wrote; anything else is a UsageError naming the key."""
    if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
        raise UsageError(f'{where} is not a scaling-search model config (expected "format": "{CONFIG_FORMAT}")')
    family = data.get("family")
    if family not in _CONFIG_TYPES:
        raise UsageError(f"{where}: unknown family {family!r}: choose one of {', '.join(_CONFIG_TYPES)}")
    return _decode(_CONFIG_TYPES[family], data.get("config"), f"{where}.config")


def load_config(path: str | Path) -> EfficientNetConfig | EfficientDetConfig:
    """Read a config JSON written by ``scaling-search export --format json`` (or ``config_to_dict``)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read config {path}: {exc}") from None
    return config_from_dict(data, str(path))
