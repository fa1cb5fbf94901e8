"""Params, conv + linear MACs and fvcore totals of EfficientDet D0-D7, timed.

Compares each measurement with the published figures of the reference
implementation (effdet ``tf_efficientdet_d*``, 90 classes) and prints how long
each count took. fvcore runs the network for real (TorchScript trace on CPU
tensors), so D4-D7 take minutes on a small CPU; the meta-device count does no
compute at all.

    PYTHONPATH=. python benchmarks/efficientdet_counts.py            # d0..d7
    PYTHONPATH=. python benchmarks/efficientdet_counts.py d0 d3 --no-fvcore
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from scaling_search.flops import count, count_fvcore
from scaling_search.models import get_config

# Published reference: exact trainable params and fvcore GMACs at the official resolution.
PUBLISHED = {
    "d0": (3_880_067, 2.571),
    "d1": (6_625_898, 6.176),
    "d2": (8_097_039, 11.105),
    "d3": (12_032_296, 25.087),
    "d4": (20_723_675, 55.501),
    "d5": (33_653_315, 136.076),
    "d6": (51_871_782, 226.728),
    "d7": (51_871_782, 326.485),
}


def measure(variant: str, fvcore: bool) -> dict:
    config = get_config(f"efficientdet-{variant}")
    start = time.perf_counter()
    counted = count(config)
    row = {
        "model": f"efficientdet-{variant}",
        "resolution": counted.resolution,
        "params": counted.params,
        "params_published": PUBLISHED[variant][0],
        "macs": counted.macs,
        "meta_seconds": round(time.perf_counter() - start, 2),
    }
    if fvcore:
        start = time.perf_counter()
        fv = count_fvcore(config)
        row["fvcore_seconds"] = round(time.perf_counter() - start, 2)
        row["macs_fvcore"] = fv.total
        row["macs_fvcore_published"] = int(PUBLISHED[variant][1] * 1e9)
        row["macs_fvcore_error"] = round(fv.total / 1e9 / PUBLISHED[variant][1] - 1, 5)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="dN", help="d0..d7 (default all)")
    parser.add_argument("--no-fvcore", action="store_true", help="meta-device counts only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.variants = args.variants or list(PUBLISHED)
    unknown = [v for v in args.variants if v not in PUBLISHED]
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {', '.join(PUBLISHED)}")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for variant in args.variants:
        row = measure(variant, not args.no_fvcore)
        rows.append(row)
        if not args.json:
            line = (
                f"{row['model']:<16} {row['resolution']:>5} px  params {row['params']:>11,} "
                f"({'exact' if row['params'] == row['params_published'] else 'DIFFERS'})  "
                f"MACs {row['macs'] / 1e9:8.3f} G in {row['meta_seconds']:5.2f} s"
            )
            if "macs_fvcore" in row:
                line += (
                    f"  fvcore {row['macs_fvcore'] / 1e9:8.3f} G vs {PUBLISHED[variant][1]:.3f} "
                    f"({row['macs_fvcore_error'] * 100:+.2f}%) in {row['fvcore_seconds']:6.1f} s"
                )
            print(line, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
