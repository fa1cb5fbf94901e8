"""Export: config JSON, timm names against golden files read from real timm, kept weights."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import CIFAR10_ARCHIVE, ROOT, assert_usage_error, read_csv

from scaling_search.errors import UsageError
from scaling_search.export import export_text, table_row_config, timm_arch_def, timm_official_name, timm_snippet
from scaling_search.models import (
    EfficientNetConfig,
    build,
    config_from_dict,
    config_to_dict,
    get_config,
    load_config,
)
from scaling_search.models.timm_names import from_timm, timm_shapes, to_timm
from scaling_search.scaling import PAPER, Coefficients

GOLDEN = sorted((ROOT / "tests" / "golden" / "timm").glob("*.json"))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _random_state(config: EfficientNetConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A model's state with every tensor random (BN statistics too), so no two entries coincide."""
    torch.manual_seed(seed)
    model = build(config)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + (0.5 if "running_var" in name else 0.0))
            else:
                t.fill_(seed + 3)
    return model.state_dict()


# ---------------------------------------------------------------- timm names


def test_golden_files_cover_b0_to_b7_and_custom_configs():
    names = {p.stem for p in GOLDEN}
    assert {f"b{k}" for k in range(8)} <= names
    assert any(n.startswith("custom") for n in names)
    for path in GOLDEN:
        golden = json.loads(path.read_text())
        assert golden["timm_version"] == "1.0.31" and golden["how"] == "scripts/make_timm_golden.py"


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_timm_names_and_shapes_equal_real_timm(path):
    golden = json.loads(path.read_text())
    config = config_from_dict(golden["project_config"])
    expected = [(k, tuple(shape)) for k, shape in golden["state_dict"]]
    assert timm_shapes(config) == expected  # names, shapes and order
    with torch.device("meta"):
        assert _params(build(config)) == golden["params"]
    assert timm_arch_def(config) == golden["builder_kwargs"]["arch_def"]
    assert timm_official_name(config) == golden["timm_model"]


def test_timm_names_round_trip_is_bit_identical():
    for config in (EfficientNetConfig(width=0.25, depth=0.25, num_classes=10), get_config("efficientnet-b1")):
        state = _random_state(config)
        timm_state = to_timm(state, config)
        assert len(timm_state) == len(state) and list(timm_state)[:2] == ["conv_stem.weight", "bn1.weight"]
        back = from_timm(timm_state, config)
        assert list(back) == list(state)
        for key, tensor in state.items():
            assert back[key].dtype == tensor.dtype
            assert torch.equal(back[key].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key
        # and the names really load, strictly, into a project model
        build(config).load_state_dict(back, strict=True)


def test_timm_converter_is_strict():
    config = EfficientNetConfig(width=0.25, depth=0.25, num_classes=10)
    state = _random_state(config)
    timm_state = to_timm(state, config)
    missing = dict(timm_state)
    missing.pop("blocks.1.0.conv_pwl.weight")
    with pytest.raises(UsageError, match="1 missing.*conv_pwl"):
        from_timm(missing, config)
    with pytest.raises(UsageError, match="1 unexpected.*extra"):
        from_timm({**timm_state, "extra.weight": torch.zeros(1)}, config)
    with pytest.raises(UsageError, match="classifier.weight has shape"):
        from_timm({**timm_state, "classifier.weight": torch.zeros(3, timm_state["classifier.weight"].shape[1])}, config)
    other = EfficientNetConfig(width=0.25, depth=0.5, num_classes=10)
    with pytest.raises(UsageError, match="does not fit"):
        to_timm(state, other)
    with pytest.raises(UsageError, match="EfficientNet classifiers"):
        to_timm(state, get_config("efficientdet-d0"))


def test_timm_snippet_is_python_with_the_golden_stage_list():
    golden = json.loads((ROOT / "tests/golden/timm/custom-w1.21-d1.44.json").read_text())
    config = table_row_config(PAPER, 2)
    assert (config.width, config.depth) == pytest.approx((1.21, 1.44))
    assert timm_arch_def(config) == golden["builder_kwargs"]["arch_def"]
    snippet = timm_snippet(config)
    compile(snippet, "snippet", "exec")
    assert "decode_arch_def(arch_def, depth_multiplier=1.0)" in snippet and "eps=0.001" in snippet
    b2 = json.loads(export_text(get_config("efficientnet-b2"), "timm"))
    assert b2["timm_model"] == "efficientnet_b2" and b2["create_model_kwargs"]["bn_eps"] == 1e-3


# ------------------------------------------------------------------ configs


def test_exported_table_rows_rebuild_the_tables_params():
    from scaling_search.analysis.series import b_series

    coeffs = Coefficients(1.2, 1.1, 1.15)
    for row in b_series(coeffs, max_phi=3):  # rows 4-7: the run-folder test below
        text = export_text(table_row_config(coeffs, row["phi"]), "json")
        with torch.device("meta"):
            model = build(config_from_dict(json.loads(text)))
        assert _params(model) == row["params"], row["phi"]


def test_cli_export_of_a_run_matches_its_b_series(cli, tmp_path):
    run = ROOT / "results" / "cifar10-cpu-2x"
    rows = read_csv(run / "b_series.csv")
    for row in (rows[0], rows[-1]):
        out = tmp_path / f"b{row['phi']}.json"
        proc = cli("export", "--run", str(run), "--phi", row["phi"], "--format", "json", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        with torch.device("meta"):
            assert _params(build(load_config(out))) == int(row["params"])
    proc = cli("export", "--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--phi", "2", "--format", "timm")
    assert proc.returncode == 0, proc.stderr
    described = json.loads(proc.stdout)
    assert described["builder"] == "timm.models.efficientnet.EfficientNet" and described["timm_model"] is None
    assert config_from_dict(described["config"]) == table_row_config(PAPER, 2)


def test_json_config_round_trip_and_bad_files(tmp_path):
    for config in (get_config("efficientnet-b3", num_classes=10), get_config("efficientdet", phi=2)):
        assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    good = config_to_dict(get_config("efficientnet-b0"))
    bad = [
        ({**good, "format": "other"}, "not a scaling-search model config"),
        ({**good, "family": "vgg"}, "unknown family"),
        ({**good, "config": {**good["config"], "colour": 1}}, "unknown key.*colour"),
        ({**good, "config": {**good["config"], "width": "wide"}}, "width must be float"),
        ({**good, "config": {**good["config"], "resolution": 0}}, "resolution must be a positive integer"),
        ({**good, "config": {**good["config"], "stages": [{"kernel": 3}]}}, "stages"),
    ]
    for data, message in bad:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(data))
        with pytest.raises(UsageError, match=message):
            load_config(path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UsageError, match="cannot read config"):
        load_config(tmp_path / "broken.json")


def test_cli_export_bad_inputs_one_line_nothing_written(cli, tmp_path):
    out = tmp_path / "x.json"
    cases = [
        (("export", "--alpha", "1.2", "--out", str(out)), "needs all of --alpha"),
        (("export", "--model", "efficientnet-b0", "--run", str(tmp_path), "--out", str(out)), "exactly one of"),
        (("export", "--out", str(out)), "exactly one of"),
        (("export", "--alpha", "0.9", "--beta", "1", "--gamma", "1", "--phi", "1"), "below 1"),
        (("export", "--model", "efficientnet-b9", "--out", str(out)), "unknown model"),
        (("export", "--model", "efficientdet-d0", "--format", "timm", "--out", str(out)), "--format json"),
        (("export", "--run", str(tmp_path), "--out", str(out)), "no best.json"),
        (("export", "--model", "efficientnet-b0", "--format", "onnx"), "invalid choice"),
        (("export", "--model", "efficientnet-b0", "--out", str(tmp_path)), "is a folder"),
    ]
    for args, fragment in cases:
        assert_usage_error(cli(*args), fragment)
    assert not out.exists()


# ------------------------------------------------------------------ weights


def test_forward_is_forward_head_of_forward_features():
    torch.manual_seed(0)
    model = build(EfficientNetConfig(width=0.25, depth=0.25, resolution=32, num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.classifier.in_features, 1, 1)
        assert torch.equal(model(x), model.forward_head(feats))
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.classifier.in_features)


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> Path:
    """Real CIFAR-10 images, 4 classes x (40 train + 20 test), from the shared archive's test split."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    counts: dict[str, int] = {}
    with tarfile.open(CIFAR10_ARCHIVE, "r:gz") as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or parts[0] != "test":
                if parts[0] == "train":
                    break
                continue
            label = parts[1]
            if label not in counts and len(counts) == 4:
                break
            n = counts[label] = counts.get(label, 0) + 1
            if n > 60:
                continue
            target = root / ("train" if n <= 40 else "test") / label / parts[2]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    return root


def test_kept_winner_reloads_and_reproduces_its_accuracy(tiny_cifar, tmp_path, cli):
    from scaling_search.data.sources import DataSpec, load_dataset
    from scaling_search.train.augment import to_input
    from scaling_search.train.loop import TrialSpec, evaluate, train_trial
    from scaling_search.train.recipe import Recipe, Runtime
    from scaling_search.weights import load_model, load_weights, prune_weights, save_trained, trial_weights_path

    spec = DataSpec(f"imagefolder:{tiny_cifar}")
    data = load_dataset(spec, cache_dir=tmp_path / "cache")
    model = EfficientNetConfig(width=0.25, depth=0.25, resolution=32, num_classes=4)
    config = TrialSpec(model, spec, Recipe(epochs=2, batch_size=32, lr=0.05), seed=1)
    model = config.model  # the network as trained: the recipe's dropout and drop path
    result = train_trial(config, Runtime(device="cpu"), dataset=data, keep_state=True)
    assert result.state is not None and "state" not in result.to_dict()

    run = tmp_path / "run"
    path = save_trained(trial_weights_path(run, 1.2, 1.1, 1.15, 1), config, result, {"alpha": 1.2})
    loser = save_trained(trial_weights_path(run, 1.1, 1.1, 1.2, 1), config, result)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a pickle

    kept = load_weights(path, model)
    assert kept.config == model and kept.record["accuracy"] == result.accuracy and kept.record["alpha"] == 1.2
    reloaded = load_model(path)
    assert not reloaded.training
    mean = torch.tensor(kept.preprocess.mean)
    std = torch.tensor(kept.preprocess.std)
    test_x = torch.from_numpy(data.test_x)
    test_y = torch.from_numpy(data.test_y)
    settings = dict(resolution=kept.preprocess.resolution, mean=mean, std=std, batch_size=32, autocast=False)
    channels_last = result.memory_format == "channels_last"
    assert evaluate(reloaded, test_x, test_y, channels_last=channels_last, **settings) == result.accuracy
    # a network with other weights scores otherwise: the check above can fail
    fresh = build(model).eval()
    with torch.no_grad():
        x = to_input(test_x.permute(0, 3, 1, 2), 32, mean, std, channels_last=False)
        assert not torch.equal(fresh(x), reloaded(x))

    with pytest.raises(UsageError, match="another config"):
        load_weights(path, model.with_(num_classes=5))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="not a readable safetensors"):
        load_weights(broken)

    # the run folder: best keeps the winner's files only; export reads the network from them
    (run / "best.json").write_text(json.dumps({"alpha": 1.2, "beta": 1.1, "gamma": 1.15}))
    assert prune_weights(run, "best", (1.2, 1.1, 1.15)) == [path] and not loser.exists()
    proc = cli("export", "--run", str(run), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert config_from_dict(json.loads(proc.stdout)) == model
    assert prune_weights(run, "none", (1.2, 1.1, 1.15)) == [] and not path.exists()
