"""Trained weights on disk: safetensors, with the model config in its metadata.

No pickle anywhere: a ``.safetensors`` file holds only tensors and a string
map, and the map carries the project's model config (``config_to_dict``), the
input normalisation the network was trained and scored with, and the trial's
record (coefficients, seed, held-out accuracy). ``load_model`` rebuilds the
network from that config and loads the tensors strictly.

A run folder keeps them under ``weights/``, one file per trial
(``trial_weights_path``); ``prune_weights`` applies ``--keep-weights``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

WEIGHTS_FORMAT = "scaling-search-weights/1"
WEIGHTS_DIR = "weights"
KEEP_MODES = ("best", "all", "none")


@dataclass(frozen=True)
class Preprocess:
    """What the network expects: square ``resolution`` px input, (pixel - mean) / std per channel (0..255 units)."""

    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class KeptWeights:
    config: Any  # a model config (config_to_dict's families)
    state_dict: dict[str, Any] = field(repr=False)
    preprocess: Preprocess | None = None
    record: dict[str, Any] = field(default_factory=dict)  # e.g. alpha, beta, gamma, seed, accuracy


def save_weights(
    path: str | os.PathLike,
    config: Any,
    state_dict: dict[str, Any],
    *,
    preprocess: Preprocess | None = None,
    record: dict[str, Any] | None = None,
) -> Path:
    """Write ``state_dict`` (checked strictly against ``config``) as safetensors, atomically."""
    import torch
    from safetensors.torch import save

    from .atomic import atomic_write_bytes, refused
    from .models import config_to_dict

    _check_fits(config, state_dict)
    tensors = {k: v.detach().to("cpu", memory_format=torch.contiguous_format) for k, v in state_dict.items()}
    metadata = {"format": WEIGHTS_FORMAT, "config": json.dumps(config_to_dict(config))}
    if preprocess is not None:
        metadata["preprocess"] = json.dumps(
            {"resolution": preprocess.resolution, "mean": list(preprocess.mean), "std": list(preprocess.std)}
        )
    if record:
        metadata["record"] = json.dumps(record)
    target = Path(path)
    data = save(tensors, metadata=metadata)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (refused(target.parent, exc, len(data)) or exc) from None
    atomic_write_bytes(target, data)
    return target


def save_trained(path: str | os.PathLike, spec: Any, result: Any, record: dict[str, Any] | None = None) -> Path:
    """Save what ``train_trial(spec, ..., keep_state=True)`` handed back (a ``TrialResult`` with ``state``).

    ``spec`` is the trial's ``TrialSpec`` (its model is the network as trained); the record gets the
    held-out accuracy.
    """
    if result.state is None:
        raise ValueError("the trial result holds no weights: call train_trial(..., keep_state=True)")
    model = spec.model
    preprocess = Preprocess(model.resolution, result.state.mean, result.state.std)
    full = {"accuracy": result.accuracy, "seed": spec.seed, "test_images": result.test_images, **(record or {})}
    return save_weights(path, model, result.state.state_dict, preprocess=preprocess, record=full)


def _check_fits(config: Any, state_dict: dict[str, Any]) -> None:
    import torch

    from .models import build

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build(config).state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise UsageError(
            f"the weights do not fit the config: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} of another shape (first: {', '.join((missing + unexpected + wrong)[:3])})"
        )


def load_weights(path: str | os.PathLike, config: Any = None) -> KeptWeights:
    """Read a file written by ``save_weights``; with ``config``, it must be the stored one."""
    from safetensors import SafetensorError, safe_open

    from .models import config_from_dict

    source = Path(path)
    if not source.is_file():
        raise UsageError(f"weights file {source} does not exist")
    try:
        with safe_open(source, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as exc:
        raise UsageError(f"{source} is not a readable safetensors file: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read weights {source}: {exc.strerror}") from None
    if metadata.get("format") != WEIGHTS_FORMAT or "config" not in metadata:
        raise UsageError(f"{source} holds no scaling-search model config: it was not written by save_weights")
    try:
        stored = config_from_dict(json.loads(metadata["config"]), f"{source} config")
        pre = json.loads(metadata["preprocess"]) if "preprocess" in metadata else None
        record = json.loads(metadata.get("record", "{}"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} has damaged metadata: {exc}") from None
    if config is not None and config != stored:
        raise UsageError(f"{source} was trained as {stored.name} with another config than the one given")
    preprocess = None if pre is None else Preprocess(int(pre["resolution"]), tuple(pre["mean"]), tuple(pre["std"]))
    _check_fits(stored, tensors)
    return KeptWeights(stored, tensors, preprocess, record)


def stored_config(path: str | os.PathLike) -> Any:
    """The model config a weights file was saved with, from its metadata alone (no tensors read, no network
    built: a user's function is not imported)."""
    from safetensors import SafetensorError, safe_open

    from .models import config_from_dict

    source = Path(path)
    try:
        with safe_open(source, framework="pt") as f:
            metadata = f.metadata() or {}
        return config_from_dict(json.loads(metadata["config"]), f"{source} config")
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise UsageError(f"{source} holds no readable scaling-search model config: {exc}") from None


def load_model(path: str | os.PathLike, config: Any = None):
    """The network of a weights file, built from its stored config, weights loaded strictly, in eval mode."""
    from .models import build

    kept = load_weights(path, config)
    model = build(kept.config)
    model.load_state_dict(kept.state_dict, strict=True)
    return model.eval()


# ------------------------------------------------------------ run folders


def trial_weights_path(run_dir: str | os.PathLike, alpha: float, beta: float, gamma: float, seed: int) -> Path:
    """Where a run folder keeps the final weights of one trial (candidate and seed)."""
    return Path(run_dir) / WEIGHTS_DIR / f"a{alpha:g}_b{beta:g}_g{gamma:g}_seed{seed}.safetensors"


def winner_weights(run_dir: str | os.PathLike, alpha: float, beta: float, gamma: float) -> list[Path]:
    """The kept weight files of one candidate, lowest seed first."""
    prefix = trial_weights_path(run_dir, alpha, beta, gamma, 0).name.rsplit("seed", 1)[0] + "seed"
    folder = Path(run_dir) / WEIGHTS_DIR
    found = [p for p in folder.glob(f"{prefix}*.safetensors") if p.stem[len(prefix) :].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[len(prefix) :]))


def prune_weights(run_dir: str | os.PathLike, keep: str, winner: tuple[float, float, float] | None) -> list[Path]:
    """Apply ``--keep-weights``: ``all`` keeps every trial's file, ``best`` those of ``winner``
    (alpha, beta, gamma), ``none`` nothing. Returns the files kept."""
    if keep not in KEEP_MODES:
        raise UsageError(f"--keep-weights {keep!r}: choose one of {', '.join(KEEP_MODES)}")
    folder = Path(run_dir) / WEIGHTS_DIR
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    kept = set(files if keep == "all" else winner_weights(run_dir, *winner) if keep == "best" and winner else [])
    for f in files:
        if f not in kept:
            f.unlink()
    return sorted(kept)
