"""Batch prediction: the table, its post-processing, failures kept, outputs, precision and resume."""

from __future__ import annotations

import argparse
import builtins
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimir.cli import predict_cmd
from mimir.errors import MimirError
from mimir.imaging.compress import InputError
from mimir.inference.batching import CachedExam, iter_batches
from mimir.inference.modules import ModuleSpec, Provenance, TargetSpec, load_module, save_module
from mimir.inference.predict import (
    LONG_COLUMNS,
    Z95,
    ModuleRunner,
    OutputPathError,
    ParquetUnavailableError,
    PredictError,
    TargetConflictError,
    check_output_path,
    fold_batch_norm,
    predict,
    read_predictions,
    resolve_precision,
    run_prediction,
    subject_predictions,
    to_long,
    write_predictions,
)
from mimir.network import MeanVarianceResNet

STEMS = ("1234567_20201_2_0", "2345678_20201_2_0", "3456789_20201_3_0")
BODY_TARGETS = (
    TargetSpec("height", 50, "cm", "continuous", mean=170.0, sd=9.0, calibration=1.3, sd_p99=50.0),
    TargetSpec("weight", 21002, "kg", "continuous", mean=80.0, sd=14.0, calibration=0.7),
)
ORGAN_TARGETS = (TargetSpec("liverFat", 40061, "%", "continuous", mean=5.0, sd=4.0, calibration=1.1),)


def realistic_image(seed: int) -> np.ndarray:
    """A body-like blob: bright ellipse with smooth texture, dark background, like the cached images."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:256, :256]
    body = ((columns - 70 - rng.integers(-5, 5)) / 45.0) ** 2 + ((rows - 128) / 120.0) ** 2 < 1
    legs = ((columns - 190) / 30.0) ** 2 + ((rows - 140) / 110.0) ** 2 < 1
    texture = 40 * np.sin(rows / (7 + seed % 3)) * np.cos(columns / 11)
    image = np.zeros((3, 256, 256), dtype=np.float64)
    for channel, level in enumerate((170, 80, 50)):
        image[channel] = (body | legs) * (level + texture) + rng.normal(0, 6, (256, 256))
    return np.clip(image, 0, 255).astype(np.uint8)


def realistic_state(n_targets: int, images: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    """Random weights whose batch-norm statistics fit the images, so outputs are of order one."""
    torch.manual_seed(seed)
    network = MeanVarianceResNet("resnet18", n_targets, input_pool=4)
    for layer in network.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # a plain average over the calibration passes
    network.train()
    with torch.no_grad():
        network(torch.from_numpy(images).float())
        network.fc.weight.mul_(0.3)
    return network.state_dict()


def make_module(path: Path, name: str, targets: tuple[TargetSpec, ...], seed: int = 0) -> Path:
    images = np.stack([realistic_image(seed + index) for index in range(4)])
    spec = ModuleSpec(
        name=name, architecture="resnet18", targets=targets,
        provenance=Provenance("training"), input_pool=4, log_var_range=(-10.0, 10.0),
    )
    return save_module(spec, realistic_state(len(targets), images, seed), path)


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("modules")
    return [
        make_module(folder / "body", "body", BODY_TARGETS, seed=1),
        make_module(folder / "organs", "organs", ORGAN_TARGETS, seed=2),
    ]


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    folder.mkdir()
    for index, stem in enumerate(STEMS):
        np.save(folder / f"{stem}.npy", realistic_image(10 + index))
    return folder


def test_table_has_one_row_per_exam_and_every_column(modules, cache):
    table = predict([cache], modules, device="cpu", precision="float32")
    assert list(table["exam"]) == list(STEMS)
    assert list(table["eid"]) == [1234567, 2345678, 3456789]
    assert list(table["instance"]) == [2, 2, 3]
    expected = ["eid", "instance", "exam"]
    for name in ("height", "weight", "liverFat"):
        expected += [name, f"{name}_sd", f"{name}_low", f"{name}_high"]
    assert list(table.columns) == expected + ["qc_flag", "failure", "uncertain"]
    assert table[["height", "weight_sd", "liverFat_high"]].notna().all().all()
    assert (table["failure"] == "").all()


def test_values_are_the_post_processed_network_output(modules, cache):
    table = predict([cache], modules, device="cpu", precision="float32")
    network = load_module(modules[0]).network
    image = torch.from_numpy(np.load(cache / f"{STEMS[1]}.npy"))[None].float()
    with torch.no_grad():
        raw = network(image)[0].double().numpy()
    row = table.iloc[1]
    for index, target in enumerate(BODY_TARGETS):
        mean = raw[2 * index] * target.sd + target.mean
        sd = math.sqrt(math.exp(raw[2 * index + 1]) * target.sd**2 * target.calibration)
        assert row[target.name] == pytest.approx(mean, rel=1e-4, abs=1e-4 * target.sd)
        assert row[f"{target.name}_sd"] == pytest.approx(sd, rel=1e-3)


def test_interval_is_mean_plus_minus_1_96_sd(modules, cache):
    table = predict([cache], modules, device="cpu", precision="float32")
    assert Z95 == pytest.approx(1.959964, abs=1e-6)
    for name in ("height", "liverFat"):
        np.testing.assert_allclose(table[f"{name}_low"], table[name] - 1.959964 * table[f"{name}_sd"], rtol=1e-6)
        np.testing.assert_allclose(table[f"{name}_high"], table[name] + 1.959964 * table[f"{name}_sd"], rtol=1e-6)


def test_uncertain_lists_targets_above_the_cross_validation_p99(tmp_path, cache):
    picky = (
        TargetSpec("height", 50, "cm", "continuous", mean=170.0, sd=9.0, sd_p99=1e-9),
        TargetSpec("weight", 21002, "kg", "continuous", mean=80.0, sd=14.0, sd_p99=1e9),
        TargetSpec("age", 21003, "years", "continuous", mean=64.0, sd=7.0, sd_p99=1e-9),
    )
    table = predict([cache], [make_module(tmp_path / "picky", "picky", picky)], device="cpu", precision="float32")
    assert list(table["uncertain"]) == ["height;age"] * len(STEMS)


def test_failed_and_unloadable_exams_keep_a_row(modules, cache, tmp_path):
    np.save(cache / "4567890_20201_2_0.npy", np.zeros((3, 128, 128), dtype=np.uint8))
    np.save(cache / "5678901_20201_2_0.npy", np.zeros((3, 256, 256), dtype=np.float32))
    zips = tmp_path / "zips"
    zips.mkdir()
    (zips / "6789012_20201_2_0.zip").write_bytes(b"this is not a zip")
    table = predict([cache, zips / "6789012_20201_2_0.zip"], modules, cache=tmp_path / "new_cache",
                    device="cpu", workers=1)
    assert len(table) == len(STEMS) + 3
    failures = table.set_index("exam")["failure"]
    assert failures["4567890_20201_2_0"].startswith("load: ") and "(3, 128, 128)" in failures["4567890_20201_2_0"]
    assert failures["5678901_20201_2_0"].startswith("load: ") and "float32" in failures["5678901_20201_2_0"]
    assert failures["6789012_20201_2_0"].split(":")[0] in {"open", "read", "zip"}
    failed = table[table["failure"] != ""]
    assert len(failed) == 3
    assert failed[["height", "height_sd", "liverFat_low"]].isna().all().all()
    assert table[table["failure"] == ""]["height"].notna().all()


def test_qc_flag_comes_from_the_cache_sidecar(modules, cache):
    (cache / "qc").mkdir()
    (cache / "qc" / f"{STEMS[0]}.json").write_text(json.dumps({"subject": STEMS[0], "flag": "seam;low_coverage"}))
    table = predict([cache], modules, device="cpu")
    assert list(table["qc_flag"]) == ["seam;low_coverage", "", ""]


def test_two_modules_with_one_target_is_an_error(modules, cache):
    with pytest.raises(TargetConflictError, match="height"):
        predict([cache], [modules[0], modules[0]], device="cpu")


def test_missing_input_is_an_input_error(modules, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        predict([tmp_path / "absent.zip"], modules, device="cpu")


def test_long_format_has_one_row_per_exam_and_target(modules, cache, tmp_path):
    table = predict([cache], modules, device="cpu")
    long = to_long(table)
    assert list(long.columns) == list(LONG_COLUMNS)
    assert len(long) == len(STEMS) * 3
    first = long[(long["exam"] == STEMS[2]) & (long["target"] == "liverFat")].iloc[0]
    assert (first["module"], first["unit"], first["eid"], first["instance"]) == ("organs", "%", 3456789, 3)
    assert first["mean"] == pytest.approx(table.iloc[2]["liverFat"])
    assert first["high"] == pytest.approx(table.iloc[2]["liverFat_high"])
    out = write_predictions(table, tmp_path / "long.csv", long=True)
    assert len(pd.read_csv(out)) == len(STEMS) * 3


def test_csv_round_trip_and_atomic_write(modules, cache, tmp_path):
    table = predict([cache], modules, device="cpu")
    out = write_predictions(table, tmp_path / "predictions.csv")
    back = read_predictions(out)
    np.testing.assert_allclose(back["weight_sd"], table["weight_sd"], rtol=1e-6)
    assert list(back["failure"]) == [""] * len(STEMS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "predictions.csv"]


def test_parquet_output(modules, cache, tmp_path):
    pytest.importorskip("pyarrow")
    table = predict([cache], modules, device="cpu")
    back = pd.read_parquet(write_predictions(table, tmp_path / "predictions.parquet"))
    assert list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back["height"], table["height"])


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow":
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ParquetUnavailableError, match=r"pip install 'mimir-ukb\[parquet\]'"):
        check_output_path(tmp_path / "predictions.parquet")


def test_unwritable_output_is_refused_before_any_work(modules, cache, tmp_path):
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "predictions.csv")
    with pytest.raises(OutputPathError, match=".csv or .parquet"):
        check_output_path(tmp_path / "predictions.xlsx")
    with pytest.raises(OutputPathError, match="folder"):
        check_output_path(cache)
    zips = tmp_path / "zips"
    zips.mkdir()
    (zips / "1111111_20201_2_0.zip").write_bytes(b"not a zip")
    out = tmp_path / "missing" / "predictions.csv"
    assert run_cli(["predict", str(zips), "--modules", str(modules[0]), "--out", str(out)]) == 2
    assert not out.parent.exists()
    assert not (tmp_path / "predictions_cache").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="cannot write"):
            check_output_path(folder / "predictions.csv")
    finally:
        folder.chmod(0o700)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true", default=True)
    predict_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.quiet = True
    try:
        return args.handler(args)
    except MimirError as error:
        return error.exit_code


def test_cli_writes_the_table_and_rejects_missing_inputs(modules, cache, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert run_cli(["predict", str(cache), "--modules", *map(str, modules), "--out", str(out), "--device", "cpu"]) == 0
    assert len(pd.read_csv(out)) == len(STEMS)
    summary = capsys.readouterr().out
    assert "module body" in summary and "exams per minute" in summary
    missing = tmp_path / "nothing_here.zip"
    assert run_cli(["predict", str(missing), "--modules", str(modules[0]), "--out", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_precision_choice():
    assert resolve_precision("auto", "cpu") is None
    assert resolve_precision("float32", "cpu") is None
    assert resolve_precision("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(PredictError, match="float16 is for CUDA"):
        resolve_precision("float16", "cpu")
    with pytest.raises(PredictError, match="unknown precision"):
        resolve_precision("half", "cpu")


def test_bfloat16_means_within_0_02_sd_of_float32(modules, cache):
    images = torch.from_numpy(np.stack([np.load(cache / f"{stem}.npy") for stem in STEMS]))
    for path in modules:
        full_module, half_module = load_module(path), load_module(path)
        full = ModuleRunner(full_module, None).predict(images)
        half = ModuleRunner(half_module, torch.bfloat16).predict(images)
        target_sd = np.array([target.sd for target in full_module.spec.targets])
        deviation = np.abs(half[0] - full[0]).max(axis=0) / target_sd
        assert (deviation <= 0.02).all(), deviation
        np.testing.assert_allclose(half[1], full[1], rtol=0.1)
        assert not np.array_equal(half[0], full[0])  # bfloat16 really ran


def test_folding_batch_norm_keeps_the_output(modules, cache):
    images = torch.from_numpy(np.stack([np.load(cache / f"{stem}.npy") for stem in STEMS])).float()
    network = load_module(modules[0]).network
    with torch.no_grad():
        before = network(images)
        assert fold_batch_norm(network) == 20  # resnet18: stem, 16 in blocks, 3 downsamples
        assert not any(isinstance(layer, torch.nn.BatchNorm2d) for layer in network.modules())
        torch.testing.assert_close(network(images), before, rtol=1e-4, atol=1e-4)


def test_batches_keep_order_report_failures_and_stop_early(cache):
    np.save(cache / "0000001_20201_2_0.npy", np.zeros((2, 2), dtype=np.uint8))
    exams = [CachedExam(path.stem, path) for path in sorted(cache.glob("*.npy"))]
    batches = list(iter_batches(exams, batch_size=2))
    assert [stem for batch in batches for stem in batch.stems] == list(STEMS)
    assert list(batches[0].failures) == ["0000001_20201_2_0"]
    assert batches[0].images.shape == (1, 3, 256, 256) and batches[0].images.dtype == torch.uint8
    for _ in iter_batches(exams * 20, batch_size=1, prefetch=1):
        break  # the reader thread must end, not hang the test


def test_rerun_resumes_from_the_cache(tiny_cohort, modules, tmp_path):
    pytest.importorskip("mimir.synth.anatomy")
    zips = sorted(tiny_cohort.glob("*.zip"))[:2]
    cache = tmp_path / "cache"
    first = run_prediction(zips, modules, cache=cache, device="cpu", workers=1)
    assert (first.compressed, first.reused) == (2, 0)
    assert (first.table["failure"] == "").all()
    assert first.table["height"].notna().all()
    stamps = {path: path.stat().st_mtime_ns for path in cache.glob("*.npy")}
    second = run_prediction(zips, modules, cache=cache, device="cpu", workers=1)
    assert (second.compressed, second.reused) == (0, 2)
    assert {path: path.stat().st_mtime_ns for path in cache.glob("*.npy")} == stamps
    pd.testing.assert_frame_equal(first.table, second.table)


def test_prediction_does_not_import_training_code():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import mimir.inference.predict, mimir.inference.batching, mimir.cli.predict_cmd, mimir.cli.show_cmd\n"
        "assert not [name for name in sys.modules if name.startswith('mimir.learn')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_subject_predictions_lists_each_target_with_its_interval(modules, cache):
    table = predict([cache], modules[:1], device="cpu")
    rows = subject_predictions(table, STEMS[0])
    assert list(rows["name"]) == ["height", "weight"]
    assert list(rows["unit"]) == ["cm", "kg"]
    assert rows.loc[0, "low"] == pytest.approx(table.loc[0, "height_low"])
    assert list(rows["module"]) == ["body", "body"]
    without_attrs = pd.DataFrame(table.to_dict(orient="list"))
    assert list(subject_predictions(without_attrs, STEMS[0])["module"]) == ["experimental", "experimental"]
    with pytest.raises(PredictError, match="not in the predictions table"):
        subject_predictions(table, "7654321_20201_2_0")
