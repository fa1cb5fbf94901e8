"""Model factory: registry of families, EfficientNet (and detectors built on it)."""

from .efficientdet_config import EfficientDetConfig, bifpn_nodes
from .efficientnet_config import (
    EfficientNetConfig,
    analytic_counts,
    effective_multipliers,
    official_config,
    round_filters,
    round_repeats,
    scale_network,
)
from .registry import build, config_from_dict, config_to_dict, families, get_config, load_config, model_names

__all__ = [
    "EfficientDetConfig",
    "EfficientNetConfig",
    "analytic_counts",
    "effective_multipliers",
    "bifpn_nodes",
    "build",
    "config_from_dict",
    "config_to_dict",
    "families",
    "get_config",
    "load_config",
    "model_names",
    "official_config",
    "round_filters",
    "round_repeats",
    "scale_network",
]
