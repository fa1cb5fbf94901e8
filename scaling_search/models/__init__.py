"""Model factory: registry of families (EfficientNet and the detectors built on it, MobileNetV2, ResNet, a
user's function) and the one interface the search and the tables scale them through (``family.py``)."""

from .efficientdet_config import EfficientDetConfig, bifpn_nodes
from .efficientnet_config import (
    BN_EPS,
    BN_MOMENTUM,
    OFFICIAL,
    SE_RATIO,
    EfficientNetConfig,
    analytic_counts,
    effective_multipliers,
    official_config,
    round_filters,
    round_repeats,
    scale_network,
)
from .family import Counts, ScalableFamily, compound, family_of, measured_ratio, network_key, scalable_of
from .mobilenetv2_config import MobileNetV2Config
from .plugin import FunctionConfig, is_target, register_function
from .registry import (
    build,
    config_from_dict,
    config_to_dict,
    families,
    family_root,
    get_config,
    load_config,
    model_names,
    scalable_names,
)
from .resnet_config import ResNetConfig

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "OFFICIAL",
    "SE_RATIO",
    "Counts",
    "EfficientDetConfig",
    "EfficientNetConfig",
    "FunctionConfig",
    "MobileNetV2Config",
    "ResNetConfig",
    "ScalableFamily",
    "analytic_counts",
    "effective_multipliers",
    "bifpn_nodes",
    "build",
    "compound",
    "config_from_dict",
    "config_to_dict",
    "families",
    "family_of",
    "family_root",
    "get_config",
    "is_target",
    "load_config",
    "measured_ratio",
    "model_names",
    "network_key",
    "official_config",
    "register_function",
    "round_filters",
    "round_repeats",
    "scalable_names",
    "scalable_of",
    "scale_network",
]
