"""Does the short proxy recipe judge depth fairly? Strategies at equal real cost, with and without
residual blocks that start as the identity (``proxy.zero_init_residual``).

On Imagenette (stored at 128 px), EfficientNet at width 0.25, depth 0.25 and 64 px (the baseline),
networks that really cost about 4x the baseline's MACs (closed-form count of the rounded network):
resolution only, width only, depth only, the paper's (1.2, 1.1, 1.15) and the cpu preset's
previous winner (1, 1.05, 1.25) at the phi that gives 4x. Each strategy's continuous factor
(or phi) is solved on a fine grid so that the rounded network lands nearest 4x, within 5%.
Every network trains the cpu preset's recipe (3 epochs, SGD lr 0.1, cosine, batch 64) with
``zero_init_residual`` off and on, for each seed.

Results go to ``OUT/results.csv`` (one row per network x init x seed, written after each
training, atomically) and ``OUT/results.md``; a re-run skips the rows already there, so a
stopped measurement resumes. Run it niced beside other work:

    nohup nice -n 10 python3 benchmarks/depth_fair_init.py --out benchmarks/depth_fair_init \\
        --data-dir ../shared/data --train-subset 2500 --test-subset 1000 > /tmp/depth_fair.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import load, machine  # noqa: E402

from scaling_search.atomic import atomic_write_text  # noqa: E402
from scaling_search.models.efficientnet_config import (  # noqa: E402
    EfficientNetConfig,
    analytic_counts,
    compound_config,
    scale_network,
)
from scaling_search.scaling import Coefficients  # noqa: E402
from scaling_search.space import load_space, preset_path  # noqa: E402

BASE = EfficientNetConfig(width=0.25, depth=0.25, resolution=64, num_classes=10)
TARGET = 4.0
TOLERANCE = 0.05
MULTIPLE = 4  # resolutions to multiples of 4, as the cpu preset
FIELDS = (
    "network",
    "init",
    "seed",
    "width",
    "depth",
    "resolution",
    "blocks",
    "residual_blocks",
    "macs_ratio",
    "factor",
    "accuracy",
    "final_loss",
    "wall_seconds",
    "images_per_second",
    "train_images",
    "test_images",
    "load",
    "trained",
)


def _nearest(make: Callable[[float], EfficientNetConfig], lo: float, hi: float, step: float):
    """The grid value whose rounded network's MACs ratio is nearest TARGET, and that network."""
    base = analytic_counts(BASE).macs
    best = None
    for i in range(int(round((hi - lo) / step)) + 1):
        x = lo + i * step
        config = make(x)
        ratio = analytic_counts(config).macs / base
        if best is None or abs(ratio - TARGET) < abs(best[2] - TARGET):
            best = (round(x, 4), config, ratio)
    x, config, ratio = best
    if abs(ratio / TARGET - 1) > TOLERANCE:
        raise SystemExit(f"no grid value reaches {TARGET}x within {TOLERANCE:.0%}: best {ratio:.3f}x at {x}")
    return x, config, ratio


def networks() -> dict[str, tuple[str, EfficientNetConfig, float]]:
    """Name -> (the solved factor, in words; the config; its real MACs ratio)."""

    def compound(coeffs: Coefficients) -> Callable[[float], EfficientNetConfig]:
        return lambda phi: compound_config(coeffs, phi, BASE, MULTIPLE).with_(name="efficientnet")

    out = {"baseline": ("-", BASE, 1.0)}
    x, c, r = _nearest(
        lambda f: BASE.with_(resolution=int(round(BASE.resolution * f / MULTIPLE)) * MULTIPLE), 1, 3, 0.005
    )
    out["resolution only"] = (f"x{x:g} ({c.resolution} px)", c, r)
    x, c, r = _nearest(lambda f: BASE.with_(width=BASE.width * f), 1, 4, 0.005)
    out["width only"] = (f"x{x:g}", c, r)
    x, c, r = _nearest(lambda f: BASE.with_(depth=BASE.depth * f), 1, 12, 0.005)
    out["depth only"] = (f"x{x:g}", c, r)
    x, c, r = _nearest(compound(Coefficients(1.2, 1.1, 1.15)), 0.5, 5, 0.01)
    out["paper (1.2, 1.1, 1.15)"] = (f"phi {x:g}", c, r)
    x, c, r = _nearest(compound(Coefficients(1.0, 1.05, 1.25)), 0.5, 5, 0.01)
    out["cpu winner (1, 1.05, 1.25)"] = (f"phi {x:g}", c, r)
    return out


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["trained"] = r.get("trained") or "yes"  # files written before the column: every row was trained
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def table(rows: list[dict], nets: dict, seeds: list[int]) -> str:
    """Markdown: one line per network, accuracy and final loss per seed and their mean, off and on."""
    lines = [
        "| network | width | depth | px | blocks (residual) | MACs | init | top-1 per seed | mean | final loss "
        "per seed | s per training | img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (factor, config, ratio) in nets.items():
        for init in ("standard", "zero"):
            got = {int(r["seed"]): r for r in rows if r["network"] == name and r["init"] == init}
            if not got:
                continue
            accs = [float(got[s]["accuracy"]) for s in seeds if s in got]
            any_row = next(iter(got.values()))
            same = all(r.get("trained", "yes") != "yes" for r in got.values())
            lines.append(
                f"| {name} ({factor}) | {config.width:.4g} | {config.depth:.4g} | {config.resolution} | "
                f"{any_row['blocks']} ({any_row['residual_blocks']}) | {ratio:.2f}x | "
                f"{init + (' (= standard: no residual block)' if same else '')} | "
                + " / ".join(f"{float(got[s]['accuracy']):.3f}" if s in got else "-" for s in seeds)
                + f" | {statistics.mean(accs):.3f} | "
                + " / ".join(f"{float(got[s]['final_loss']):.2f}" if s in got else "-" for s in seeds)
                + f" | {statistics.mean(float(r['wall_seconds']) for r in got.values()):.0f} | "
                f"{statistics.mean(float(r['images_per_second']) for r in got.values()):.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "depth_fair_init")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--train-subset", type=int, default=None, help="class-balanced training images (default: all)")
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--only", nargs="+", default=None, help="network names to train (default: all)")
    ap.add_argument("--inits", nargs="+", default=["standard", "zero"], choices=("standard", "zero"))
    ap.add_argument("--list", action="store_true", help="print the networks and their real cost, train nothing")
    ap.add_argument(
        "--include",
        type=Path,
        nargs="*",
        default=[],
        help="results.csv files of other runs of this script (e.g. one trained beside this one) to merge in",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument(
        "--warmup-epochs", type=float, default=None, help="another recipe detail: the warmup (default: the preset's)"
    )
    args = ap.parse_args(argv)

    nets = networks()
    for name, (factor, c, ratio) in nets.items():
        net = scale_network(c)
        print(
            f"{name:<28} {factor:<18} width {c.width:.4g} depth {c.depth:.4g} {c.resolution} px "
            f"{net.num_blocks} blocks, {ratio:.3f}x MACs",
            flush=True,
        )
    if args.list:
        return 0

    import torch

    from scaling_search.data.sources import DataSpec, load_dataset
    from scaling_search.models.efficientnet_config import block_specs
    from scaling_search.train.loop import TrialSpec, train_trial
    from scaling_search.train.recipe import Runtime

    torch.set_num_threads(args.threads)
    print(f"machine     {machine()}")
    print(f"before      {load()}", flush=True)
    recipe = load_space(preset_path("cpu")).proxy
    recipe = dataclasses.replace(recipe, train_subset=args.train_subset, test_subset=args.test_subset)
    if args.warmup_epochs is not None:
        recipe = dataclasses.replace(recipe, warmup_epochs=args.warmup_epochs)
    print(f"recipe      {recipe}", flush=True)
    data_spec = DataSpec("imagenette", data_dir=args.data_dir)
    dataset = load_dataset(data_spec)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = args.out / "results.csv", args.out / "results.md"
    rows = read_rows(csv_path)
    for other in args.include:
        rows += [r for r in read_rows(other) if (r["network"], r["init"], r["seed"]) not in
                 {(x["network"], x["init"], x["seed"]) for x in rows}]  # fmt: skip
    if args.include:
        write_rows(csv_path, rows)
        atomic_write_text(md_path, table(rows, nets, args.seeds))
    done = {(r["network"], r["init"], int(r["seed"])) for r in rows}
    # The strategies that decide the question first (depth, then the baseline and the paper's mix), each
    # over every seed and both inits, so a measurement cut short still answers the question.
    priority = ("depth only", "baseline", "paper (1.2, 1.1, 1.15)", "width only", "cpu winner (1, 1.05, 1.25)")
    wanted = sorted(
        (n for n in nets if args.only is None or n in args.only),
        key=lambda n: priority.index(n) if n in priority else len(priority),
    )
    for name in wanted:
        for seed in args.seeds:
            for init in args.inits:
                if (name, init, seed) in done:
                    continue
                factor, config, ratio = nets[name]
                blocks = [b for stage in block_specs(config) for b in stage]
                standard = next(
                    (x for x in rows if (x["network"], x["init"], int(x["seed"])) == (name, "standard", seed)), None
                )
                if init == "zero" and not any(b.residual for b in blocks) and standard is not None:
                    # No residual block: the init changes no weight (tests/test_residual_init.py), so the
                    # training is the standard one, bit for bit (width only shows it: trained both ways).
                    rows.append({**standard, "init": "zero", "trained": "no: no residual block, = standard"})
                    write_rows(csv_path, rows)
                    atomic_write_text(md_path, table(rows, nets, args.seeds))
                    print(f"{name} / zero / seed {seed}: no residual block, the standard run's result", flush=True)
                    continue
                r = dataclasses.replace(recipe, zero_init_residual=init == "zero")
                started = time.strftime("%H:%M:%S")

                def epoch(i: int, loss: float, acc: float, name=name, init=init, seed=seed) -> None:
                    print(f"  {name} / {init} / seed {seed}: epoch {i + 1} loss {loss:.3f} top-1 {acc:.3f}", flush=True)

                spec = TrialSpec(config, data_spec, r, seed)
                result = train_trial(spec, Runtime(device="cpu"), dataset=dataset, on_epoch=epoch)
                row = {
                    "network": name,
                    "init": init,
                    "seed": seed,
                    "width": round(config.width, 6),
                    "depth": round(config.depth, 6),
                    "resolution": config.resolution,
                    "blocks": len(blocks),
                    "residual_blocks": sum(b.residual for b in blocks),
                    "macs_ratio": round(ratio, 4),
                    "factor": factor,
                    "accuracy": result.accuracy,
                    "final_loss": round(result.epoch_losses[-1], 4),
                    "wall_seconds": round(result.wall_seconds, 1),
                    "images_per_second": round(result.images_per_second, 1),
                    "train_images": result.train_images,
                    "test_images": result.test_images,
                    "load": round(os.getloadavg()[1], 2),
                    "trained": "yes",
                }
                rows.append(row)
                write_rows(csv_path, rows)
                atomic_write_text(md_path, table(rows, nets, args.seeds))
                print(
                    f"{started} {name} / {init} / seed {seed}: top-1 {result.accuracy:.4f}, loss "
                    f"{result.epoch_losses[-1]:.3f}, {result.wall_seconds:.0f} s, {result.images_per_second:.0f} img/s "
                    f"({load()})",
                    flush=True,
                )
    print(f"after       {load()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
