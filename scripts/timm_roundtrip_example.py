"""Worked example: a winner-like triple's B2 row, project model -> timm and back.

Runs where timm imports:

    PYTHONPATH=. /work/venv-timm/bin/python scripts/timm_roundtrip_example.py

(1.2, 1.1, 1.15) -> the table's B2 row -> the project's model with random
weights (BN statistics too) -> timm names -> loaded strictly into the model
the exported snippet builds -> the same input through both in eval mode; then
the reverse, from a random timm model into the project's.
"""

from __future__ import annotations

import platform

import timm
import torch

from scaling_search.export import table_row_config, timm_snippet
from scaling_search.models import build
from scaling_search.models.timm_names import from_timm, to_timm
from scaling_search.scaling import Coefficients


def randomise(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn_like(t) * 0.1)


def main() -> None:
    torch.set_num_threads(2)
    config = table_row_config(Coefficients(1.2, 1.1, 1.15), 2)
    scope: dict = {}
    exec(timm_snippet(config), scope)
    timm_model = scope["model"].eval()
    torch.manual_seed(0)
    project = build(config).eval()
    randomise(project, 0)
    x = torch.randn(2, 3, config.resolution, config.resolution, generator=torch.Generator().manual_seed(1))

    timm_model.load_state_dict(to_timm(project.state_dict(), config), strict=True)
    with torch.no_grad():
        a, b = project(x), timm_model(x)
    print(
        f"{config.name}: width {config.width:.4g}, depth {config.depth:.4g}, {config.resolution} px, "
        f"{sum(p.numel() for p in project.parameters()):,} params"
    )
    print(
        f"project -> timm: max |logit difference| {(a - b).abs().max().item():.3e} (logits up to {a.abs().max():.3g})"
    )

    reverse = scope["build_model"]().eval()
    randomise(reverse, 1)
    back = build(config).eval()
    back.load_state_dict(from_timm(reverse.state_dict(), config), strict=True)
    with torch.no_grad():
        c, d = reverse(x), back(x)
    print(
        f"timm -> project: max |logit difference| {(c - d).abs().max().item():.3e} (logits up to {c.abs().max():.3g})"
    )
    print(
        f"timm {timm.__version__}, torch {torch.__version__}, {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()
