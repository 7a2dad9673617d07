"""Reduced precision (bfloat16, float16) is checked against float32 on each module's first batch.

Nothing here skips on a CPU without native bfloat16: torch emulates it there, slower but on these
small networks a matter of seconds, and the same checks hold (they pass on CPUs of both kinds)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mimir.cli import predict_cmd
from mimir.inference.modules import LoadedModule, ModuleSpec, Provenance, TargetSpec, load_module, save_module
from mimir.inference.predict import PredictOptions, run_prediction
from mimir.inference.runner import REDUCED_PRECISION_TOLERANCE_SD, ModuleRunner, mean_deviation_sd, network_input
from mimir.network import MeanVarianceResNet

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

STEMS = ("1234567_20201_2_0", "2345678_20201_2_0", "3456789_20201_3_0")
DRIFTING_TARGETS = (
    TargetSpec("height", 50, "cm", "continuous", mean=170.0, sd=9.0),
    TargetSpec("weight", 21002, "kg", "continuous", mean=80.0, sd=14.0, calibration=0.7),
)
STEADY_TARGETS = (TargetSpec("liverFat", 40061, "%", "continuous", mean=5.0, sd=4.0, calibration=1.1),)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.from_numpy(np.stack([helpers.realistic_image(10 + index) for index in range(len(STEMS))]))


def fitted_network(architecture: str, n_targets: int, images: torch.Tensor, head_scale: float) -> MeanVarianceResNet:
    """Random weights, batch norm fitted to the images; `head_scale` sets how large the outputs are."""
    torch.manual_seed(0)
    network = MeanVarianceResNet(architecture, n_targets)
    for layer in network.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None
    network.train()
    with torch.no_grad():
        network(images.float())
        network.fc.weight.mul_(head_scale)
        network.fc.bias.mul_(head_scale)
    return network.eval()


def saved_module(folder: Path, name: str, architecture: str, targets, images, head_scale: float) -> Path:
    spec = ModuleSpec(name=name, architecture=architecture, targets=targets, provenance=Provenance("training"))
    network = fitted_network(architecture, len(targets), images, head_scale)
    return save_module(spec, network.state_dict(), folder / name)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory, images) -> Path:
    """A ResNet50 whose bfloat16 means move by ~0.25 target sd (0.08 at head_scale 1)."""
    return saved_module(tmp_path_factory.mktemp("drifting"), "body", "resnet50", DRIFTING_TARGETS, images, 3.0)


@pytest.fixture(scope="module")
def steady(tmp_path_factory, images) -> Path:
    """A ResNet18 with a small head: bfloat16 means within ~0.003 target sd of float32."""
    return saved_module(tmp_path_factory.mktemp("steady"), "organs", "resnet18", STEADY_TARGETS, images, 0.3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, images) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    for stem, image in zip(STEMS, images.numpy(), strict=True):
        np.save(folder / f"{stem}.npy", image)
    return folder


def mean_columns(table) -> np.ndarray:
    names = [target.name for target in DRIFTING_TARGETS + STEADY_TARGETS]
    return table[names + [f"{name}_sd" for name in names]].to_numpy()


def test_drifting_module_falls_back_to_float32_and_steady_one_keeps_bfloat16(drifting, steady, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="mimir.inference.runner"):
        reduced = run_prediction([cache], [drifting, steady], PredictOptions(device="cpu", precision="bfloat16", batch_size=2))
    full = run_prediction([cache], [drifting, steady], PredictOptions(device="cpu", precision="float32", batch_size=2))

    used, deviation = reduced.module_precisions["body"]
    assert used == "float32" and deviation > REDUCED_PRECISION_TOLERANCE_SD
    kept, small = reduced.module_precisions["organs"]
    assert kept == "bfloat16" and 0 < small <= REDUCED_PRECISION_TOLERANCE_SD
    assert full.module_precisions == {"body": ("float32", None), "organs": ("float32", None)}
    drifting_columns = slice(0, 2), slice(3, 5)
    for columns in drifting_columns:  # the fallback's means and sds are float32's to the last bit
        np.testing.assert_array_equal(mean_columns(reduced.table)[:, columns], mean_columns(full.table)[:, columns])
    assert not np.array_equal(reduced.table["liverFat"], full.table["liverFat"])  # bfloat16 really ran
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "module body" in warnings[0] and f"{deviation:.4f}" in warnings[0]


def test_steady_module_keeps_bfloat16_after_its_first_batch(steady, images):
    runner = ModuleRunner(load_module(steady), torch.bfloat16)
    reference = ModuleRunner(load_module(steady), None)
    batch = network_input(images, "cpu")
    first = runner.raw_output(batch[:2])
    assert runner.precision_used == "bfloat16"
    assert runner.verified_deviation_sd == mean_deviation_sd(first, reference.raw_output(batch[:2]), runner.spec)
    assert 0 < runner.verified_deviation_sd <= REDUCED_PRECISION_TOLERANCE_SD
    later = runner.raw_output(batch[2:])
    assert not torch.equal(later, reference.raw_output(batch[2:]))
    assert runner.verified_deviation_sd == mean_deviation_sd(first, reference.raw_output(batch[:2]), runner.spec)


@pytest.mark.parametrize("module", ["drifting", "steady"])
def test_bfloat16_means_are_within_the_tolerance_of_float32_whatever_the_module(module, images, request):
    path = request.getfixturevalue(module)
    reduced = ModuleRunner(load_module(path), torch.bfloat16).predict(images)
    full = ModuleRunner(load_module(path), None).predict(images)
    target_sd = np.array([target.sd for target in load_module(path).spec.targets])
    deviation = np.abs(reduced[0] - full[0]) / target_sd
    assert deviation.max() <= REDUCED_PRECISION_TOLERANCE_SD, deviation


def test_deviation_is_in_target_sds_and_skips_untrained_targets():
    spec = ModuleSpec(
        name="m", architecture="resnet18", provenance=Provenance("training"),
        targets=(
            TargetSpec("a", None, "cm", "continuous", mean=100.0, sd=2.0, calibration=3.0),
            TargetSpec("b", None, "kg", "continuous", mean=0.0, sd=50.0),
            TargetSpec("never", None, "kg", "continuous", mean=0.0, sd=1.0, n_train=0),
        ),
    )
    reference = np.zeros((2, 6), dtype=np.float32)
    moved = reference.copy()
    moved[0, 0] = 0.01  # a's standardised mean: 0.02 cm, 0.01 of a's sd
    moved[1, 2] = -0.03  # b: 1.5 kg, 0.03 of b's sd
    moved[:, 4] = 7.0  # an untrained target's output means nothing
    moved[:, 1] = 5.0  # log-variance: the sd, not the mean
    assert mean_deviation_sd(moved, reference, spec) == pytest.approx(0.03, rel=1e-5)
    assert mean_deviation_sd(reference, reference, spec) == 0.0
    overflowed = moved.copy()
    overflowed[1, 0] = np.inf
    assert mean_deviation_sd(overflowed, reference, spec) == math.inf


def float16_runner(overflow_on: set[int]) -> ModuleRunner:
    """A runner whose 'float16' pass is float32 slightly off, overflowing on the chosen calls."""
    spec = ModuleSpec(name="fake", architecture="resnet18", targets=STEADY_TARGETS, provenance=Provenance("training"))
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    runner = ModuleRunner(LoadedModule(spec, network, Path("fake")), torch.float16)
    calls = 0

    def forward(network_input: torch.Tensor, dtype: torch.dtype | None, member: int = 0) -> torch.Tensor:
        nonlocal calls
        with torch.inference_mode():
            output = network(network_input / 100)
        if dtype is None:
            return output
        calls += 1
        output = output + 1e-4
        if calls in overflow_on:
            output[0, 0] = math.inf
        return output

    runner._forward = forward  # type: ignore[method-assign]
    return runner


def float32_output(runner: ModuleRunner, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return runner.network(batch / 100)


def test_float16_overflow_on_a_later_batch_is_recomputed_for_that_batch_only(images, caplog):
    runner = float16_runner(overflow_on={2})
    batch = network_input(images, "cpu")
    runner.raw_output(batch)
    assert runner.precision_used == "float16" and runner.verified_deviation_sd < REDUCED_PRECISION_TOLERANCE_SD
    with caplog.at_level(logging.WARNING, logger="mimir.inference.runner"):
        recomputed = runner.raw_output(batch)
    torch.testing.assert_close(recomputed, float32_output(runner, batch), rtol=0, atol=0)
    assert "overflowed float16" in caplog.text
    assert runner.precision_used == "float16"
    assert not torch.equal(runner.raw_output(batch), float32_output(runner, batch))


def test_float16_overflow_on_the_first_batch_fails_the_check(images):
    runner = float16_runner(overflow_on={1})
    batch = network_input(images, "cpu")
    output = runner.raw_output(batch)
    assert runner.precision_used == "float32" and runner.verified_deviation_sd == math.inf
    torch.testing.assert_close(output, float32_output(runner, batch), rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_cli_summary_names_each_module_precision(precision, steady, cache, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    predict_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "predict", str(cache), "--modules", str(steady), "--out", str(tmp_path / "out.csv"),
        "--device", "cpu", "--workers", "1", "--precision", precision,
    ])
    args.quiet = True
    assert args.handler(args) == 0
    summary = capsys.readouterr().out
    if precision == "bfloat16":
        assert "precision: organs bfloat16 (0.00" in summary
    else:
        assert "precision:" not in summary
