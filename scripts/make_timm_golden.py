"""Write tests/golden/timm/*.json: state-dict names and shapes read from real timm models.

Runs only where timm imports (the project's tests do not need it):

    python3 -m venv /work/venv-timm
    /work/venv-timm/bin/pip install torch torchvision timm safetensors numpy
    PYTHONPATH=. /work/venv-timm/bin/python scripts/make_timm_golden.py

For b0..b7 the model comes from ``timm.create_model("efficientnet_bK")``; for
every case also from the snippet ``scaling-search export --format timm``
emits (executed as is), and the two must agree. Each file records timm's key
names and shapes in state-dict order, the trainable parameter count, the
builder arguments, and the timm, torch and Python versions.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import timm
import torch

from scaling_search.export import timm_description, timm_snippet
from scaling_search.models import EfficientNetConfig, config_to_dict, get_config

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "timm"

CASES: dict[str, EfficientNetConfig] = {f"b{k}": get_config(f"efficientnet-b{k}") for k in range(8)}
CASES.update(
    {
        # the CPU preset's proxy baseline (width and depth 0.25, CIFAR-10)
        "custom-w0.25-d0.25-c10": EfficientNetConfig(width=0.25, depth=0.25, resolution=32, num_classes=10),
        # the B2 row of the table for the paper's (1.2, 1.1, 1.15): width 1.1^2, depth 1.2^2
        "custom-w1.21-d1.44": EfficientNetConfig(width=1.1**2, depth=1.2**2, resolution=296, dropout=0.3),
        "custom-w0.5-d1.6-c100": EfficientNetConfig(width=0.5, depth=1.6, resolution=128, num_classes=100),
    }
)


def from_snippet(config: EfficientNetConfig) -> torch.nn.Module:
    scope: dict = {}
    exec(timm_snippet(config), scope)  # the exported text, exactly as a user would paste it
    return scope["model"]


def describe(model: torch.nn.Module) -> tuple[list[list], int]:
    keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    return keys, sum(p.numel() for p in model.parameters() if p.requires_grad)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for case, config in CASES.items():
        with torch.device("meta"):
            snippet_model = from_snippet(config)
            desc = timm_description(config)
            named = None
            if desc["timm_model"]:
                named = timm.create_model(desc["timm_model"], pretrained=False, **desc["create_model_kwargs"])
        keys, params = describe(snippet_model)
        if named is not None:
            assert describe(named) == (keys, params), f"{case}: create_model and the snippet differ"
        # Cross-check only (private API): timm's own multiplier scaling builds the same network.
        with torch.device("meta"):
            private = timm.models.efficientnet._gen_efficientnet(
                "efficientnet_b0",
                channel_multiplier=config.width,
                depth_multiplier=config.depth,
                num_classes=config.num_classes,
            )
        assert describe(private) == (keys, params), f"{case}: _gen_efficientnet differs from the snippet"
        record = {
            "case": case,
            "how": "scripts/make_timm_golden.py",
            "timm_version": timm.__version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "timm_model": desc["timm_model"],
            "create_model_kwargs": desc["create_model_kwargs"],
            "builder": desc["builder"],
            "builder_kwargs": desc["builder_kwargs"],
            "project_config": config_to_dict(config),
            "params": params,
        }
        # One state-dict entry per line: [name, shape], in timm's order.
        rows = ",\n".join("  " + json.dumps(entry, separators=(",", ":")) for entry in keys)
        path = OUT / f"{case}.json"
        path.write_text(json.dumps(record, indent=1)[:-2] + f',\n "state_dict": [\n{rows}\n ]\n}}\n')
        print(f"{case:24s} {desc['timm_model'] or '(snippet)':18s} {len(keys):5d} keys {params:>12,d} params")
    print(f"timm {timm.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
