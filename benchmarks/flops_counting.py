"""Counting b0-b7 at their resolutions: ``count`` (closed form), the meta-device counter, fvcore.

Each path counts all eight models; the protocol (benchmarks/protocol.py) warms
every path up, runs ``--repeats`` interleaved rounds and keeps each path's
best. Before timing, the three paths are checked to agree on every model.
Goals: ``count`` >= 5x faster than fvcore, and b0-b7 counted in < 30 s.

    python benchmarks/flops_counting.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import protocol  # noqa: E402

from scaling_search.flops import count, count_fvcore, count_meta  # noqa: E402
from scaling_search.models import get_config  # noqa: E402

VARIANTS = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    configs = [get_config(f"efficientnet-{v}") for v in VARIANTS]

    protocol.header("counting params and MACs of efficientnet-b0..b7 at their official resolutions")
    print(f"{'model':<8}{'res':>5}{'params':>13}{'MACs G':>9}{'fvcore G':>10}  agreement")
    for v, config in zip(VARIANTS, configs):
        closed, meta, fv = count(config), count_meta(config), count_fvcore(config)
        same = (closed.params, closed.macs) == (meta.params, meta.macs) and fv.conv_linear == closed.macs
        print(
            f"{v:<8}{config.resolution:>5}{closed.params:>13,}{closed.macs / 1e9:>9.3f}{fv.total / 1e9:>10.3f}  "
            f"{'count == meta == fvcore conv+linear' if same else 'DISAGREE'}"
        )
        if not same:
            sys.exit(f"{v}: the counting paths disagree; timings would compare different work")

    def each(fn):
        return protocol.timed(lambda: [fn(c) for c in configs])

    series = protocol.interleave(
        {"count (closed form)": each(count), "meta-device counter": each(count_meta), "fvcore": each(count_fvcore)},
        args.repeats,
    )
    fast, meta, fv = series.values()
    protocol.report(
        series,
        [
            protocol.ratio(fast, fv, 5, "count vs fvcore, b0-b7"),
            protocol.limit(fast, 30, "count, b0-b7"),
            protocol.ratio(meta, fv, 5, "meta-device counter vs fvcore, b0-b7 (where no closed form exists)"),
            protocol.limit(meta, 30, "meta-device counter, b0-b7"),
        ],
    )
    protocol.footer()


if __name__ == "__main__":
    main()
