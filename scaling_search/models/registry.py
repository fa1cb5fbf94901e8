"""Named models and model families.

A family turns a name plus options into a frozen config (no torch needed),
and names the module class that builds it; the class is imported only when a
model is actually built. Families that can be compound-scaled also register
their ``ScalableFamily`` (``family.py``): EfficientNet, MobileNetV2, ResNet and
a user's function (``"package.module:build"`` or ``"path/file.py:build"``).
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
from .efficientnet_config import (
    OFFICIAL,
    EfficientNetConfig,
    analytic_counts,
    effective_multipliers,
    official_config,
    scale_network,
)
from .family import Counts, ScalableFamily, register_scalable
from .mobilenetv2_config import MobileNetV2Config
from .mobilenetv2_config import analytic_counts as mobilenetv2_counts
from .mobilenetv2_config import blocks as mobilenetv2_blocks
from .mobilenetv2_config import effective_multipliers as mobilenetv2_effective
from .mobilenetv2_config import network as mobilenetv2_network
from .plugin import FunctionConfig, build_function, check_baseline, is_target
from .plugin import counts as function_counts
from .plugin import signature as function_signature
from .resnet_config import ARCHS, ResNetConfig, num_blocks
from .resnet_config import analytic_counts as resnet_counts
from .resnet_config import effective_multipliers as resnet_effective
from .resnet_config import network as resnet_network


@dataclass(frozen=True)
class Family:
    name: str
    members: tuple[str, ...]  # registered names, e.g. efficientnet-b0
    configure: Callable[..., Any]  # (name, **options) -> config
    config_type: type
    builder: str | Callable[[Any], Any]  # "module:Class", relative to this package, or a function of the config


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


def _multipliers(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """width, depth (default 1), resolution and num_classes when given: what every other family takes."""
    _reject(name, options, ("phi", "alpha", "beta", "gamma"), "they scale detectors: use 'efficientdet --phi K'")
    out = {k: options[k] for k in ("resolution", "num_classes") if options.get(k) is not None}
    return out | {k: 1.0 if options.get(k) is None else options[k] for k in ("width", "depth")}


def _configure_mobilenetv2(name: str, **options: Any) -> MobileNetV2Config:
    """Options: width, depth, resolution, num_classes, dropout, drop_path."""
    return _with_given(MobileNetV2Config(**_multipliers(name, options)), options, ("dropout", "drop_path"))


def _configure_resnet(name: str, **options: Any) -> ResNetConfig:
    """Options: width, depth, resolution, num_classes, dropout, drop_path."""
    config = ResNetConfig(arch=name, name=name, **_multipliers(name, options))
    return _with_given(config, options, ("dropout", "drop_path"))


def _configure_function(name: str, **options: Any) -> FunctionConfig:
    """Options: width, depth, resolution, num_classes; dropout and drop path are the function's own."""
    return FunctionConfig(target=name, name=name, **_multipliers(name, options))


register(_family("efficientnet", OFFICIAL, _configure_efficientnet, EfficientNetConfig))
register(_family("efficientdet", OFFICIAL_D, _configure_efficientdet, EfficientDetConfig))
register(Family("mobilenetv2", ("mobilenetv2",), _configure_mobilenetv2, MobileNetV2Config, ".mobilenetv2:MobileNetV2"))
register(Family("resnet", tuple(ARCHS), _configure_resnet, ResNetConfig, ".resnet:ResNet"))
# A user's function has no registered names: get_config recognises "where:name".
register(Family("function", (), _configure_function, FunctionConfig, build_function))


def families() -> dict[str, Family]:
    return dict(_FAMILIES)


def model_names() -> list[str]:
    return [m for f in _FAMILIES.values() for m in f.members]


def get_config(name: str, **options: Any):
    """The frozen config for a registered model name or a user's function ``where:name`` (options override
    its defaults). A function is not imported here: that happens when its network is first counted or built."""
    for family in _FAMILIES.values():
        if name in family.members:
            return family.configure(name, **options)
    if is_target(name):
        return _FAMILIES["function"].configure(name, **options)
    known = ", ".join(model_names())
    raise UsageError(
        f"unknown model {name!r}: choose one of {known}, or name your function 'package.module:build' or "
        "'path/file.py:build'"
    )


def build(config) -> Any:
    """Build the torch module for a config returned by ``get_config``."""
    for family in _FAMILIES.values():
        if isinstance(config, family.config_type):
            if callable(family.builder):
                return family.builder(config)
            module_name, cls = family.builder.split(":")
            module = importlib.import_module(module_name, __package__)
            return getattr(module, cls)(config)
    raise TypeError(f"no model family builds {type(config).__name__}")


def family_root(name: str) -> str:
    """The family member a series is extrapolated from at width 1 and depth 1: ``efficientnet`` for
    every EfficientNet name, else the name itself (a ResNet depth, a function)."""
    return "efficientnet" if name.startswith("efficientnet") else name


def scalable_names() -> list[str]:
    """Names that can be searched and extrapolated (besides a user's function)."""
    return [m for f in _FAMILIES.values() if f.name not in ("efficientdet", "function") for m in f.members]


# ------------------------------------------------------------ scalable families


def _meta_counts(config: Any) -> Counts:
    from .counting import count_module

    counted = count_module(lambda: build(config), config.resolution)
    return Counts(params=counted.params, macs=counted.macs)


def _efficientnet_counts(config: EfficientNetConfig) -> Counts:
    # The closed form assumes "same" padding (odd kernels) and the network built from exactly this config type.
    if type(config) is EfficientNetConfig and all(s.kernel % 2 == 1 for s in config.stages):
        return analytic_counts(config)
    return _meta_counts(config)


def _compound(**fixed: Any) -> Callable[[Any, Any], Any]:
    """A family's ``scale``: multipliers times the baseline's, the extrapolated resolution, a compound name."""

    def scale(base: Any, dims: Any) -> Any:
        extra = {"dropout": dims.dropout} if fixed.get("dropout") else {}
        return base.with_(
            width=base.width * dims.width,
            depth=base.depth * dims.depth,
            resolution=dims.resolution,
            name=f"compound-phi{dims.phi:g}",
            **extra,
        )

    return scale


def _official_b(num_classes: int) -> dict[int, EfficientNetConfig]:
    return {int(v[1:]): official_config(v, num_classes) for v in OFFICIAL if v.startswith("b")}


def _register_scalable() -> None:
    channels = "channels round to multiples of 8"
    register_scalable(
        ScalableFamily(
            name="efficientnet",
            config_type=EfficientNetConfig,
            scale=_compound(dropout=True),  # the official table's dropout schedule
            counts=_efficientnet_counts,
            signature=scale_network,
            columns=lambda c: {"dropout": c.dropout, "blocks": scale_network(c).num_blocks},
            rounding=channels,
            base_label="B0",
            official=_official_b,
            detection_backbone=True,
            effective=effective_multipliers,
        )
    )
    register_scalable(
        ScalableFamily(
            name="mobilenetv2",
            config_type=MobileNetV2Config,
            scale=_compound(),
            counts=mobilenetv2_counts,
            signature=mobilenetv2_network,
            columns=lambda c: {"dropout": c.dropout, "blocks": len(mobilenetv2_blocks(c))},
            rounding=channels + " (the 1,280-channel head only above width 1)",
            effective=mobilenetv2_effective,
        )
    )
    register_scalable(
        ScalableFamily(
            name="resnet",
            config_type=ResNetConfig,
            scale=_compound(),
            counts=resnet_counts,
            signature=resnet_network,
            columns=lambda c: {"blocks": num_blocks(c)},
            rounding=channels + " (the stem included)",
            effective=resnet_effective,
        )
    )
    register_scalable(
        ScalableFamily(
            name="function",
            config_type=FunctionConfig,
            scale=_compound(),
            counts=function_counts,
            signature=function_signature,
            columns=lambda c: {},
            rounding="the function rounds channels and blocks as it builds them",
            check=check_baseline,
        )
    )


_register_scalable()


# ------------------------------------------------------------ configs as JSON

CONFIG_FORMAT = "scaling-search-config/1"
_CONFIG_TYPES: dict[str, type] = {
    "efficientnet": EfficientNetConfig,
    "efficientdet": EfficientDetConfig,
    "mobilenetv2": MobileNetV2Config,
    "resnet": ResNetConfig,
    "function": FunctionConfig,
}


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
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


def config_from_dict(data: Any, where: str = "config") -> Any:
    """The config that ``config_to_dict`` wrote; anything else is a UsageError naming the key."""
    if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
        raise UsageError(f'{where} is not a scaling-search model config (expected "format": "{CONFIG_FORMAT}")')
    family = data.get("family")
    if family not in _CONFIG_TYPES:
        raise UsageError(f"{where}: unknown family {family!r}: choose one of {', '.join(_CONFIG_TYPES)}")
    return _decode(_CONFIG_TYPES[family], data.get("config"), f"{where}.config")


def load_config(path: str | Path) -> Any:
    """Read a config JSON written by ``scaling-search export --format json`` (or ``config_to_dict``)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read config {path}: {exc}") from None
    return config_from_dict(data, str(path))
