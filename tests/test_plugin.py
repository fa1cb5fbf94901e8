"""The user's own network: ``build(width, depth, num_classes)`` named by an import path or handed over from
Python; every way it can be wrong ends in one line and exit 2 with nothing written; a search of it runs to
its report, and the report and export over its folder never import it."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import yaml
from conftest import assert_run_outputs, read_csv, run_cli

from scaling_search.cli import main
from scaling_search.models import get_config, measured_ratio
from scaling_search.scaling import PAPER
from scaling_search.search.plan import build_plan
from scaling_search.space import GridSpec

# A 20-line network of the user's: width scales the channels, depth the blocks, any resolution.
USER_NET = """
import torch
from torch import nn


def build(width: float, depth: float, num_classes: int) -> nn.Module:
    channels = max(8, round(16 * width / 8) * 8)
    layers = [nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
    for _ in range(max(1, round(2 * depth))):
        layers += [nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
"""

TINY_SPACE = """\
name: mine
baseline: {{model: "{model}", width: {width}, resolution: 32}}
data: {{name: cifar10}}
grid: {{kind: full, step: 0.1, max_alpha: 1.1, max_beta: 1.1, max_gamma: 1.3}}
constraint: {{budget: 2x, tolerance: 0.05, resolution_multiple: 4}}
proxy: {{epochs: 1, batch_size: 64, lr: 0.05, train_subset: 128, test_subset: 128}}
seeds: [0]
extrapolation: {{max_phi: 3}}
"""


def _write(tmp_path, body: str, name: str = "net.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return f"{path}:build"


def _refused(capsys, tmp_path, model: str, *fragments: str) -> None:
    """``run`` with ``model`` as the baseline: exit 2, one line naming the problem, no run folder."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE.format(model=model, width=1.0))
    out = tmp_path / "run"
    code = main(["run", "--space", str(space), "--out", str(out)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert not out.exists()


def test_a_missing_module_is_refused(capsys, tmp_path):
    _refused(capsys, tmp_path, "no_such_package_here.nets:build", "no module named 'no_such_package_here.nets'")


def test_a_missing_file_is_refused(capsys, tmp_path):
    _refused(capsys, tmp_path, f"{tmp_path}/absent.py:build", "absent.py does not exist")


def test_a_missing_name_is_refused(capsys, tmp_path):
    _refused(capsys, tmp_path, _write(tmp_path, "def make(width, depth, num_classes): pass\n"), "has no 'build'")


def test_a_wrong_signature_is_refused(capsys, tmp_path):
    model = _write(tmp_path, "def build(width, classes): pass\n")
    _refused(capsys, tmp_path, model, "its signature is (width, classes)", "expected build(width: float")


def test_a_return_that_is_not_a_module_is_refused(capsys, tmp_path):
    _refused(capsys, tmp_path, _write(tmp_path, "def build(width, depth, num_classes): return [1, 2]\n"), "list")


def test_an_exception_while_building_is_quoted(capsys, tmp_path):
    model = _write(tmp_path, "def build(width, depth, num_classes):\n    raise ValueError('width must be even')\n")
    _refused(capsys, tmp_path, model, "raised ValueError: width must be even")


def test_a_forward_that_fails_at_the_baseline_resolution_is_refused(capsys, tmp_path):
    fixed = USER_NET.replace(
        "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels,", "nn.Flatten(), nn.Linear(channels * 64,"
    )
    _refused(capsys, tmp_path, _write(tmp_path, fixed), "forward at 32 px", "raised RuntimeError")


def test_a_wrong_output_shape_is_refused(capsys, tmp_path):
    model = _write(tmp_path, USER_NET.replace("nn.Linear(channels, num_classes)", "nn.Linear(channels, 5)"))
    _refused(capsys, tmp_path, model, "expected logits of shape (1, 10)")


def test_macs_that_do_not_grow_with_width_are_refused(capsys, tmp_path):
    model = _write(tmp_path, USER_NET.replace("max(8, round(16 * width / 8) * 8)", "16"))
    _refused(capsys, tmp_path, model, "do not grow with width", "meaningless")


def test_macs_that_do_not_grow_with_resolution_are_refused(capsys, tmp_path):
    pooled = USER_NET.replace("layers = [nn.Conv2d(3,", "layers = [nn.AdaptiveAvgPool2d(8), nn.Conv2d(3,")
    _refused(capsys, tmp_path, _write(tmp_path, pooled), "do not grow with resolution")


def test_a_network_the_meta_device_cannot_run_is_counted_on_one_real_image(tmp_path):
    # .item() reads a value back: impossible on the meta device, fine on the CPU.
    reads_back = USER_NET.replace(
        "    return nn.Sequential(*layers)",
        "    class Net(nn.Sequential):\n"
        "        def forward(self, x):\n"
        "            assert x.abs().max().item() < 1e9\n"
        "            return super().forward(x)\n\n"
        "    return Net(*layers)",
    )
    plain = get_config(_write(tmp_path, USER_NET, "plain.py"), resolution=32, num_classes=10)
    other = get_config(_write(tmp_path, reads_back, "reads.py"), resolution=32, num_classes=10)
    from scaling_search.flops import count

    assert count(other) == count(plain) and count(plain).macs > 0
    assert measured_ratio(PAPER, other, 4) == measured_ratio(PAPER, plain, 4)


def test_identical_networks_share_a_class_by_signature(tmp_path):
    base = get_config(_write(tmp_path, USER_NET), resolution=32, num_classes=10)
    grid = GridSpec("derived", 0.1, max_alpha=1.5, max_beta=1.5)
    plan = build_plan("2x", base, multiple=4, grid=grid, constraint="theoretical")
    # depth rounds round(2 * depth) blocks, width to multiples of 8: alpha 1.2 and 1.1 build one network
    merged = [c for c in plan.classes if len(c.members) > 1]
    assert merged and len(plan.classes) < len(plan.candidates)

    def shapes(coeffs):
        from scaling_search.models import build, compound

        with torch.device("meta"):
            return [tuple(p.shape) for p in build(compound(base, coeffs, 1, 4)).parameters()]

    for cls in merged:
        assert all(shapes(m.coefficients) == shapes(cls.representative.coefficients) for m in cls.members)


def _load(path, name: str):
    """A module from a file, as a notebook user would have it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_function_in_a_file_is_searched_from_python_and_reported_without_its_code(tmp_path, data_env, monkeypatch):
    import scaling_search

    for key, value in data_env.items():
        monkeypatch.setenv(key, value)
    code = tmp_path / "user_net.py"
    code.write_text(USER_NET)
    build = _load(code, "user_net_for_the_api").build
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE.format(model="efficientnet", width=0.25))
    out = tmp_path / "run"
    run = scaling_search.run_search(space, model=build, out=out, quiet=True)
    records, decision, series = run.records(), run.decision(), run.series()
    assert len(records) == decision["units_total"] and set(records["state"]) == {"COMPLETE"}
    assert decision["alpha"] is not None and list(series["phi"]) == [0, 1, 2, 3]
    assert series["macs"].is_monotonic_increasing and series["params"].iloc[0] > 0
    assert_run_outputs(out)
    recorded = yaml.safe_load((out / "space.yaml").read_text())["baseline"]
    assert recorded["model"] == "user_net_for_the_api:build" and recorded["width"] is None  # at width 1
    report_md = (out / "coefficients.md").read_text()
    assert "D-series not made" in report_md and not (out / "d_series.csv").exists()
    # The code is gone: report (a fresh process) and export answer from the folder's stored numbers.
    code.rename(tmp_path / "gone.txt")
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    assert (out / "coefficients.md").read_text() == report_md
    assert scaling_search.load_run(out).decision()["alpha"] == decision["alpha"]
    exported = run_cli("export", "--run", str(out), "--phi", "2")
    assert exported.returncode == 0, exported.stderr
    config = json.loads(exported.stdout)
    assert config["family"] == "function" and config["config"]["target"] == "user_net_for_the_api:build"
    assert config["config"]["width"] == pytest.approx(decision["beta"] ** 2)
    kept = json.loads(run_cli("export", "--run", str(out)).stdout)  # the kept weights' network, no import
    assert kept["config"]["target"] == "user_net_for_the_api:build" and kept["config"]["num_classes"] == 10
    with pytest.raises(scaling_search.api.UsageError, match="trains in this process only"):
        scaling_search.run_search(space, model=build, out=tmp_path / "other", jobs=2)
    assert not (tmp_path / "other").exists()


def test_a_mobilenetv2_search_runs_to_its_report(tmp_path, data_env, monkeypatch, capsys):
    for key, value in data_env.items():
        monkeypatch.setenv(key, value)
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE.format(model="mobilenetv2", width=0.25))  # a quarter-width MobileNetV2 at 32 px
    out = tmp_path / "run"
    assert main(["run", "--space", str(space), "--out", str(out)]) == 0, capsys.readouterr()
    assert_run_outputs(out)
    best = json.loads((out / "best.json").read_text())
    assert best["alpha"] is not None and best["verdict"]
    rows = read_csv(out / "b_series.csv")
    assert int(rows[0]["params"]) == 3_504_872  # the series grows from the published MobileNetV2
    assert "mobilenetv2 series from the winner" in (out / "coefficients.md").read_text()
    trials = read_csv(out / "trials.csv")
    assert {r["state"] for r in trials} == {"COMPLETE"} and all(r["effective_alpha"] for r in trials)


def test_the_readme_network_is_a_valid_function(tmp_path, capsys):
    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    code = text.split("# mynet.py\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 20  # "a 20-line network"
    model = _write(tmp_path, code, "mynet.py")
    assert (
        main(
            [
                "candidates",
                "--model",
                model,
                "--base-resolution",
                "32",
                "--multiple",
                "4",
                "--grid",
                "derived",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 25 and len({r["class"] for r in rows}) > 1
