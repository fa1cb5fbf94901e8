"""The proxy trainer: it learns, it is reproducible, and it fails clearly."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import SHARED_DATA, assert_usage_error, run_cli

from scaling_search.data.sources import DataSpec
from scaling_search.errors import UsageError
from scaling_search.flops import count_meta
from scaling_search.models import EfficientNetConfig, build, get_config
from scaling_search.train.augment import channel_stats, crop_flip, to_input
from scaling_search.train.loop import (
    UPLOADS,
    TrialFailed,
    TrialPruned,
    TrialSpec,
    lr_factor,
    recalibrate_bn,
    train_trial,
)
from scaling_search.train.recipe import Recipe, Runtime

SPEC = DataSpec("cifar10", data_dir=str(SHARED_DATA))
CPU = Runtime(device="cpu")
TINY_MODEL = EfficientNetConfig(width=0.25, depth=0.25, resolution=32, num_classes=10)


def tiny(seed: int = 0, model: EfficientNetConfig = TINY_MODEL, **recipe) -> TrialSpec:
    settings = dict(epochs=1, train_subset=256, test_subset=100, batch_size=32)
    return TrialSpec(model, SPEC, Recipe(**{**settings, **recipe}), seed)


def test_default_recipe_learns_cifar10_in_two_epochs(cifar10):
    config = TrialSpec(TINY_MODEL, SPEC, Recipe(epochs=2, train_subset=5000, test_subset=1000))
    seen = []
    result = train_trial(config, CPU, dataset=cifar10, on_epoch=lambda *a: seen.append(a))
    assert result.accuracy > 0.25, result  # chance is 0.10
    assert result.epochs == 2 and len(result.epoch_losses) == 2 and result.epoch_accuracies[-1] == result.accuracy
    assert [s[0] for s in seen] == [0, 1] and [s[2] for s in seen] == list(result.epoch_accuracies)
    assert result.epoch_losses[1] < result.epoch_losses[0]
    counted = count_meta(config.model)  # the built model under the FLOP counter, not the trainer's own path
    assert (result.params, result.macs) == (counted.params, counted.macs)
    assert result.train_images == 5000 and result.test_images == 1000 and result.device == "cpu"
    assert result.images_per_second > 0 and result.wall_seconds > 0


def test_same_seed_same_result_other_seed_differs(cifar10):
    first = train_trial(tiny(seed=7), CPU, dataset=cifar10)
    second = train_trial(tiny(seed=7), CPU, dataset=cifar10)
    assert first.epoch_losses == second.epoch_losses and first.accuracy == second.accuracy
    other = train_trial(tiny(seed=8), CPU, dataset=cifar10)
    assert other.epoch_losses != first.epoch_losses


@pytest.mark.parametrize(
    "optimizer, schedule, expected_type, factors",
    [
        # 256 images / batch 32 = 8 steps, warm-up 0.5 epoch = 4 steps ramping (s + 1) / 4, then the schedule:
        # "step" is x0.1 from half-way through the post-warm-up steps and x0.01 from three quarters
        ("adamw", "step", torch.optim.AdamW, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.1, 0.01]),
        ("rmsprop", "constant", torch.optim.RMSprop, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("sgd", "constant", torch.optim.SGD, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_resolution_other_than_storage_and_other_optimizers(cifar10, optimizer, schedule, expected_type, factors):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    steps = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: steps.append((type(opt), opt.defaults, [g["lr"] for g in opt.param_groups]))
    )
    try:
        config = tiny(
            model=EfficientNetConfig(width=0.25, depth=0.25, resolution=48, num_classes=10),
            optimizer=optimizer,
            lr=1e-3,
            schedule=schedule,
            warmup_epochs=0.5,
            train_subset=256,
            batch_size=32,
        )
        result = train_trial(config, CPU, dataset=cifar10)
    finally:
        handle.remove()
    assert result.resolution == 48
    assert all(loss == loss and loss < 10 for loss in result.epoch_losses)
    assert [s[0] for s in steps] == [expected_type] * 8  # the optimizer asked for, at every step
    trace = [s[2] for s in steps]
    assert trace == [[pytest.approx(1e-3 * f)] * 2 for f in factors]  # both parameter groups follow the schedule
    if optimizer == "rmsprop":  # TensorFlow's RMSProp, as in the EfficientNet paper
        assert (steps[0][1]["alpha"], steps[0][1]["eps"]) == (0.9, 1e-3)


def test_absurd_learning_rate_fails_the_trial_with_a_reason(cifar10):
    with pytest.raises(TrialFailed) as err:
        train_trial(tiny(lr=1e30), CPU, dataset=cifar10)
    assert "nan" in err.value.reason.lower() or "inf" in err.value.reason.lower()
    assert "learning rate" in err.value.reason


def test_out_of_memory_fails_the_trial_and_suggests_a_smaller_batch(cifar10):
    # A real allocation failure: a 600,000 px input batch exceeds any address space.
    config = tiny(model=EfficientNetConfig(width=0.25, depth=0.25, resolution=600_000, num_classes=10), batch_size=64)
    with pytest.raises(TrialFailed) as err:
        train_trial(config, CPU, dataset=cifar10)
    assert "out of memory" in err.value.reason and "--batch-size 32" in err.value.reason


def test_callback_can_prune_and_the_error_propagates(cifar10):
    calls = []

    def prune(epoch, loss, accuracy):
        calls.append((epoch, loss, accuracy))
        raise TrialPruned()

    with pytest.raises(TrialPruned):
        train_trial(tiny(epochs=3), CPU, dataset=cifar10, on_epoch=prune)
    assert len(calls) == 1 and calls[0][0] == 0 and 0 <= calls[0][2] <= 1


def test_bad_trial_settings_are_usage_errors(cifar10):
    with pytest.raises(UsageError, match="100 outputs"):
        train_trial(tiny(model=TINY_MODEL.with_(num_classes=100)), CPU, dataset=cifar10)
    with pytest.raises(UsageError, match="optimizer"):
        tiny(optimizer="lamb")
    with pytest.raises(UsageError, match="schedule"):
        tiny(schedule="linear")
    with pytest.raises(UsageError, match="batch size"):
        tiny(batch_size=1)
    with pytest.raises(UsageError, match="only 50000"):
        train_trial(tiny(train_subset=60000), CPU, dataset=cifar10)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no usable CUDA"):
            train_trial(tiny(), Runtime(device="cuda"), dataset=cifar10)
    with pytest.raises(UsageError, match="unknown device"):
        train_trial(tiny(), Runtime(device="toaster"), dataset=cifar10)


def test_trial_spec_takes_dropout_from_the_recipe_and_checks_the_seed():
    spec = TrialSpec(TINY_MODEL.with_(dropout=0.5, drop_path=0.0), SPEC, Recipe(dropout=0.1, drop_path=0.3), seed=4)
    assert (spec.model.dropout, spec.model.drop_path) == (0.1, 0.3)  # the network as trained and saved
    assert spec.model.with_(dropout=0.2, drop_path=0.2) == TINY_MODEL
    with pytest.raises(UsageError, match="seed"):
        TrialSpec(TINY_MODEL, SPEC, Recipe(), seed="1")


def test_runtime_resolves_the_memory_format_per_device():
    from scaling_search.train.recipe import CPU_CHANNELS_LAST

    assert Runtime().uses_channels_last("cuda") is False  # measured on an H200: NCHW 12,038 img/s, CL 8,070
    assert Runtime().uses_channels_last("cpu") is CPU_CHANNELS_LAST
    assert Runtime(memory_format="channels_last").uses_channels_last("cuda") is True
    assert Runtime(memory_format="nchw").uses_channels_last("cpu") is False
    assert Runtime().precision_on("cuda") == "bf16" and Runtime().precision_on("cuda", (7, 5)) == "fp16"
    assert Runtime().precision_on("cpu") == "fp32" and Runtime(precision="bf16").precision_on("cpu") == "bf16"
    with pytest.raises(UsageError, match="memory format"):
        Runtime(memory_format="nhwc")
    with pytest.raises(UsageError, match="cudnn_benchmark"):
        Runtime(cudnn_benchmark="yes")


@pytest.mark.parametrize("memory_format", ["nchw", "channels_last", "auto"])
def test_the_model_runs_in_the_memory_format_asked_for(cifar10, memory_format):
    from scaling_search.train.recipe import CPU_CHANNELS_LAST

    seen = []

    def stem_layouts(module, args):
        # The stem conv (3 input channels, 3x3): both layouts give distinct strides for it and its input.
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            cl = torch.channels_last
            seen.append((module.weight.is_contiguous(memory_format=cl), args[0].is_contiguous(memory_format=cl)))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(stem_layouts)
    try:
        result = train_trial(
            tiny(train_subset=64, test_subset=20), Runtime(device="cpu", memory_format=memory_format), dataset=cifar10
        )
    finally:
        handle.remove()
    expected = {"nchw": False, "channels_last": True, "auto": CPU_CHANNELS_LAST}[memory_format]
    # 2 train steps, 4 recalibration batches (2 distinct at 64 images), 1 evaluation batch: all in one layout.
    assert len(seen) >= 4 and set(seen) == {(expected, expected)}
    assert result.memory_format == ("channels_last" if expected else "nchw")


def test_the_dataset_is_uploaded_once_and_timings_add_up(cifar10):
    import gc

    from scaling_search.data.sources import Dataset

    # A dataset object of its own (real CIFAR-10 images), so no earlier test has uploaded it.
    c = cifar10
    own = Dataset(c.train_x[:512], c.train_y[:512], c.test_x[:100], c.test_y[:100], c.classes)
    before = UPLOADS.uploads
    spec = TrialSpec(TINY_MODEL, SPEC, Recipe(epochs=1, batch_size=64, train_subset=256), seed=1)
    first = train_trial(spec, CPU, dataset=own, keep_state=True)
    tensors = UPLOADS.get(own, torch.device("cpu"))
    second = train_trial(replace(spec, seed=2), CPU, dataset=own)
    assert UPLOADS.uploads == before + 1  # the second trial found the first one's tensors
    again = UPLOADS.get(own, torch.device("cpu"))
    assert again is tensors and again.train_x.data_ptr() == tensors.train_x.data_ptr()
    assert UPLOADS.uploads == before + 1
    for result, phases in ((first, {"state"}), (second, set())):
        assert set(result.timings) == {"data", "model", "train", "recalibrate", "evaluate"} | phases
        assert all(v > 0 for v in result.timings.values())
        assert sum(result.timings.values()) <= result.wall_seconds
        assert result.images_per_second == pytest.approx(4 * 64 / result.timings["train"])
    assert second.epoch_losses != first.epoch_losses  # another seed: another subset and order, same upload
    # The cache holds a dataset only while it lives: the device memory goes with it.
    assert len(UPLOADS) == 1
    del own, tensors, again
    gc.collect()
    assert len(UPLOADS) == 0


def test_bn_recalibration_gives_the_exact_batch_statistics():
    torch.manual_seed(0)
    model = build(EfficientNetConfig(width=0.25, depth=0.25, resolution=16, num_classes=10))
    batches = [torch.randn(8, 3, 16, 16) * 3 + 1 for _ in range(3)]
    recalibrate_bn(model, batches, autocast=False, device_type="cpu")
    conv, bn = model.stem[0], model.stem[1]
    with torch.no_grad():
        features = [conv(b) for b in batches]
    # The equal-weight average over batches of each batch's statistics.
    assert torch.allclose(bn.running_mean, torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([f.var((0, 2, 3)) for f in features]).mean(0), rtol=1e-5)
    assert not model.training and bn.momentum == model.stages[0][0].body[0][1].momentum


def test_lr_schedules():
    assert [round(lr_factor(s, 10, 2, "constant"), 3) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, 10, 0, "cosine") for s in range(10)]
    assert cosine[0] == 1.0 and all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] > 0
    assert [lr_factor(s, 8, 0, "step") for s in (0, 3, 4, 5, 6, 7)] == [
        1.0,
        1.0,
        0.1,
        0.1,
        pytest.approx(0.01),
        pytest.approx(0.01),
    ]


def test_crop_flip_is_a_shifted_mirrored_view_of_each_image():
    images = torch.arange(2 * 8 * 8 * 3, dtype=torch.int64).reshape(2, 8, 8, 3).to(torch.uint8)
    batch = torch.tensor([1, 0, 1])
    plain = crop_flip(images, batch, pad=0, flip=False)
    assert plain.shape == (3, 3, 8, 8) and torch.equal(plain[0], images[1].permute(2, 0, 1))
    g = torch.Generator().manual_seed(0)
    out = crop_flip(images, batch.repeat(50), pad=2, flip=True, generator=g)
    # Every output is some shift (with reflection) and maybe a mirror of its source.
    shifted_or_flipped = 0
    for i, b in enumerate(batch.repeat(50).tolist()):
        src = images[b].permute(2, 0, 1)
        centre = out[i][:, 2:6, 2:6]
        found = any(
            torch.equal(centre, cand[:, 2 + dy : 6 + dy, 2 + dx : 6 + dx])
            for cand in (src, src.flip(2))
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
        assert found
        shifted_or_flipped += not torch.equal(out[i], src)
    assert shifted_or_flipped > 100  # almost all 150 are moved or mirrored


def test_to_input_resizes_and_normalises():
    images = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    mean, std = torch.tensor([100.0, 50.0, 0.0]), torch.tensor([10.0, 10.0, 10.0])
    x = to_input(images, 64, mean, std, channels_last=True)
    assert x.shape == (2, 3, 64, 64) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[:, 0], torch.zeros(1)) and torch.allclose(x[:, 1], torch.full((1,), 5.0))
    small = to_input(images, 16, mean, std, channels_last=False)
    assert small.shape == (2, 3, 16, 16) and torch.allclose(small[:, 2], torch.full((1,), 10.0))
    m, s = channel_stats(torch.tensor([[[[0, 10, 20]]], [[[2, 10, 20]]]], dtype=torch.uint8))
    assert torch.allclose(m, torch.tensor([1.0, 10.0, 20.0])) and torch.allclose(s[0], torch.tensor(1.0))


# ---------------------------------------------------------------- CLI


def test_cli_train_json(cifar10, data_cache):
    proc = run_cli(
        "train", "--data", "cifar10", "--data-dir", str(SHARED_DATA),
        "--width", "0.25", "--depth", "0.25", "--resolution", "32", "--epochs", "1",
        "--subset", "256", "--test-subset", "100", "--batch-size", "32", "--seed", "3",
        "--device", "cpu", "--memory-format", "nchw", "--json", "--progress",
        env={"SCALING_SEARCH_CACHE": str(data_cache)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # the progress bar goes to stderr, never into the JSON
    assert "training" in proc.stderr and "eta" in proc.stderr
    for key in (
        "accuracy",
        "images_per_second",
        "epochs",
        "params",
        "macs",
        "wall_seconds",
        "device",
        "epoch_losses",
        "epoch_accuracies",
    ):
        assert key in result
    assert result["epochs"] == 1 and result["device"] == "cpu" and 0 <= result["accuracy"] <= 1
    assert result["memory_format"] == "nchw" and sum(result["timings"].values()) <= result["wall_seconds"]
    assert (
        result["params"] == count_meta(EfficientNetConfig(width=0.25, depth=0.25, resolution=32, num_classes=10)).params
    )
    # The library call with the same settings gives the same numbers.
    same = train_trial(tiny(seed=3), Runtime(device="cpu", memory_format="nchw"), dataset=cifar10)
    assert result["epoch_losses"] == list(same.epoch_losses) and result["accuracy"] == same.accuracy


@pytest.mark.parametrize("model", ["resnet18", "mobilenetv2"])
def test_cli_train_other_family(model, data_cache):
    """``train --model`` trains the named family's network scaled by --width/--depth, not EfficientNet."""
    proc = run_cli(
        "train", "--model", model, "--data", "cifar10", "--data-dir", str(SHARED_DATA),
        "--width", "0.25", "--depth", "0.5", "--resolution", "32", "--epochs", "1",
        "--subset", "64", "--test-subset", "20", "--batch-size", "32", "--device", "cpu", "--json",
        env={"SCALING_SEARCH_CACHE": str(data_cache)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    expected = count_meta(get_config(model, width=0.25, depth=0.5, resolution=32, num_classes=10))
    effnet = count_meta(EfficientNetConfig(width=0.25, depth=0.5, resolution=32, num_classes=10))
    assert (result["params"], result["macs"]) == (expected.params, expected.macs) != (effnet.params, effnet.macs)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--data-dir", "/no/such/folder"), ("/no/such/folder", "does not exist")),
        (("--data", "mnist"), ("unknown dataset",)),
        (("--resolution", "0"), ("resolution",)),
        (("--epochs", "-1"), ("epochs",)),
        (("--optimizer", "lamb"), ("optimizer",)),
        (("--device", "toaster"), ("device",)),
        (("--width", "abc"), ("width",)),
        (("--memory-format", "nhwc"), ("memory-format", "nhwc")),
        (("--model", "vgg16"), ("unknown model", "vgg16")),
        (("--model", "efficientdet-d0"), ("efficientdet-d0", "not a network family that scales")),
    ],
    ids=[
        "missing-dir",
        "unknown-dataset",
        "resolution-0",
        "epochs",
        "optimizer",
        "device",
        "width",
        "memory-format",
        "unknown-model",
        "detector",
    ],
)
def test_cli_train_bad_inputs(args, fragments, data_cache):
    base = {
        "--data": "cifar10",
        "--data-dir": str(SHARED_DATA),
        "--width": "0.25",
        "--depth": "0.25",
        "--resolution": "32",
        "--epochs": "1",
    }
    merged = dict(base)
    merged.update(dict(zip(args[::2], args[1::2])))
    flat = [t for kv in merged.items() for t in kv]
    proc = run_cli(
        "train",
        *flat,
        "--subset",
        "64",
        "--test-subset",
        "20",
        env={"SCALING_SEARCH_CACHE": str(data_cache)},
        timeout=120,
    )
    assert_usage_error(proc, *fragments)


def test_cli_train_without_any_data_folder(tmp_path):
    proc = run_cli(
        "train",
        "--data",
        "cifar10",
        "--epochs",
        "1",
        env={"SCALING_SEARCH_DATA": "", "SCALING_SEARCH_CACHE": str(tmp_path)},
    )
    assert_usage_error(proc, "--data-dir", "SCALING_SEARCH_DATA")
