"""Params, conv + linear MACs and fvcore totals of EfficientDet D0-D7, timed.

Compares each measurement with the published figures of the reference
implementation (effdet ``tf_efficientdet_d*``, 90 classes) and prints how long
each count took, under the protocol of benchmarks/protocol.py (one warm-up on
d0, then ``--repeats`` rounds per model, meta and fvcore in rotating order,
best / min / max). fvcore runs the network for real (TorchScript trace on CPU
tensors), so D4-D7 take minutes on a small CPU; the meta-device count does no
compute at all. Goals: meta d7 < 60 s; fvcore within 1.5% of the published
GMACs; params exact.

    python benchmarks/efficientdet_counts.py            # d0..d7
    python benchmarks/efficientdet_counts.py d0 d3 --no-fvcore --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import protocol  # noqa: E402

from scaling_search.flops import count, count_fvcore  # noqa: E402
from scaling_search.models import get_config  # noqa: E402

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


def measure(variant: str, fvcore: bool, repeats: int) -> dict:
    config = get_config(f"efficientdet-{variant}")
    counted = count(config)
    row = {
        "model": f"efficientdet-{variant}",
        "resolution": counted.resolution,
        "params": counted.params,
        "params_published": PUBLISHED[variant][0],
        "macs": counted.macs,
    }
    paths = {"meta": protocol.timed(lambda: count(config))}
    if fvcore:
        fv = count_fvcore(config)
        row["macs_fvcore"] = fv.total
        row["macs_fvcore_published"] = int(PUBLISHED[variant][1] * 1e9)
        row["macs_fvcore_error"] = round(fv.total / 1e9 / PUBLISHED[variant][1] - 1, 5)
        paths["fvcore"] = protocol.timed(lambda: count_fvcore(config))
    # The counts above ran each path once already: that is the warm-up of this model.
    timings = protocol.interleave(paths, repeats, warmup=0, progress=False)
    for name, series in timings.items():
        row[f"{name}_seconds"] = round(series.best, 2)
        row[f"{name}_seconds_range"] = [round(min(series.values), 2), round(max(series.values), 2)]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="dN", help="d0..d7 (default all)")
    parser.add_argument("--no-fvcore", action="store_true", help="meta-device counts only")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds per model (fvcore d7: ~1 min each)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.variants = args.variants or list(PUBLISHED)
    unknown = [v for v in args.variants if v not in PUBLISHED]
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {', '.join(PUBLISHED)}")

    if not args.json:
        protocol.header("EfficientDet params and MACs against the published figures")
    rows = []
    for variant in args.variants:
        row = measure(variant, not args.no_fvcore, args.repeats)
        rows.append(row)
        if not args.json:
            line = (
                f"{row['model']:<16} {row['resolution']:>5} px  params {row['params']:>11,} "
                f"({'exact' if row['params'] == row['params_published'] else 'DIFFERS'})  "
                f"MACs {row['macs'] / 1e9:8.3f} G in {row['meta_seconds']:5.2f} s {row['meta_seconds_range']}"
            )
            if "macs_fvcore" in row:
                line += (
                    f"  fvcore {row['macs_fvcore'] / 1e9:8.3f} G vs {PUBLISHED[variant][1]:.3f} "
                    f"({row['macs_fvcore_error'] * 100:+.2f}%) in {row['fvcore_seconds']:6.1f} s "
                    f"{row['fvcore_seconds_range']}"
                )
            print(line, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    verdicts = [
        protocol.Verdict(
            f"params of {len(rows)} models equal to the published",
            "exact",
            all(r["params"] == r["params_published"] for r in rows),
        ),
        protocol.Verdict(
            f"slowest meta count {max(r['meta_seconds'] for r in rows):.2f} s",
            "< 60 s",
            max(r["meta_seconds"] for r in rows) < 60,
        ),
    ]
    if not args.no_fvcore:
        worst = max(abs(r["macs_fvcore_error"]) for r in rows)
        verdicts.append(
            protocol.Verdict(f"fvcore GMACs off by at most {100 * worst:.2f}%", "within 1.5%", worst <= 0.015)
        )
    for v in verdicts:
        print(v.line())
    protocol.footer()


if __name__ == "__main__":
    main()
