"""Command line: parse, call, print. Every bad input ends in one line and exit 2."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .errors import MachineError, UsageError
from .version import __version__

PROG = "scaling-search"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        if message.endswith("expected one argument"):  # argparse took a value such as "-2x" for an option
            message += ": write values that start with '-' as --option=VALUE"
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------- value types


def _number(
    name: str,
    convert: Callable[[str], float],
    ok: Callable[[float], bool],
    kind: str,
    below: Callable[[str], str] | None = None,
) -> Callable[[str], float]:
    """An argparse type: ``convert`` the text, then require ``ok``; ``below`` words an out-of-range message."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {text!r}") from None
        if not ok(value):
            message = below(text) if below else f"{name} must be {kind}, got {text!r}"
            raise argparse.ArgumentTypeError(message)
        return value

    parse.__name__ = name
    return parse


def _positive_int(name: str):
    return _number(name, int, lambda v: v > 0, "a positive integer")


def _non_negative_int(name: str):
    return _number(name, int, lambda v: v >= 0, "a non-negative integer")


def _positive_float(name: str):
    return _number(
        name,
        float,
        lambda v: math.isfinite(v) and v > 0,
        "a number",
        lambda text: f"{name} must be a positive number, got {text!r}",
    )


def _non_negative_float(name: str):
    return _number(
        name,
        float,
        lambda v: math.isfinite(v) and v >= 0,
        "a number",
        lambda text: f"{name} must be a non-negative number of seconds, got {text!r}",
    )


def _coefficient(name: str):
    return _number(
        name,
        float,
        lambda v: math.isfinite(v) and v >= 1,
        "a number >= 1",
        lambda text: f"{name} = {text} is below 1: compound scaling only grows a network (use values >= 1)",
    )


def _check_output(output: str | None, option: str = "--output") -> None:
    """Before the (possibly long) computation whose result goes there."""
    if output:
        path = Path(output)
        if path.is_dir():
            raise UsageError(f"{option} {output} is a folder: give a file path")
        if not path.parent.exists():
            raise UsageError(f"{option} folder {path.parent} does not exist: create it first")


def _emit(text: str, output: str | None, option: str = "--output") -> None:
    if output:
        from .atomic import atomic_write_text

        _check_output(output, option)
        atomic_write_text(Path(output), text)
    else:
        sys.stdout.write(text)


# ------------------------------------------------------------------- flops


def _add_model_options(p: argparse.ArgumentParser) -> None:
    for name in ("width", "depth"):
        p.add_argument(
            f"--{name}",
            type=_positive_float(name),
            help=f"{name} multiplier (with NAME efficientnet, mobilenetv2, resnet18/34/50 or a function)",
        )
    p.add_argument(
        "--resolution", type=_positive_int("resolution"), help="input size in pixels (default: the model's own)"
    )
    p.add_argument(
        "--num-classes",
        type=_positive_int("num-classes"),
        help="classes (default: 1000 for efficientnet, 90 for efficientdet)",
    )
    p.add_argument("--phi", type=_non_negative_int("phi"), help="scaling step (with NAME 'efficientdet')")
    for name, what in (("alpha", "depth"), ("beta", "width"), ("gamma", "resolution")):
        p.add_argument(
            f"--{name}",
            type=_coefficient(name),
            help=f"backbone {what} coefficient (with NAME 'efficientdet'; default the paper's)",
        )


def _model_config(args: argparse.Namespace):
    from .models import get_config

    options = {
        k: getattr(args, k, None)
        for k in ("width", "depth", "resolution", "num_classes", "phi", "alpha", "beta", "gamma")
    }
    return get_config(args.model, **{k: v for k, v in options.items() if v is not None})


def _cmd_flops(args: argparse.Namespace) -> int:
    from .flops import count, count_fvcore
    from .models import family_of, scalable_of

    config = _model_config(args)
    if scalable_of(config) is not None:
        family_of(config).check(config)  # a user's function that does not build, run or grow: one line
    counted = count(config, breakdown=args.breakdown)
    if args.model == "efficientnet" or {args.width, args.depth} != {None}:
        model = f"{config.name}(w={config.width:g},d={config.depth:g})"
    else:
        model = config.name  # the official name, or the formula with its phi and coefficients
    result = {
        "model": model,
        "resolution": counted.resolution,
        "params": counted.params,
        "macs": counted.macs,
        "macs_fvcore": None,
    }
    if not args.no_fvcore:
        fv = count_fvcore(config)
        result["macs_fvcore"] = fv.total
        result["fvcore_conv_linear"] = fv.conv_linear
        result["fvcore_elementwise"] = fv.elementwise
        result["fvcore_by_operator"] = fv.by_operator
    if args.breakdown:
        result["per_module_macs"] = counted.per_module
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} at {result['resolution']} px")
    print(f"  params       {result['params']:>16,}")
    print(
        f"  MACs         {result['macs']:>16,}  ({result['macs'] / 1e9:.3f} G; conv + linear multiply-adds, the "
        "paper's FLOPs)"
    )
    if result["macs_fvcore"] is not None:
        print(
            f"  fvcore       {result['macs_fvcore']:>16,}  ({result['macs_fvcore'] / 1e9:.3f} G; adds BN, pooling, "
            "upsampling)"
        )
        print(f"  elementwise  {result['fvcore_elementwise']:>16,}  (SiLU, sigmoid, mul, add: not in either total)")
    if args.breakdown:
        print("  per module (MACs):")
        for name, macs in counted.per_module.items():
            print(f"    {name:<40} {macs:>16,}")
    return 0


# -------------------------------------------------------------- candidates


def _add_grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budget", default="2x", help="FLOPs multiplier of one scaling step (default 2x, the paper's phi = 1)"
    )
    p.add_argument(
        "--grid",
        choices=("full", "derived"),
        default="full",
        help="full step grid, or alpha/beta on the grid with gamma derived (default full)",
    )
    p.add_argument("--step", type=float, default=None, help="grid step (default 0.05 full, 0.1 derived)")
    p.add_argument("--tolerance", type=float, default=0.05, help="relative tolerance around the budget (default 0.05)")
    p.add_argument(
        "--constraint",
        choices=("theoretical", "measured"),
        default="theoretical",
        help="alpha*beta^2*gamma^2 (paper) or MACs of the rounded network",
    )
    p.add_argument("--max-alpha", type=_coefficient("max-alpha"), default=2.0)
    p.add_argument("--max-beta", type=_coefficient("max-beta"), default=2.0)
    p.add_argument("--max-gamma", type=_coefficient("max-gamma"), default=2.0)
    p.add_argument(
        "--base-resolution",
        type=_positive_int("base-resolution"),
        default=224,
        help="baseline input size (default 224)",
    )
    p.add_argument(
        "--multiple",
        type=_positive_int("multiple"),
        default=8,
        help="round scaled resolutions to this multiple (default 8)",
    )
    _add_family_option(p)


_MODEL_HELP = (
    "the baseline: efficientnet-b0 (default), mobilenetv2, resnet18, resnet34, resnet50, or your function "
    "'package.module:build' / 'path/file.py:build' (build(width, depth, num_classes) -> nn.Module)"
)


def _add_family_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME", help=_MODEL_HELP)


def _baseline(model: str | None, resolution: int, num_classes: int | None = None):
    """The scaled family's network at width 1, depth 1 (EfficientNet B0 without ``model``)."""
    from .models import EfficientNetConfig, family_root, get_config, scalable_of

    options = {"resolution": resolution} | ({} if num_classes is None else {"num_classes": num_classes})
    if model is None:
        return EfficientNetConfig(**options)
    config = get_config(family_root(model), **options)
    if scalable_of(config) is None:
        raise UsageError(f"--model {model} is not a network family that scales: give a classifier")
    return config


def grid_candidates(args: argparse.Namespace):
    """The same plan a search builds, and its baseline network: from a space (--space/--preset) or from the
    grid options (and --model)."""
    from .search.plan import baseline_config, build_plan, space_plan
    from .space import GridSpec, load_space, preset_path

    if args.space or args.preset:
        if args.model is not None:
            raise UsageError("--model does not go with --space/--preset: the space names its baseline.model")
        space = load_space(args.space or preset_path(args.preset))
        plan = space_plan(space)
        return plan, baseline_config(space, 10)
    grid = GridSpec(args.grid, args.step, args.max_alpha, args.max_beta, args.max_gamma)
    base = _baseline(args.model, args.base_resolution)
    plan = build_plan(
        args.budget, base, multiple=args.multiple, grid=grid, tolerance=args.tolerance, constraint=args.constraint
    )
    return plan, base


def _cmd_candidates(args: argparse.Namespace) -> int:
    plan, base = grid_candidates(args)
    rows = plan.rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from .analysis.tables import COEFFICIENT_COLUMNS, Column, ratio, to_markdown

    columns = [
        *COEFFICIENT_COLUMNS,
        Column("theoretical_ratio", "a*b^2*g^2", ratio),
        Column("measured_ratio", "measured MACs ratio", ratio),
        Column("class", "network", str),
        Column("paper", "paper", lambda v: "<- paper" if v else ""),
    ]
    print(to_markdown(rows, columns), end="")
    off = " (the paper's triple is off the budget, listed as a reference)" if plan.paper_class.reference else ""
    print(
        f"\n{len(rows)} candidates for a {plan.budget:g}x budget in {len(plan.classes)} distinct networks, each "
        f"trained once ({plan.constraint} constraint, tolerance {plan.tolerance:g}){off}; measured ratios are MACs "
        f"of the rounded phi = 1 network over the baseline at {plan.base_resolution} px."
    )
    from .search.coarseness import coarseness

    coarse = coarseness(plan, base)
    if coarse is not None:
        print("\n".join(["", *coarse.lines(), *coarse.warnings()]))
    return 0


# ------------------------------------------------------------------- table


def _add_table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=_coefficient("alpha"), required=True, help="depth coefficient (>= 1)")
    p.add_argument("--beta", type=_coefficient("beta"), required=True, help="width coefficient (>= 1)")
    p.add_argument("--gamma", type=_coefficient("gamma"), required=True, help="resolution coefficient (>= 1)")
    p.add_argument(
        "--family",
        choices=("efficientnet", "efficientdet"),
        default="efficientnet",
        help="B-series (default) or D-series",
    )
    p.add_argument(
        "--fvcore", action="store_true", help="efficientdet: add fvcore totals (real compute, minutes at D5-D7)"
    )
    p.add_argument("--format", choices=("md", "csv", "json", "latex"), default="md")
    p.add_argument("--max-phi", type=_positive_int("max-phi"), default=7)
    p.add_argument("--budget", default="2x", help="target FLOPs growth per phi step (default 2x)")
    p.add_argument("--base-resolution", type=_positive_int("base-resolution"), default=224)
    p.add_argument("--multiple", type=_positive_int("multiple"), default=8)
    p.add_argument(
        "--num-classes", type=_positive_int("num-classes"), help="default 1000 (efficientnet), 90 (efficientdet)"
    )
    p.add_argument("--output", help="write to this file (atomically) instead of stdout")
    _add_family_option(p)


def _cmd_table(args: argparse.Namespace) -> int:
    from .scaling import Coefficients, parse_budget

    coeffs = Coefficients(args.alpha, args.beta, args.gamma)
    budget = parse_budget(args.budget)
    _check_output(args.output)
    base = _baseline(args.model, args.base_resolution)
    if args.family == "efficientdet":
        from .analysis.series import d_series_unavailable

        why = d_series_unavailable(base)
        if why:
            raise UsageError(f"--family efficientdet with --model {args.model}: {why}")
        return _d_table(args, coeffs, base)
    if args.fvcore:
        raise UsageError("--fvcore applies to --family efficientdet only")
    from .analysis.series import b_series, b_series_columns, b_series_departures
    from .analysis.tables import render

    num_classes = 1000 if args.num_classes is None else args.num_classes
    rows = b_series(
        coeffs, max_phi=args.max_phi, base=base, multiple=args.multiple, budget=budget, num_classes=num_classes
    )
    columns = b_series_columns(base)
    notes = b_series_departures(coeffs, rows, base)
    triple = f"alpha={coeffs.alpha:g}, beta={coeffs.beta:g}, gamma={coeffs.gamma:g}"
    if args.model is None:
        title = (
            f"EfficientNet B-series from {triple} (alpha*beta^2*gamma^2 = {coeffs.flops_ratio:.3f}); compound rule "
            "vs official, params and MACs measured"
        )
    else:
        title = (
            f"{args.model} series from {triple} (alpha*beta^2*gamma^2 = {coeffs.flops_ratio:.3f}); compound rule "
            f"from {args.model} at width 1, depth 1, {args.base_resolution} px, params and MACs measured"
        )
    meta = {
        "family": "efficientnet" if args.model is None else args.model,
        "alpha": coeffs.alpha,
        "beta": coeffs.beta,
        "gamma": coeffs.gamma,
        "flops_ratio": round(coeffs.flops_ratio, 6),
        "macs": "conv + linear multiply-adds",
    }
    _emit(render(args.format, rows, columns, title=title, notes=notes, meta=meta), args.output)
    return 0


def _d_table(args: argparse.Namespace, coeffs, base) -> int:
    from .analysis.series import d_series, d_series_columns, d_series_departures
    from .analysis.tables import render

    num_classes = 90 if args.num_classes is None else args.num_classes
    rows = d_series(
        coeffs, max_phi=args.max_phi, base=base, multiple=args.multiple, num_classes=num_classes, fvcore=args.fvcore
    )
    notes = d_series_departures(coeffs, rows)
    title = (
        f"EfficientDet D-series from alpha={coeffs.alpha:g}, beta={coeffs.beta:g}, gamma={coeffs.gamma:g}: "
        f"formulas on the compound B-phi vs the official table, {num_classes} classes, params and MACs measured"
    )
    meta = {
        "family": "efficientdet",
        "alpha": coeffs.alpha,
        "beta": coeffs.beta,
        "gamma": coeffs.gamma,
        "num_classes": num_classes,
        "macs": "conv + linear multiply-adds",
        "macs_fvcore": "fvcore total (conv, BN, pooling, upsampling)" if args.fvcore else None,
    }
    _emit(render(args.format, rows, d_series_columns(args.fvcore), title=title, notes=notes, meta=meta), args.output)
    return 0


# --------------------------------------------------------------------- run


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", help="FLOPs multiplier of one scaling step, e.g. 2x (default: the space's)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--space", help="search space YAML file")
    which.add_argument(
        "--preset", help="a shipped search space by name (see search_spaces/); default: picked for this machine"
    )
    p.add_argument("--backend", choices=("optuna", "ray"), default="optuna")
    p.add_argument(
        "--out", help="run folder (default runs/<space>-<budget>); the same command with the same folder resumes"
    )
    p.add_argument(
        "--storage",
        help=(
            "Optuna storage URL shared by several workers, e.g. postgresql://user@host/db "
            "(default: study.db in the run folder; a locked SQLite file is waited for up to 120 s)"
        ),
    )
    p.add_argument("--data-dir", help="where the dataset is (default: the space's, or $SCALING_SEARCH_DATA)")
    p.add_argument(
        "--model",
        metavar="NAME",
        help="the baseline instead of the space's, at width 1 and depth 1 (its resolution, data and recipe kept): "
        + _MODEL_HELP.removeprefix("the baseline: "),
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    _add_runtime_options(p)
    p.add_argument(
        "--seeds", type=_positive_int("seeds"), help="train each candidate with seeds 0..N-1 (default: the space's)"
    )
    p.add_argument("--epochs", type=_positive_int("epochs"), help="proxy epochs per trial (default: the space's)")
    p.add_argument(
        "--heartbeat",
        type=_positive_int("heartbeat"),
        default=10,
        help="seconds between trial heartbeats; a trial silent for 4 is re-queued (default 10)",
    )
    p.add_argument(
        "--storage-retry",
        type=_non_negative_float("storage-retry"),
        default=60.0,
        metavar="SECONDS",
        help=(
            "how long a run waits for a storage server that stops answering (a restart, a failover) before it "
            "stops; 0: not at all (default 60)"
        ),
    )
    p.add_argument(
        "--fidelity",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "once decided, train the decision set, the paper's triple and the best of each leaning again at "
            "fidelity.epochs_factor times the epochs (default: the space's fidelity.enabled); on a finished run "
            "folder, trains only those"
        ),
    )
    p.add_argument("--estimate", action="store_true", help="print the plan and the time estimate, then stop")
    p.add_argument(
        "--keep-weights",
        choices=("best", "all", "none"),
        default="best",
        help="final weights kept in DIR/weights as safetensors: the winner's seeds (default), every trial's, or none",
    )
    p.add_argument("--ray-address", help="join this Ray cluster (with --backend ray; default: start a local one)")
    p.add_argument(
        "--gpus-per-trial", type=float, help="GPUs per Ray trial, fractions allowed (default 1 with a GPU, else 0)"
    )
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per Ray trial (default 1)")
    p.add_argument(
        "--jobs",
        type=_positive_int("jobs"),
        help=(
            "trials at once on this machine, each in its own process on the same study (default: 1 on a CPU; on a "
            "GPU what its free memory and SMs hold, at most 8); with --backend ray, the trials Ray packs at once"
        ),
    )


def _resolve_space(args: argparse.Namespace, console):
    from .space import load_space, preset_path

    if args.space:
        space = load_space(args.space)
    else:
        name = args.preset
        if name is None:
            name, why = preset_for_device(args.device)
            console.print(f"no --space or --preset given: using preset '{name}' ({why})")
        space = load_space(preset_path(name))
    overrides = {
        "constraint": {"budget": args.budget},
        "data": {"data_dir": args.data_dir},
        "proxy": {"epochs": args.epochs},
        "fidelity": {"enabled": args.fidelity},
    }
    space = space.with_overrides(**overrides).with_model(args.model)
    import dataclasses

    if args.seeds:
        space = dataclasses.replace(space, seeds=tuple(range(args.seeds)))
    if args.precision:
        space = dataclasses.replace(space, precision=args.precision)
    return space


def preset_for_device(asked: str) -> tuple[str, str]:
    """The shipped study for the device the user asked for (checked: a missing GPU is a usage error), and why."""
    from .train.devices import resolve_device

    device = resolve_device(asked)
    if device.startswith("cuda"):
        return "imagenette", f"device {device}, a CUDA GPU"
    if asked == "auto":
        return "cpu", "no CUDA GPU found; use --preset imagenette to run the GPU-sized study anyway"
    return "cpu", f"device {device} asked for"


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


# RunOptions fields that take the run command's option of the same name.
_RUN_OPTIONS = (
    "backend",
    "storage",
    "device",
    "memory_format",
    "cudnn_benchmark",
    "heartbeat",
    "storage_retry",
    "ray_address",
    "gpus_per_trial",
    "cpus_per_trial",
    "jobs",
    "keep_weights",
)


def _cmd_run(args: argparse.Namespace) -> int:
    from .scaling import parse_budget
    from .search.runner import RunOptions, run

    console = _console()
    if args.budget is not None:
        parse_budget(args.budget)
    space = _resolve_space(args, console)
    out = Path(args.out) if args.out else Path("runs") / f"{space.name}-{parse_budget(space.constraint.budget):g}x"
    named = {k: getattr(args, k) for k in _RUN_OPTIONS}
    options = RunOptions(out=out, estimate_only=args.estimate, command=_command_line(args.argv), **named)
    return run(space, options, console)


def _command_line(argv: Sequence[str]) -> str:
    """The command as the user can type it again (passwords in URLs hidden)."""
    import shlex

    from .search.optuna_backend import redact

    return shlex.join([PROG, *(redact(a) for a in argv)])


def _cmd_report(args: argparse.Namespace) -> int:
    from .search.runner import rebuild

    return rebuild(Path(args.dir), _console())


# ------------------------------------------------------------------ curves


def _add_curves_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dir",
        metavar="DIR",
        help="a finished run folder (its space, data, recipe, seeds, winner and set); with --space/--preset, the "
        "folder to write into. The curves go to DIR/curves",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--space", help="scale this search space's baseline (no winner or set: no search needed)")
    which.add_argument("--preset", help="a shipped search space by name")
    p.add_argument(
        "--s",
        dest="targets",
        nargs="+",
        type=float,
        metavar="S",
        help="cost multiples over the baseline's real MACs (default 2 4); the baseline (s = 1) always trains",
    )
    p.add_argument(
        "--strategies",
        nargs="+",
        metavar="NAME",
        help="depth width resolution uniform dWr paper winner set, or compound:ALPHA,BETA,GAMMA (default: all that "
        "apply; winner and set need a run folder)",
    )
    p.add_argument(
        "--base-resolution",
        type=_positive_int("base-resolution"),
        help="the baseline's side in px (default: the search's, lowered so that resolution-only scaling to the "
        "largest s stays within the images' native size)",
    )
    p.add_argument(
        "--multiple", type=_positive_int("multiple"), help="round resolutions to this multiple (default: the space's)"
    )
    p.add_argument("--backend", choices=("optuna", "ray"), default="optuna")
    p.add_argument("--storage", help="Optuna storage URL shared by several workers (default: DIR/curves/study.db)")
    p.add_argument("--data-dir", help="where the dataset is (default: the space's, or $SCALING_SEARCH_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    _add_runtime_options(p)
    p.add_argument("--heartbeat", type=_positive_int("heartbeat"), default=10, help="seconds between heartbeats")
    p.add_argument(
        "--storage-retry",
        type=_non_negative_float("storage-retry"),
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a storage server that stops answering (as for run; default 60)",
    )
    p.add_argument("--jobs", type=_positive_int("jobs"), help="trials at once on this machine (as for run)")
    p.add_argument("--ray-address", help="join this Ray cluster (with --backend ray)")
    p.add_argument(
        "--race",
        action="store_true",
        help="race the strategies at each s (the space's racing settings): more seeds where the answer is open; "
        "default: the space's seeds for every network, then one look by the racing rule",
    )
    p.add_argument("--estimate", action="store_true", help="print the networks and the time estimate, then stop")


def _cmd_curves(args: argparse.Namespace) -> int:
    from .search.curves import CURVES_DIR, DEFAULT_TARGETS, build_curve_plan, load_run, run_curves, space_source
    from .search.runner import RunOptions
    from .space import load_space, preset_path

    console = _console()
    folder = Path(args.dir)
    if args.space or args.preset:
        space = load_space(args.space or preset_path(args.preset))
        source = space_source(space.with_overrides(data={"data_dir": args.data_dir}))
    else:
        source = load_run(folder)
        source = replace(source, space=source.space.with_overrides(data={"data_dir": args.data_dir}))
    plan = build_curve_plan(
        source,
        args.targets or DEFAULT_TARGETS,
        args.strategies,
        base_resolution=args.base_resolution,
        multiple=args.multiple,
        race=args.race,
    )
    named = {k: getattr(args, k) for k in _CURVES_OPTIONS}
    options = RunOptions(
        out=folder / CURVES_DIR,
        estimate_only=args.estimate,
        keep_weights="none",
        command=_command_line(args.argv),
        **named,
    )
    return run_curves(plan, options, console)


# RunOptions fields that take the curves command's option of the same name.
_CURVES_OPTIONS = (
    "backend",
    "storage",
    "device",
    "memory_format",
    "cudnn_benchmark",
    "heartbeat",
    "storage_retry",
    "ray_address",
    "jobs",
)


# ------------------------------------------------------------------ export


def _add_export_options(p: argparse.ArgumentParser) -> None:
    for name, what in (("alpha", "depth"), ("beta", "width"), ("gamma", "resolution")):
        p.add_argument(f"--{name}", type=_coefficient(name), help=f"{what} coefficient of a table row (with --phi)")
    p.add_argument("--phi", type=_non_negative_int("phi"), help="the table row (B-phi); with --run, of its winner")
    p.add_argument(
        "--model",
        metavar="NAME",
        help="a named model (efficientnet-b0..b8, efficientdet-d0..d7, mobilenetv2, resnet50, a function "
        "'module:build', ...); with --alpha/--beta/--gamma --phi, the family whose table row to export",
    )
    p.add_argument("--run", metavar="DIR", help="a run folder: its winner (kept weights' network, or B-phi row)")
    p.add_argument("--num-classes", type=_positive_int("num-classes"), help="classifier outputs (not with --run)")
    p.add_argument(
        "--format", choices=("timm", "json"), default="json", help="timm: what timm needs; json: the project config"
    )
    p.add_argument("--out", metavar="FILE", help="write here (atomically) instead of stdout")


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_text, run_config, table_row_config
    from .scaling import Coefficients

    triple = [args.alpha, args.beta, args.gamma]
    row = any(v is not None for v in triple)
    sources = [
        name
        for name, given in (
            ("--alpha/--beta/--gamma", row),
            ("--model", args.model is not None and not row),
            ("--run", args.run is not None),
        )
        if given
    ]
    if len(sources) != 1:
        raise UsageError(
            "export needs exactly one of --alpha A --beta B --gamma G --phi K, --model NAME or --run DIR"
            + (f" (got {' and '.join(sources)})" if sources else "")
        )
    _check_output(args.out, "--out")
    if args.run is not None:
        if args.num_classes is not None:
            raise UsageError("--num-classes does not go with --run: the run folder fixes the classes")
        config = run_config(args.run, args.phi)
    elif args.model is not None and not row:
        if args.phi is not None and not args.model.startswith("efficientdet"):
            raise UsageError(f"--phi does not go with --model {args.model}: use --alpha/--beta/--gamma --phi K")
        config = _model_config(argparse.Namespace(model=args.model, num_classes=args.num_classes, phi=args.phi))
    else:
        if None in triple or args.phi is None:
            raise UsageError("a table row needs all of --alpha, --beta, --gamma and --phi")
        config = table_row_config(
            Coefficients(*triple), args.phi, num_classes=args.num_classes or 1000, model=args.model
        )
    _emit(export_text(config, args.format), args.out, "--out")
    if args.out:
        print(f"{config.name}: {args.format} export written to {args.out}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------- train


def _add_rows(p: argparse.ArgumentParser, rows) -> None:
    """Options declared by a table, one (flag, value type or None, help) a row; the rest stand beside it."""
    for flag, kind, text in rows:
        p.add_argument(flag, type=kind, help=text)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="cifar10",
        help=(
            "cifar10, imagenette (Imagenette2 at 128 px: imagenette2-128.tar.gz or its extracted folder) or "
            "imagefolder:PATH (train/ and test/ class folders, or an archive of them)"
        ),
    )
    p.add_argument("--data-dir", help="where the data is (default: $SCALING_SEARCH_DATA)")
    p.add_argument(
        "--download",
        action="store_true",
        help="download CIFAR-10 (checksum-verified) into the cache if it is not found",
    )
    p.add_argument(
        "--storage-size",
        type=_positive_int("storage-size"),
        help="side of the stored square images in pixels (default: the dataset's native size, 32 for cifar10 and "
        "imagefolder, 128 for imagenette)",
    )
    _add_family_option(p)
    p.add_argument("--width", type=_positive_float("width"), default=1.0, help="width multiplier (default 1.0)")
    p.add_argument("--depth", type=_positive_float("depth"), default=1.0, help="depth multiplier (default 1.0)")
    p.add_argument(
        "--resolution",
        type=_positive_int("resolution"),
        help="training and evaluation size in pixels (default: the storage size)",
    )
    _add_rows(
        p,
        (
            ("--dropout", float, "classifier dropout (default 0.2)"),
            ("--drop-path", float, "stochastic depth rate (default 0.2)"),
            ("--epochs", _positive_int("epochs"), "epochs (default 5)"),
            ("--subset", _positive_int("subset"), "train on a class-balanced subset of this many images"),
            (
                "--test-subset",
                _positive_int("test-subset"),
                "score on a class-balanced subset of this many held-out images",
            ),
            ("--batch-size", _positive_int("batch-size"), "batch size (default 128)"),
            ("--lr", _positive_float("lr"), "peak learning rate"),
            ("--optimizer", None, "sgd (Nesterov), adamw or rmsprop"),
            ("--momentum", float, "momentum (default 0.9)"),
            ("--weight-decay", float, "weight decay of conv and linear weights"),
            ("--schedule", None, "cosine, constant or step, after the warmup"),
        ),
    )
    p.add_argument("--warmup", type=float, dest="warmup_epochs", help="warmup length in epochs")
    p.add_argument(
        "--zero-init-residual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="every residual block starts as the identity (last BN scale at zero; default off)",
    )
    _add_rows(
        p,
        (
            ("--label-smoothing", float, "label smoothing (default 0.1)"),
            ("--seed", int, "seed of initialisation, subset, shuffling and augmentation (default 0)"),
            ("--device", None, "auto (default), cpu, cuda or cuda:N"),
        ),
    )
    _add_runtime_options(p)
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument("--json", action="store_true")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp16", "fp32"),
        help="what the model trains in (default auto, or a space's precision: bf16 on CUDA cards of compute "
        "capability 8.0 and newer, fp16 with loss scaling on older ones, fp32 on the CPU)",
    )
    p.add_argument(
        "--memory-format",
        choices=("auto", "nchw", "channels_last"),
        default="auto",
        help="layout of the model and its inputs (default auto: the faster one measured for the device)",
    )
    p.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN autotune every new shape (tens of seconds each; off by default)",
    )


_RECIPE_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "dropout",
    "drop_path",
    "zero_init_residual",
)


def _cmd_train(args: argparse.Namespace) -> int:
    from .data.sources import DataSpec, load_dataset
    from .progress import stderr_is_terminal
    from .train.faults import DeviceFault
    from .train.loop import TrialFailed, TrialSpec, resolve_device, train_trial
    from .train.recipe import Recipe, Runtime

    progress = stderr_is_terminal() if args.progress is None else args.progress
    spec = DataSpec(args.data, data_dir=args.data_dir, storage_size=args.storage_size, allow_download=args.download)
    # Settings are checked before the (possibly long) data load.
    base = _baseline(args.model, args.resolution or spec.image_size)
    model = base.with_(width=base.width * args.width, depth=base.depth * args.depth)
    options = {k: getattr(args, k) for k in _RECIPE_OPTIONS if getattr(args, k) is not None}
    recipe = Recipe(train_subset=args.subset, test_subset=args.test_subset, **options)
    runtime = Runtime(
        device=args.device or "auto",
        precision=args.precision or "auto",
        memory_format=args.memory_format,
        cudnn_benchmark=args.cudnn_benchmark,
    )
    trial = TrialSpec(model, spec, recipe, seed=args.seed or 0)
    resolve_device(runtime.device)
    dataset = load_dataset(spec, progress=progress)
    trial = replace(trial, model=model.with_(num_classes=dataset.num_classes))
    try:
        result = train_trial(trial, runtime, dataset=dataset, progress=progress)
    except TrialFailed as exc:
        print(f"{PROG}: trial failed: {exc.reason}", file=sys.stderr)
        return 1
    except DeviceFault as exc:
        print(f"{PROG}: error: {exc.reason}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(
        f"{args.model or 'efficientnet'}(w={args.width:g},d={args.depth:g}) at {result.resolution} px on "
        f"{args.data}: top-1 {result.accuracy:.4f}"
    )
    print(
        f"  epochs        {result.epochs}  ({result.train_images:,} training, {result.test_images:,} held-out images)"
    )
    print(
        f"  per epoch     loss {' '.join(f'{v:.3f}' for v in result.epoch_losses)}  top-1 "
        f"{' '.join(f'{v:.3f}' for v in result.epoch_accuracies)}"
    )
    print(
        f"  throughput    {result.images_per_second:,.0f} images/s on {result.device} ({result.device_name}, "
        f"{result.memory_format}, {result.precision})"
    )
    split = ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in result.timings.items())
    print(f"  wall time     {result.wall_seconds:.1f} s ({split} s)")
    print(f"  params, MACs  {result.params:,}  {result.macs:,} (conv + linear multiply-adds)")
    return 0


# -------------------------------------------------------------------- main


def _add_flops_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="NAME",
        help="efficientnet-b0..b8, efficientnet-l2, efficientnet with --width/--depth/--resolution, "
        "efficientdet-d0..d7, efficientdet with --phi [--alpha --beta --gamma], mobilenetv2, resnet18, resnet34, "
        "resnet50, or a function 'package.module:build' / 'path/file.py:build'",
    )
    _add_model_options(p)
    p.add_argument("--breakdown", action="store_true", help="MACs per module")
    p.add_argument("--no-fvcore", action="store_true", help="skip the (slow, real-compute) fvcore cross-check")
    p.add_argument("--json", action="store_true")


def _add_candidates_options(p: argparse.ArgumentParser) -> None:
    _add_grid_options(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--space", help="list the candidates of this search space (overrides the grid options)")
    source.add_argument("--preset", help="list the candidates of a shipped search space")
    p.add_argument("--json", action="store_true")


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="a run folder written by 'scaling-search run'")


# (name, help, options, handler) of every subcommand, in the order --help lists them.
_COMMANDS = (
    ("flops", "params and MACs of a model", _add_flops_options, _cmd_flops),
    ("candidates", "list (alpha, beta, gamma) candidates for a budget", _add_candidates_options, _cmd_candidates),
    ("table", "extrapolate coefficients to a model family, beside the official table", _add_table_options, _cmd_table),
    ("run", "search the coefficients: train every candidate, rank, extrapolate, report", _add_run_options, _cmd_run),
    ("report", "rebuild a run folder's tables and plots from its stored study", _add_report_options, _cmd_report),
    (
        "curves",
        "compound against single-dimension scaling at equal real cost, trained like the search",
        _add_curves_options,
        _cmd_curves,
    ),
    (
        "export",
        "a table row, named model or run winner as a project config or for timm",
        _add_export_options,
        _cmd_export,
    ),
    ("train", "one short proxy training of a scaled EfficientNet", _add_train_options, _cmd_train),
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Search compound-scaling coefficients with short real trainings.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for name, text, add_options, func in _COMMANDS:
        p = sub.add_parser(name, help=text)
        add_options(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        args.argv = argv
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except MachineError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
