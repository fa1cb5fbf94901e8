"""Counting b0-b7 at their resolutions: meta-device FlopCounterMode vs fvcore.

Same process, same models. Prints per-model times and the ratio
(fvcore seconds / meta seconds). Goal: >= 5x, and the whole meta count < 30 s.

    python benchmarks/flops_counting.py
"""

from __future__ import annotations

import platform
import time
import warnings

import torch

from scaling_search.flops import count, count_fvcore
from scaling_search.models import get_config

VARIANTS = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"]


def main() -> None:
    warnings.filterwarnings("ignore")
    count(get_config("efficientnet-b0"))  # first-use imports, not part of either path
    meta_total = fv_total = 0.0
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}"
    )
    print(f"{'model':<8}{'res':>5}{'meta s':>9}{'fvcore s':>10}{'MACs G':>9}{'fvcore G':>10}")
    for v in VARIANTS:
        config = get_config(f"efficientnet-{v}")
        t = time.perf_counter()
        c = count(config)
        meta = time.perf_counter() - t
        t = time.perf_counter()
        f = count_fvcore(config)
        fv = time.perf_counter() - t
        assert f.conv_linear == c.macs
        meta_total += meta
        fv_total += fv
        print(f"{v:<8}{config.resolution:>5}{meta:>9.2f}{fv:>10.2f}{c.macs / 1e9:>9.3f}{f.total / 1e9:>10.3f}")
    print(
        f"total: meta {meta_total:.2f} s, fvcore {fv_total:.2f} s; meta is {fv_total / meta_total:.1f}x faster "
        "(goal >= 5x, meta < 30 s)"
    )


if __name__ == "__main__":
    main()
