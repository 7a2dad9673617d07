"""Recalibrating a module on held-out exams: the refit, its record, and `mimir module calibrate`."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimir.inference.modules import ModuleOutputError, ModuleSpec, Provenance, TargetSpec, read_spec, verify_module
from mimir.inference.postprocess import Z95
from mimir.inference.predict import PredictOptions, run_prediction
from mimir.inference.recalibration import RecalibrationError, recalibrated_spec

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

SPEC = ModuleSpec(
    name="body", architecture="resnet18", provenance=Provenance("training"), input_pool=4,
    weights_sha256="0" * 64, weights_bytes=1,
    targets=(
        TargetSpec("height", 50, "cm", "continuous", mean=170.0, sd=9.0, calibration=2.0, sd_p99=20.0),
        TargetSpec("weight", 21002, "kg", "continuous", mean=80.0, sd=14.0, calibration=0.7),
        TargetSpec("sex", 31, "", "binary", mean=0.5, sd=0.5),
    ),
)


def _tables(n: int, sd_height: float, true_error_sd: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions whose height sd is `sd_height` while the errors have sd `true_error_sd`."""
    rng = np.random.default_rng(seed)
    eids = np.arange(1_000_000, 1_000_000 + n)
    truth = rng.normal(170.0, 9.0, n)
    predictions = pd.DataFrame({
        "eid": eids, "instance": 2,
        "height": truth + rng.normal(0.0, true_error_sd, n), "height_sd": sd_height,
        "weight": 80.0, "weight_sd": 5.0, "sex": 0.4,
    })
    reference = pd.DataFrame({"eid": eids, "instance": 2, "height": truth, "sex": rng.integers(0, 2, n)})
    reference.loc[5:, "sex"] = np.nan
    return predictions, reference


def test_a_target_whose_intervals_are_twice_too_wide_gets_a_quarter_of_its_variance() -> None:
    predictions, reference = _tables(4000, sd_height=8.0, true_error_sd=4.0)
    spec, refits = recalibrated_spec(SPEC, predictions, reference, source="held_out.csv")
    height, weight, sex = refits
    assert height.scale == pytest.approx(0.25, rel=0.05)
    assert spec.targets[0].calibration == pytest.approx(2.0 * height.scale)
    assert spec.targets[0].sd_p99 == pytest.approx(20.0 * math.sqrt(height.scale))  # the flag follows the sds
    assert height.coverage_before > 0.99 and height.coverage_after == pytest.approx(0.95, abs=0.01)
    # no reference column, or a probability: left as they were, and said why
    assert weight.skipped == "no column in the reference" and spec.targets[1].calibration == 0.7
    assert "probability" in sex.skipped and spec.targets[2].calibration == 1.0
    record = spec.provenance.data["recalibrations"][-1]
    assert record["source"] == "held_out.csv" and record["targets"]["height"]["exams"] == 4000
    assert record["targets"]["height"]["calibration_before"] == 2.0
    # the spec still writes and reads back as a module.json
    assert ModuleSpec.from_json(spec.to_json()).targets[0].calibration == pytest.approx(spec.targets[0].calibration)


def test_too_few_reference_values_change_nothing_and_nothing_at_all_is_refused() -> None:
    predictions, reference = _tables(30, sd_height=8.0, true_error_sd=4.0)
    reference.loc[10:, "height"] = np.nan
    with pytest.raises(RecalibrationError, match="height: 10 exams with a reference value, fewer than 20"):
        recalibrated_spec(SPEC, predictions, reference)
    _, refits = recalibrated_spec(SPEC, predictions, reference, min_exams=10)
    assert refits[0].exams == 10 and not refits[0].skipped


def _reference_for(images: list[str], out: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = [{"eid": int(stem.split("_")[0]), "instance": int(stem.split("_")[2]),
             "height": rng.normal(170.0, 9.0), "weight": rng.normal(80.0, 14.0)} for stem in images]
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def test_mimir_module_calibrate_rescales_the_sds_and_keeps_the_weights(modules: list[Path], tmp_path: Path) -> None:
    from mimir.cli import main

    cache = tmp_path / "cache"
    cache.mkdir()
    stems = [f"{1_000_000 + index}_20201_2_0" for index in range(8)]
    for index, stem in enumerate(stems):
        np.save(cache / f"{stem}.npy", helpers.realistic_image(40 + index))
    reference = _reference_for(stems, tmp_path / "reference.csv", seed=3)
    body = modules[0]
    before = run_prediction([cache], [body], PredictOptions(precision="float32")).table.sort_values("eid").reset_index(drop=True)

    out = tmp_path / "recalibrated"
    assert main(["module", "calibrate", str(body), str(cache), "--reference", str(reference), "--out", str(out),
                 "--min-exams", "5", "--precision", "float32"]) == 0

    old, new = read_spec(body), verify_module(out)  # checksums of the copied weights hold
    for name in ("weights.safetensors",):
        assert (out / name).read_bytes() == (body / name).read_bytes()
    truth = pd.read_csv(reference).sort_values("eid").reset_index(drop=True)
    after = run_prediction([cache], [out], PredictOptions(precision="float32")).table.sort_values("eid").reset_index(drop=True)
    for index, name in enumerate(("height", "weight")):
        z = (truth[name] - before[name]) / before[f"{name}_sd"]
        scale = float(np.mean(z**2))  # the NLL-optimal variance scale of the old intervals
        assert new.targets[index].calibration == pytest.approx(old.targets[index].calibration * scale, rel=1e-5)
        np.testing.assert_allclose(after[name], before[name], rtol=1e-6)
        np.testing.assert_allclose(after[f"{name}_sd"], before[f"{name}_sd"] * math.sqrt(scale), rtol=1e-5)
        inside = np.abs(truth[name] - after[name]) <= Z95 * after[f"{name}_sd"]
        assert inside.mean() >= 0.75  # in-sample, 8 exams: z^2 averages 1, so most lie inside
    assert new.targets[0].sd_p99 == pytest.approx(old.targets[0].sd_p99 * math.sqrt(new.targets[0].calibration / old.targets[0].calibration))
    recorded = json.loads((out / "module.json").read_text())["provenance"]["data"]["recalibrations"]
    assert recorded[0]["source"] == str(reference) and recorded[0]["targets"]["height"]["exams"] == 8
    assert read_spec(body).targets == old.targets  # the source module is untouched


def test_calibrate_refuses_to_overwrite_its_own_module_and_keeps_an_existing_output(modules: list[Path], tmp_path: Path, capsys) -> None:
    from mimir.cli import main
    from mimir.inference.modules import save_with_spec

    with pytest.raises(ModuleOutputError, match="the module being read"):
        save_with_spec(modules[0], read_spec(modules[0]), modules[0], overwrite=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / "1000000_20201_2_0.npy", helpers.realistic_image(1))
    reference = _reference_for(["1000000_20201_2_0"], tmp_path / "reference.csv", seed=1)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert main(["module", "calibrate", str(modules[0]), str(cache), "--reference", str(reference), "--out", str(existing)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert (existing / "keep.txt").read_text() == "mine"
    # one exam is too few for the default: refused in one line, nothing written
    out = tmp_path / "new"
    assert main(["module", "calibrate", str(modules[0]), str(cache), "--reference", str(reference), "--out", str(out)]) == 2
    assert "fewer than 20" in capsys.readouterr().err and not out.exists()
