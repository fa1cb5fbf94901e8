"""Export a network: the project's own config as JSON, or what timm needs to build it.

timm has no public call that builds an EfficientNet with arbitrary width and
depth multipliers: ``timm.create_model("efficientnet_b0", channel_multiplier=...)``
fails (the registered B0 already passes that argument) and the generic builder
``timm.models.efficientnet._gen_efficientnet`` is private. The closest public
API is the ``timm.models.efficientnet.EfficientNet`` class, which takes a
decoded stage list; ``decode_arch_def`` (listed in the ``__all__`` of
``timm.models._efficientnet_builder``) decodes it. The snippet writes the stage
list with the project's already-rounded block and channel counts, so timm
rounds nothing and builds exactly the network the project counted. Where width
and depth equal an official row, ``timm.create_model("efficientnet_bK", ...)``
builds the same network and is given as well.

Either way BN needs the project's eps (1e-3; timm's default is 1e-5) and SiLU;
state dicts convert with ``models.timm_names``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import UsageError
from .models import (
    BN_EPS,
    BN_MOMENTUM,
    OFFICIAL,
    SE_RATIO,
    EfficientDetConfig,
    EfficientNetConfig,
    compound,
    config_to_dict,
    family_root,
    get_config,
    scalable_of,
    scale_network,
)
from .scaling import Coefficients

FORMATS = ("timm", "json")
TIMM_FORMAT = "scaling-search-timm/1"
# timm registers these classifiers with the official multipliers and symmetric padding
# (the tf_* variants pad like TensorFlow, which the project does not).
TIMM_OFFICIAL = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "l2")


# ------------------------------------------------------------ which config


def table_row_config(coeffs: Coefficients, phi: int, *, num_classes: int = 1000, model: str | None = None) -> Any:
    """The phi row of ``scaling-search table`` for ``coeffs`` (ImageNet-scale base at width 1 and depth 1,
    224 px, multiple 8): EfficientNet's B-phi, or that of ``model``'s family."""
    if not isinstance(phi, int) or isinstance(phi, bool) or phi < 0:
        raise UsageError(f"phi must be a non-negative integer, got {phi!r}")
    base = EfficientNetConfig(num_classes=num_classes)
    if model is not None:
        base = get_config(family_root(model), num_classes=num_classes)
        if scalable_of(base) is None:
            raise UsageError(f"{model} is not a network family that scales: a table row needs one")
    return compound(base, coeffs, phi, 8).with_(name=_row_name(base, phi))


def _row_name(base: Any, phi: int) -> str:
    return f"compound-b{phi}" if isinstance(base, EfficientNetConfig) else f"{base.name}-compound-phi{phi}"


def run_config(run_dir: str | Path, phi: int | None = None) -> Any:
    """From a run folder: the B-phi row of its winner (as in its b_series.csv), or, without
    ``phi``, the network its winner was trained as, from the kept weights."""
    from .weights import stored_config, winner_weights

    folder = Path(run_dir)
    try:
        best = json.loads((folder / "best.json").read_text())
    except FileNotFoundError:
        raise UsageError(f"{folder} holds no best.json: give a run folder written by 'scaling-search run'") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {folder / 'best.json'}: {exc}") from None
    if not isinstance(best, dict) or best.get("alpha") is None:
        raise UsageError(f"{folder} has no winner yet: no candidate finished")
    coeffs = Coefficients(float(best["alpha"]), float(best["beta"]), float(best["gamma"]))
    if phi is None:
        files = winner_weights(folder, coeffs.alpha, coeffs.beta, coeffs.gamma)
        if not files:
            raise UsageError(
                f"{folder} keeps no weights of its winner {coeffs.alpha:g}, {coeffs.beta:g}, {coeffs.gamma:g}: "
                "give --phi K for a B-series row"
            )
        return stored_config(files[0])
    from .space import load_space

    space_file = folder / "space.yaml"
    if not space_file.is_file():
        raise UsageError(f"{folder} holds no space.yaml: give a run folder written by 'scaling-search run'")
    space = load_space(space_file)
    e = space.extrapolation
    # Nothing of a user's function is imported: its config is the import path and the multipliers.
    base = get_config(family_root(space.baseline.model), resolution=e.base_resolution, num_classes=e.num_classes)
    if phi < 0:
        raise UsageError(f"phi must be a non-negative integer, got {phi}")
    return compound(base, coeffs, phi, e.resolution_multiple).with_(name=_row_name(base, phi))


# ------------------------------------------------------------------ timm


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-9)


def timm_official_name(config: EfficientNetConfig) -> str | None:
    """timm's registered model that builds ``config``'s network, if one does."""
    if config.stages != EfficientNetConfig().stages or config.divisor != 8:
        return None
    if (config.stem_channels, config.head_channels) != (32, 1280):
        return None
    for variant in TIMM_OFFICIAL:
        entry = OFFICIAL[variant]
        if _close(config.width, entry.width) and _close(config.depth, entry.depth):
            return f"efficientnet_{variant}"
    return None


def timm_arch_def(config: EfficientNetConfig) -> list[list[str]]:
    """timm's stage strings with the project's rounded repeats and channels (depth multiplier 1)."""
    net = scale_network(config)
    out = []
    for s in net.stages:
        kind = "ds" if s.expand == 1 else "ir"  # no expansion conv: timm's DepthwiseSeparableConv
        out.append([f"{kind}_r{s.repeats}_k{s.kernel}_s{s.stride}_e{s.expand}_c{s.out_channels}_se{SE_RATIO:g}"])
    return out


def _require_classifier(config: Any) -> EfficientNetConfig:
    if isinstance(config, EfficientDetConfig):
        raise UsageError(
            "--format timm exports EfficientNet classifiers; for EfficientDet use --format json "
            "(its backbone converts with the EfficientNet names, the BiFPN and heads have no timm counterpart)"
        )
    if not isinstance(config, EfficientNetConfig):
        raise UsageError(f"--format timm exports EfficientNet classifiers; for {config.name} use --format json")
    return config


def timm_description(config: EfficientNetConfig) -> dict[str, Any]:
    """What timm needs to build ``config``'s network, with a ready Python snippet."""
    config = _require_classifier(config)
    net = scale_network(config)
    kwargs = {
        "num_classes": config.num_classes,
        "drop_rate": config.dropout,
        "drop_path_rate": config.drop_path,
    }
    official = timm_official_name(config)
    return {
        "format": TIMM_FORMAT,
        "name": config.name,
        "timm_model": official,
        "create_model_kwargs": {**kwargs, "bn_eps": BN_EPS, "bn_momentum": BN_MOMENTUM} if official else None,
        "builder": "timm.models.efficientnet.EfficientNet",
        "builder_kwargs": {
            "arch_def": timm_arch_def(config),
            "depth_multiplier": 1.0,
            "stem_size": net.stem_channels,
            "fix_stem": True,
            "num_features": net.head_channels,
            "act_layer": "silu",
            "bn_eps": BN_EPS,
            "bn_momentum": BN_MOMENTUM,
            **kwargs,
        },
        "channel_multiplier": config.width,
        "depth_multiplier": config.depth,
        "input_size": [3, config.resolution, config.resolution],
        "state_dict_names": "scaling_search.models.timm_names.to_timm / from_timm",
        "config": config_to_dict(config),
        "snippet": timm_snippet(config),
    }


def timm_snippet(config: EfficientNetConfig) -> str:
    """Python that builds the network with timm (``model``), optionally loading project weights."""
    config = _require_classifier(config)
    net = scale_network(config)
    stages = ",\n".join(f"        {s!r}" for s in timm_arch_def(config))
    official = timm_official_name(config)
    lines = [
        f"# {config.name}: width {config.width:g}, depth {config.depth:g}, {config.resolution} px input",
        "from functools import partial",
        "",
        "from torch import nn",
        "from timm.models.efficientnet import EfficientNet",
        "from timm.models._efficientnet_builder import decode_arch_def",
        "",
        "",
        f"def build_model(num_classes: int = {config.num_classes}, **kwargs) -> EfficientNet:",
        '    """timm has no public builder for arbitrary width/depth multipliers: the stage',
        '    list below holds the already-scaled block and channel counts, so timm rounds nothing."""',
        "    arch_def = [",
        stages + ",",
        "    ]",
        "    return EfficientNet(",
        "        block_args=decode_arch_def(arch_def, depth_multiplier=1.0),",
        "        num_classes=num_classes,",
        f"        stem_size={net.stem_channels},",
        "        fix_stem=True,",
        f"        num_features={net.head_channels},",
        "        round_chs_fn=lambda channels: channels,",
        "        act_layer=nn.SiLU,",
        f"        norm_layer=partial(nn.BatchNorm2d, eps={BN_EPS!r}, momentum={BN_MOMENTUM!r}),",
        f"        drop_rate={config.dropout!r},",
        f"        drop_path_rate={config.drop_path!r},",
        "        **kwargs,",
        "    )",
        "",
        "",
        "model = build_model()",
    ]
    if official:
        lines += [
            f"# The same network, by name: timm.create_model({official!r}, num_classes={config.num_classes}, "
            f"bn_eps={BN_EPS!r}, bn_momentum={BN_MOMENTUM!r}, drop_rate={config.dropout!r}, "
            f"drop_path_rate={config.drop_path!r})",
        ]
    lines += [
        "# Project weights (safetensors from 'scaling-search run --keep-weights'):",
        "#   from scaling_search.weights import load_weights",
        "#   from scaling_search.models.timm_names import to_timm",
        "#   kept = load_weights('weights/FILE.safetensors')",
        "#   model.load_state_dict(to_timm(kept.state_dict, kept.config), strict=True)",
    ]
    return "\n".join(lines) + "\n"


def export_text(config: Any, fmt: str) -> str:
    """The text ``scaling-search export --format FMT`` writes."""
    if fmt == "json":
        return json.dumps(config_to_dict(config), indent=2) + "\n"
    if fmt == "timm":
        return json.dumps(timm_description(config), indent=2) + "\n"
    raise UsageError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
