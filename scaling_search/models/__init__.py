"""Model factory: registry of families, EfficientNet (and detectors built on it)."""

from .efficientnet_config import EfficientNetConfig, analytic_counts, official_config, round_filters, round_repeats, scale_network
from .registry import build, families, get_config, model_names

__all__ = [
    "EfficientNetConfig",
    "analytic_counts",
    "build",
    "families",
    "get_config",
    "model_names",
    "official_config",
    "round_filters",
    "round_repeats",
    "scale_network",
]
