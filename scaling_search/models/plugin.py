"""The user's own network: ``build(width, depth, num_classes) -> nn.Module``, named by an import path.

``"package.module:build"`` imports a module, ``"path/to/file.py:build"`` loads a
file (relative to the current directory); a function handed over from Python
(``register_function``) is found under ``"module:qualname"`` in this process.
The network must take ``N x 3 x R x R`` images at any R and return
``N x num_classes`` logits.

Params and MACs are counted on the meta device at each candidate's resolution
(nothing allocated). A network that cannot run on the meta device (an op
without a meta kernel, a value read back with ``.item()``) is counted by one
real forward of a single image on the CPU instead; one that fails there too is
refused. Two candidates build the same network when their signatures (module
types and parameter shapes, hashed) are equal.

Every count and signature is also kept in a table (``recorded``): a run
folder stores it, and ``report``/``export`` over that folder answer from it
(``replay``) without importing the user's code, so a folder from elsewhere
runs nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .family import Counts, check_common

# module-or-file ":" dotted name; a file is recognised by its .py suffix or a path separator.
_TARGET = re.compile(r"(?P<where>[^:]+):(?P<name>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)")
SIGNATURE = "build(width: float, depth: float, num_classes: int) -> torch.nn.Module"


def is_target(name: str) -> bool:
    """Does ``name`` name a user's function (``where:name``) rather than a built-in model?"""
    return isinstance(name, str) and _TARGET.fullmatch(name) is not None


def check_target(name: str) -> None:
    if not is_target(name):
        raise UsageError(
            f"model {name!r} is neither a built-in model nor a function 'package.module:build' or 'path/file.py:build'"
        )


@dataclass(frozen=True)
class FunctionConfig:
    """A network the user's function builds: its import path and the multipliers it is called with."""

    target: str
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    name: str = "function"

    def __post_init__(self) -> None:
        check_target(self.target)
        check_common(self)

    def with_(self, **changes) -> FunctionConfig:
        return replace(self, **changes)


# ------------------------------------------------------------ finding the function

_GIVEN: dict[str, Callable[..., Any]] = {}


def register_function(fn: Callable[..., Any]) -> str:
    """Make a Python function findable by its target ``module:qualname`` in this process; returns the target."""
    if not callable(fn):
        raise UsageError(f"the model must be a function {SIGNATURE}, got {type(fn).__name__}")
    target = f"{fn.__module__}:{fn.__qualname__}"
    if not is_target(target):  # a lambda or a function defined inside another one
        raise UsageError(f"the model function must be defined at the top of a module (its name is {target!r})")
    _GIVEN[target] = fn
    load_function.cache_clear()
    return target


def _load_module(where: str, target: str):
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"model {target}: file {where} does not exist")
        name = "scaling_search_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up here
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise UsageError(f"model {target}: loading {where} raised {type(exc).__name__}: {exc}") from None
        return module
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name == where or where.startswith(f"{exc.name}."):
            raise UsageError(f"model {target}: no module named {where!r} (is it on PYTHONPATH?)") from None
        raise UsageError(f"model {target}: importing {where} raised ModuleNotFoundError: {exc}") from None
    except Exception as exc:
        raise UsageError(f"model {target}: importing {where} raised {type(exc).__name__}: {exc}") from None


@lru_cache(maxsize=64)
def load_function(target: str) -> Callable[..., Any]:
    """The user's build function, checked to accept (width, depth, num_classes)."""
    check_target(target)
    if target in _GIVEN:
        fn = _GIVEN[target]
    else:
        where, name = target.rsplit(":", 1)
        fn = _load_module(where, target)
        for part in name.split("."):
            if not hasattr(fn, part):
                raise UsageError(f"model {target}: {where} has no {name!r}")
            fn = getattr(fn, part)
    if not callable(fn):
        raise UsageError(f"model {target}: {type(fn).__name__} is not a function {SIGNATURE}")
    try:
        inspect.signature(fn).bind(width=1.0, depth=1.0, num_classes=10)
    except TypeError:
        raise UsageError(f"model {target}: its signature is {inspect.signature(fn)}, expected {SIGNATURE}") from None
    except ValueError:  # a builtin without a signature: try it when building
        pass
    return fn


def build_function(config: FunctionConfig):
    """The user's network for ``config`` (on the current default device)."""
    from torch import nn

    fn = load_function(config.target)
    try:
        model = fn(width=config.width, depth=config.depth, num_classes=config.num_classes)
    except Exception as exc:
        raise UsageError(
            f"model {config.target}: build(width={config.width:g}, depth={config.depth:g}, "
            f"num_classes={config.num_classes}) raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"model {config.target}: build returned {type(model).__name__}, not a torch.nn.Module ({SIGNATURE})"
        )
    return model


# ------------------------------------------------------------ counting, recorded

_TABLE: dict[str, Any] = {}  # "kind target width depth resolution classes" -> counts or signature
_REPLAY: set[str] = set()  # targets answered from a run folder's table only


def _key(kind: str, config: FunctionConfig) -> str:
    return json.dumps([kind, config.target, config.width, config.depth, config.resolution, config.num_classes])


def _lookup(kind: str, config: FunctionConfig, compute: Callable[[], Any]) -> Any:
    key = _key(kind, config)
    if key not in _TABLE:
        if config.target in _REPLAY:
            raise NotStored(
                f"the {kind} of {config.target} at width {config.width:g}, depth {config.depth:g}, "
                f"{config.resolution} px is not stored in the run folder, and the report never runs the user's code"
            )
        _TABLE[key] = compute()
    return _TABLE[key]


class NotStored(UsageError):
    """A number of the user's network that a run folder does not hold."""


def recorded(target: str) -> dict[str, Any]:
    """Every count and signature of ``target``'s networks taken in this process (what a run folder keeps)."""
    return {k: v for k, v in _TABLE.items() if json.loads(k)[1] == target}


def replay(target: str, table: dict[str, Any]) -> None:
    """Answer ``target``'s counts and signatures from ``table`` alone: its code is never imported."""
    _TABLE.update({k: v for k, v in table.items() if json.loads(k)[1] == target})
    _REPLAY.add(target)


def _forward_check(config: FunctionConfig) -> Callable[[Any], None]:
    def check(output: Any) -> None:
        shape = tuple(getattr(output, "shape", ()))
        if shape != (1, config.num_classes):
            raise UsageError(
                f"model {config.target}: at {config.resolution} px it returns {shape or type(output).__name__}, "
                f"expected logits of shape (1, {config.num_classes})"
            )

    return check


def _count(config: FunctionConfig) -> dict[str, int]:
    from .counting import count_module

    make = lambda: build_function(config)  # noqa: E731
    check = _forward_check(config)
    try:
        counted = count_module(make, config.resolution, check=check)
    except UsageError:
        raise
    except Exception:
        try:  # no meta kernel for some op, or a value read back: one real forward of one image
            counted = count_module(make, config.resolution, device="cpu", check=check)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(
                f"model {config.target}: its forward at {config.resolution} px (width {config.width:g}, depth "
                f"{config.depth:g}) raised {type(exc).__name__}: {exc}"
            ) from None
    return {"params": counted.params, "macs": counted.macs}


def counts(config: FunctionConfig) -> Counts:
    return Counts(**_lookup("counts", config, lambda: _count(config)))


def _signature(config: FunctionConfig) -> str:
    import torch

    with torch.device("meta"):
        model = build_function(config)
    parts = [f"{n} {type(m).__module__}.{type(m).__qualname__}" for n, m in model.named_modules()]
    parts += [f"{n} {tuple(p.shape)} {p.requires_grad}" for n, p in model.named_parameters()]
    parts += [f"{n} {tuple(b.shape)}" for n, b in model.named_buffers()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def signature(config: FunctionConfig) -> str:
    """Equal for two multipliers that build the same network: module types and parameter shapes, hashed."""
    return _lookup("signature", config, lambda: _signature(config))


def check_baseline(config: FunctionConfig) -> None:
    """Refuse a function the search would be meaningless on: one that does not build, run, or grow.

    MACs must grow when width doubles and when the resolution doubles (a network
    that ignores its width multiplier cannot be width-scaled).
    """
    base = counts(config).macs
    if base <= 0:
        raise UsageError(f"model {config.target}: it counts no convolution or linear MACs")
    for what, bigger in (
        ("width", config.with_(width=config.width * 2)),
        ("resolution", config.with_(resolution=config.resolution * 2)),
    ):
        grown = counts(bigger).macs
        if grown <= base:
            raise UsageError(
                f"model {config.target}: its MACs do not grow with {what} ({base:,} at {config.width:g}x width, "
                f"{config.resolution} px; {grown:,} at double the {what}): the search would be meaningless"
            )
