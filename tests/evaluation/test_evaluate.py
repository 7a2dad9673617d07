import argparse
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import r2_score, roc_auc_score

from mimir.cli import UsageError, evaluate_cmd
from mimir.cli.common_flags import OutputExistsError
from mimir.evaluation.calibration import auce
from mimir.evaluation.evaluate import (
    METRIC_COLUMNS,
    EvaluationInputError,
    apply_calibration_factors,
    evaluate_predictions,
    fit_calibration_factors,
    metrics_markdown,
    write_metrics,
)
from mimir.evaluation.metrics import icc_2_1
from mimir.targets.catalog import UnknownTargetError, get_target

N = 400


@pytest.fixture
def cohort():
    """Reference targets and predictions whose sd is too small by a factor of 2 (variance x 1/4)."""
    rng = np.random.default_rng(7)
    eids = np.arange(1000000, 1000000 + N)
    height = rng.normal(170, 9, N)
    vat = rng.gamma(4, 0.8, N)
    sex = rng.integers(0, 2, N).astype(float)
    reference = pd.DataFrame({"eid": eids, "instance": 2, "height": height, "AtlasVatVolume": vat, "sex": sex})
    reference.loc[:9, "height"] = np.nan
    height_sd = rng.uniform(1, 3, N)
    predictions = pd.DataFrame(
        {
            "eid": eids[::-1],  # order must not matter
            "instance": 2,
            "height": (height + height_sd * rng.standard_normal(N))[::-1],
            "height_sd": (height_sd / 2)[::-1],
            "AtlasVatVolume": (vat + rng.normal(0, 0.3, N))[::-1],
            "sex": np.clip(sex + rng.normal(0, 0.3, N), 0, 1)[::-1],
            "sex_sd": np.full(N, 0.2),
        }
    )
    return predictions, reference


def test_metrics_table_matches_direct_computation(cohort):
    predictions, reference = cohort
    table = evaluate_predictions(predictions, reference).set_index("name")
    assert list(table.reset_index().columns) == list(METRIC_COLUMNS)
    assert list(table.index) == ["height", "sex", "AtlasVatVolume"]  # catalog order
    joined = reference.merge(predictions, on=["eid", "instance"], suffixes=("_ref", ""))
    valid = joined["height_ref"].notna()
    height = table.loc["height"]
    assert height["n"] == N - 10
    assert height["r2"] == pytest.approx(r2_score(joined.loc[valid, "height_ref"], joined.loc[valid, "height"]))
    assert height["icc"] == pytest.approx(icc_2_1(joined["height"], joined["height_ref"]))
    assert height["auce"] == pytest.approx(auce(joined["height"], joined["height_sd"], joined["height_ref"]))
    assert height["variance_factor"] == pytest.approx(4.0, rel=0.2)
    assert height["auce_scaled"] < height["auce"]
    assert height["ukb_field"] == 12144 and height["unit"] == "cm" and height["module"] == "experimental"
    assert height["cv_icc"] == get_target("height").published["cv_icc"]
    assert math.isnan(height["auc"])
    sex = table.loc["sex"]
    assert sex["kind"] == "binary"
    assert sex["auc"] == pytest.approx(roc_auc_score(joined["sex_ref"], joined["sex"]))
    assert 0 < sex["precision"] <= 1 and 0 < sex["recall"] <= 1
    # a probability: no MAPE (a percentage of 0/1 labels) and no AUCE (no normal interval), sd or not
    assert "sex_sd" in predictions.columns
    for metric in ("mape_percent", "auce", "variance_factor", "auce_scaled"):
        assert math.isnan(sex[metric]), metric
    assert not math.isnan(height["mape_percent"])
    vat = table.loc["AtlasVatVolume"]
    assert math.isnan(vat["auce"]) and math.isnan(vat["variance_factor"])  # no AtlasVatVolume_sd column
    assert vat["mae"] == pytest.approx(np.mean(np.abs(joined["AtlasVatVolume"] - joined["AtlasVatVolume_ref"])))
    assert vat["bias"] == pytest.approx(np.mean(joined["AtlasVatVolume"] - joined["AtlasVatVolume_ref"]))


def test_join_uses_instance_only_when_both_tables_have_it(cohort):
    predictions, reference = cohort
    repeat_visit = predictions.assign(instance=3)
    with pytest.raises(EvaluationInputError, match="same imaging instance"):
        evaluate_predictions(repeat_visit, reference)
    without_instance = evaluate_predictions(predictions.drop(columns="instance"), reference)
    assert without_instance.loc[0, "n"] == N - 10


def test_explicit_targets_and_missing_columns(cohort):
    predictions, reference = cohort
    table = evaluate_predictions(predictions, reference, [get_target("AtlasVatVolume")])
    assert table["name"].tolist() == ["AtlasVatVolume"]
    with pytest.raises(EvaluationInputError, match="'weight' has no column in the predictions"):
        evaluate_predictions(predictions, reference, [get_target("weight")])
    with pytest.raises(EvaluationInputError, match="no catalog target"):
        evaluate_predictions(predictions[["eid", "instance"]], reference)


def test_repeated_keys_are_rejected(cohort):
    predictions, reference = cohort
    with pytest.raises(EvaluationInputError, match="reference table repeats eid/instance"):
        evaluate_predictions(predictions, pd.concat([reference, reference.iloc[:1]]))
    with pytest.raises(EvaluationInputError, match="has no 'eid' column"):
        evaluate_predictions(predictions.drop(columns="eid"), reference)


def test_non_binary_reference_of_a_binary_target_only_loses_binary_metrics(cohort, caplog):
    predictions, reference = cohort
    coded_one_two = reference.assign(sex=reference["sex"] + 1)
    table = evaluate_predictions(predictions, coded_one_two).set_index("name")
    assert math.isnan(table.loc["sex", "auc"]) and math.isnan(table.loc["sex", "recall"])
    assert table.loc["sex", "n"] == N and not math.isnan(table.loc["sex", "mae"])
    assert math.isnan(table.loc["sex", "mape_percent"]), "still a binary target: no MAPE"
    assert "sex: a binary reference must hold only 0 and 1" in caplog.text


def test_calibration_factors_fit_and_apply(cohort):
    predictions, reference = cohort
    factors = fit_calibration_factors(predictions, reference)
    assert set(factors) == {"height", "sex"}
    assert factors["height"] == pytest.approx(4.0, rel=0.2)
    calibrated = apply_calibration_factors(predictions, {"height": factors["height"]})
    np.testing.assert_allclose(calibrated["height_sd"], predictions["height_sd"] * math.sqrt(factors["height"]))
    np.testing.assert_array_equal(calibrated["sex_sd"], predictions["sex_sd"])
    after = evaluate_predictions(calibrated, reference).set_index("name")
    assert after.loc["height", "variance_factor"] == pytest.approx(1.0)
    with pytest.raises(EvaluationInputError, match="no column 'weight_sd'"):
        apply_calibration_factors(predictions, {"weight": 2.0})


def test_write_metrics_csv_and_markdown(cohort, tmp_path):
    predictions, reference = cohort
    metrics = evaluate_predictions(predictions, reference)
    csv_path, markdown_path = write_metrics(metrics, tmp_path / "eval")
    round_trip = pd.read_csv(csv_path)
    assert round_trip["name"].tolist() == metrics["name"].tolist()
    np.testing.assert_allclose(round_trip["icc"], metrics["icc"])
    markdown = markdown_path.read_text()
    assert markdown == metrics_markdown(metrics)
    lines = markdown.splitlines()
    assert lines[0].startswith("| target | unit | N | ICC")
    assert len(lines) == 2 + len(metrics)
    assert lines[2].startswith(f"| height | cm | {N - 10} | ")


def run_evaluate_command(argv):
    parser = argparse.ArgumentParser()
    evaluate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", *argv])
    return args.handler(args)


def test_evaluate_command_with_raw_export_reference(cohort, tmp_path, capsys):
    predictions, reference = cohort
    predictions_path = tmp_path / "predictions.csv"
    predictions.to_csv(predictions_path, index=False)
    export = reference.drop(columns="instance").rename(
        columns={"height": "12144-2.0", "AtlasVatVolume": "22407-2.0", "sex": "31-0.0"}
    )
    export_path = tmp_path / "ukb.csv"
    export.to_csv(export_path, index=False)
    out = tmp_path / "eval"
    assert run_evaluate_command([str(predictions_path), str(export_path), "--out", str(out)]) == 0
    written = pd.read_csv(out / "metrics.csv").set_index("name")
    expected = evaluate_predictions(predictions, reference).set_index("name")
    np.testing.assert_allclose(written.loc[expected.index, "icc"], expected["icc"])
    assert "evaluated 3 targets" in capsys.readouterr().out
    again = [str(predictions_path), str(export_path), "--out", str(out), "--targets", "sex"]
    with pytest.raises(OutputExistsError, match="pass --force"):  # the first evaluation is not replaced silently
        run_evaluate_command(again)
    assert run_evaluate_command([*again, "--force"]) == 0
    assert pd.read_csv(out / "metrics.csv")["name"].tolist() == ["sex"]


def test_evaluate_command_usage_errors(cohort, tmp_path):
    predictions, reference = cohort
    predictions_path = tmp_path / "predictions.csv"
    predictions.to_csv(predictions_path, index=False)
    reference_path = tmp_path / "reference.csv"
    reference.to_csv(reference_path, index=False)
    out = str(tmp_path / "eval")
    with pytest.raises(UnknownTargetError, match="unknown target 'heigth'"):
        run_evaluate_command([str(predictions_path), str(reference_path), "--out", out, "--targets", "heigth"])
    with pytest.raises(UsageError, match="no such reference file"):
        run_evaluate_command([str(predictions_path), str(tmp_path / "nope.csv"), "--out", out])
    predictions.assign(instance=3).to_csv(predictions_path, index=False)
    with pytest.raises(EvaluationInputError, match="same imaging instance"):
        run_evaluate_command([str(predictions_path), str(reference_path), "--out", out])
    predictions_path.write_text("")
    with pytest.raises(EvaluationInputError, match="predictions.csv: not a readable CSV table"):
        run_evaluate_command([str(predictions_path), str(reference_path), "--out", out])
    assert not (tmp_path / "eval").exists()


def test_predictions_with_uk_biobank_column_names_are_evaluated_by_catalog_name(cohort, tmp_path):
    from mimir.evaluation.evaluate import read_predictions_csv

    predictions, reference = cohort
    ukb = predictions.rename(columns={"height": "p12144_i2", "height_sd": "p12144_i2_sd", "sex": "p31_i0",
                                      "sex_sd": "p31_i0_sd", "AtlasVatVolume": "p22407_i2"})
    expected = evaluate_predictions(predictions, reference)
    pd.testing.assert_frame_equal(evaluate_predictions(ukb, reference), expected)
    path = tmp_path / "ukb.csv"
    ukb.to_csv(path, index=False)
    assert {"height", "height_sd", "sex", "AtlasVatVolume"} <= set(read_predictions_csv(path).columns)
    # a table of two instances cannot carry p{field}_i{instance} names of one: left as it is
    mixed = ukb.assign(instance=[2, 3] * (len(ukb) // 2) + [2] * (len(ukb) % 2))
    with pytest.raises(EvaluationInputError, match="no catalog target"):
        evaluate_predictions(mixed, reference)


def test_uk_biobank_names_of_every_column_of_a_target_are_renamed_together():
    """An ensemble's table also has the sd's two parts: all of a target's columns get its catalog name."""
    from mimir.evaluation.evaluate import with_catalog_names

    columns = ["p12144_i2", "p12144_i2_sd", "p12144_i2_low", "p12144_i2_high", "p12144_i2_sd_aleatoric", "p12144_i2_sd_epistemic"]
    table = pd.DataFrame([[2, 170.0, 2.0, 166.1, 173.9, 1.8, 0.9]], columns=["instance", *columns])
    renamed = with_catalog_names(table)
    assert list(renamed.columns) == [
        "instance", "height", "height_sd", "height_low", "height_high", "height_sd_aleatoric", "height_sd_epistemic"]
