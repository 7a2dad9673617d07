import argparse
import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from mimir.cli import UsageError, crossval_cmd
from mimir.inference.module_build import MAX_HELD_OUT_FLAG_RATE, read_crossval
from mimir.learn.baseline import BaselineConfig
from mimir.runs.config import TrainConfig
from mimir.learn.crossval import (
    CrossvalError,
    IncompleteCrossvalError,
    merge_crossval,
    run_crossval,
)
from mimir.learn.splits import SplitsError
from mimir.runs.layout import CrossvalFolder

MODULE = {"cvtest": ["age", "height", "sex"]}
TARGETS = MODULE["cvtest"]
FOLDS = 3
BASELINE = BaselineConfig(size=8)


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(
        architecture="resnet18", init="scratch", input_pool=8, autocast="float32", batch_size=4, iterations=6,
        learning_rate=1e-3, lr_milestones=[4], checkpoint_every=3, log_every=1, eval_batch_size=8,
        deterministic=True, seed=0, max_shift=4, modules=MODULE,
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """18 subjects (some with two visits) whose image brightness sets age, height and sex."""
    root = tmp_path_factory.mktemp("cv_cohort")
    cache = root / "cache"
    cache.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for subject in range(18):
        for instance in (2, 3) if subject % 4 == 0 else (2,):
            brightness = rng.uniform(20, 220)
            image = np.clip(rng.normal(brightness, 10, (3, 256, 256)), 0, 255).astype(np.uint8)
            eid = 1_000_000 + subject
            np.save(cache / f"{eid}_20201_{instance}_0.npy", image)
            rows.append({
                "eid": eid, "instance": instance, "age": 40 + brightness / 8,
                "height": 150 + brightness / 4 if subject % 3 else np.nan, "sex": float(brightness > 120),
            })
    rows.append({"eid": 2_000_000, "instance": 2, "age": 50.0, "height": 170.0, "sex": 1.0})  # no image
    targets = pd.DataFrame(rows)
    targets.to_csv(root / "targets.csv", index=False)
    return cache, root / "targets.csv"


@pytest.fixture(scope="module")
def full_run(cohort, tmp_path_factory):
    cache, targets = cohort
    out = tmp_path_factory.mktemp("cv_full") / "cv"
    result = run_crossval(tiny_config(), cache, targets, "cvtest", out, folds=FOLDS, device="cpu", baseline=BASELINE)
    return out, result


def test_full_run_writes_every_output(full_run):
    out, result = full_run
    assert result.merged and result.completed == [0, 1, 2] and result.missing == []
    for name in ("config.toml", "splits.json", "reference.csv", "data_summary.json", "crossval.json",
                 "oof_predictions.csv", "oof_predictions_calibrated.csv", "calibration.csv", "metrics.csv",
                 "metrics.md", "curves.csv", "baseline_predictions.csv", "baseline_metrics.csv", "summary.csv"):
        assert (out / name).is_file(), name
    assert not (out / "report.html").exists(), "pages are rendered by the caller, not by cross-validation"
    record = json.loads((out / "crossval.json").read_text())
    assert record["module"] == "cvtest" and record["folds"] == FOLDS
    assert set(record["merge"]["fold_training_seconds"]) == {"0", "1", "2"}
    assert record["sessions"][0]["software"]["torch"]
    data = json.loads((out / "data_summary.json").read_text())
    assert data["n_subjects"] == 18 and data["n_exams"] == 23
    assert sum(fold["n_exams"] for fold in data["folds"]) == 23


def test_oof_covers_each_exam_with_a_reference_exactly_once(full_run, cohort):
    out, _ = full_run
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert list(oof.columns) == ["eid", "instance", "fold", *[c for t in TARGETS for c in (t, f"{t}_sd")]]
    targets = pd.read_csv(cohort[1])
    with_image = targets[targets["eid"] < 2_000_000]
    assert not oof.duplicated(["eid", "instance"]).any()
    assert set(zip(oof["eid"], oof["instance"], strict=True)) == set(zip(with_image["eid"], with_image["instance"], strict=True))
    splits = json.loads((out / "splits.json").read_text())
    fold_of = {eid: int(fold) for fold, eids in splits["eids"].items() for eid in eids}
    assert (oof["fold"] == oof["eid"].map(fold_of)).all()
    assert oof.groupby("eid")["fold"].nunique().max() == 1
    assert oof[[f"{t}_sd" for t in TARGETS]].gt(0).all().all()


def test_calibration_factor_is_mean_squared_z_and_is_applied(full_run):
    out, result = full_run
    oof = pd.read_csv(out / "oof_predictions.csv")
    calibrated = pd.read_csv(out / "oof_predictions_calibrated.csv")
    reference = pd.read_csv(out / "reference.csv")
    calibration = pd.read_csv(out / "calibration.csv").set_index("target")
    assert list(calibration.index) == TARGETS
    for name in TARGETS:
        z = (reference[name] - oof[name]) / oof[f"{name}_sd"]
        factor = calibration.loc[name, "variance_scale"]
        assert factor == pytest.approx(np.nanmean(z**2))
        assert calibration.loc[name, "n"] == reference[name].notna().sum()
        np.testing.assert_allclose(calibrated[f"{name}_sd"], oof[f"{name}_sd"] * math.sqrt(factor))
        np.testing.assert_array_equal(calibrated[name], oof[name])
    # inference reads the folder as it is written here
    summary = read_crossval(out, TARGETS)
    assert summary.calibration["age"] == pytest.approx(calibration.loc["age", "variance_scale"])
    assert "icc" in summary.metrics["height"]
    joined = reference.merge(oof, on=["eid", "instance"], suffixes=("_reference", ""))
    assert summary.metrics["height"]["bias"] == pytest.approx((joined["height"] - joined["height_reference"]).mean())
    # the flag's threshold is kept only where thresholds carry over between the fold networks
    rate = summary.metrics["age"]["uncertain_rate_held_out"]
    assert ("age" in summary.sd_p99) == (rate <= MAX_HELD_OUT_FLAG_RATE)
    assert "sex" not in summary.sd_p99, "a binary target is never flagged"


def test_metrics_curves_and_baseline(full_run):
    out, result = full_run
    metrics = pd.read_csv(out / "metrics.csv").set_index("name")
    assert metrics.loc["height", "n"] == 15 and metrics.loc["age", "n"] == 23
    assert math.isfinite(metrics.loc["sex", "auc"]) and math.isnan(metrics.loc["age", "auc"])
    assert {"auce", "auce_scaled", "cv_icc", "cv_mae"} <= set(metrics.columns)
    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == ["target", "kind", "x", "y", "stage"]
    counts = curves.groupby(["target", "kind", "stage"]).size()
    assert len(counts) == 3 * 3 * 2 and (counts == 10).all()
    after = curves[(curves["kind"] == "calibration") & (curves["stage"] == "after") & (curves["target"] == "age")]
    summary = pd.read_csv(out / "summary.csv").set_index("name")
    from mimir.evaluation.calibration import area_under_calibration_error

    assert summary.loc["age", "auce_calibrated"] == pytest.approx(area_under_calibration_error(after["x"], after["y"]))
    # brightness is linear in the targets: the ridge baseline is nearly exact
    assert summary.loc["age", "baseline_icc"] > 0.9
    assert summary.loc["age", "baseline_mae"] < summary.loc["age", "mae"]
    baseline = pd.read_csv(out / "baseline_predictions.csv")
    assert len(baseline) == 23 and list(baseline.columns) == ["eid", "instance", "fold", *TARGETS]
    assert (json.loads((out / "fold_0" / "baseline_alphas.json").read_text()).keys()) == set(TARGETS)


def test_fold_subset_with_interruption_then_merge_equals_running_all(full_run, cohort, tmp_path):
    cache, targets = cohort
    out = tmp_path / "cv"

    def interrupt(fold, event):
        if fold == 1 and event.iteration == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_crossval(tiny_config(), cache, targets, "cvtest", out, folds=FOLDS, fold_ids=[1], device="cpu",
                     baseline=BASELINE, progress=interrupt)
    assert not CrossvalFolder(out).fold(1).is_complete()
    partial = run_crossval(tiny_config(), cache, targets, "cvtest", out, fold_ids=[1], device="cpu",
                           baseline=BASELINE)
    sessions = json.loads((out / "fold_1" / "run.json").read_text())["sessions"]
    assert sessions[-1]["start_iteration"] == 3  # resumed from the checkpoint
    assert not partial.merged and partial.completed == [1] and partial.missing == [0, 2]
    with pytest.raises(IncompleteCrossvalError, match="folds 0, 2 are not complete"):
        merge_crossval(out)
    some = merge_crossval(out, allow_partial=True)
    assert set(pd.read_csv(some.oof_predictions)["fold"]) == {1}
    assert json.loads((out / "crossval.json").read_text())["merge"]["partial"] is True

    result = run_crossval(tiny_config(), cache, targets, "cvtest", out, fold_ids=[0, 2], device="cpu",
                          baseline=BASELINE)
    assert result.merged and result.completed == [0, 1, 2]
    full_out, _ = full_run
    for name in ("oof_predictions.csv", "calibration.csv", "baseline_predictions.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(full_out / name), rtol=1e-5)


def test_complete_folds_are_skipped_and_mismatches_are_errors(full_run, cohort):
    out, _ = full_run
    cache, targets = cohort
    before = (out / "fold_0" / "fold.json").read_text()
    again = run_crossval(tiny_config(), cache, targets, "cvtest", out, fold_ids=[0], device="cpu",
                         baseline=BASELINE)
    assert again.fold_seconds == {} and (out / "fold_0" / "fold.json").read_text() == before
    with pytest.raises(SplitsError, match="folds 3 \\(asked: 5\\)"):
        run_crossval(tiny_config(), cache, targets, "cvtest", out, folds=5, device="cpu", baseline=BASELINE)
    with pytest.raises(CrossvalError, match="differs in iterations"):
        run_crossval(tiny_config(iterations=7), cache, targets, "cvtest", out, device="cpu", baseline=BASELINE)
    with pytest.raises(CrossvalError, match="baseline settings"):
        run_crossval(tiny_config(), cache, targets, "cvtest", out, device="cpu", baseline=BaselineConfig(size=16))
    with pytest.raises(CrossvalError, match="fold ids must lie in 0..2"):
        run_crossval(tiny_config(), cache, targets, "cvtest", out, fold_ids=[3], device="cpu", baseline=BASELINE)


def test_cli_merge_and_usage_errors(full_run, tmp_path, capsys):
    out, _ = full_run
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    crossval_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["crossval", "merge", str(out), "--no-report"])
    assert args.handler(args) == 0
    assert "merged folds 0, 1, 2 of 3" in capsys.readouterr().out
    assert not (out / "report.html").exists()
    args = parser.parse_args(["crossval", "merge", str(out)])
    assert args.handler(args) == 0
    assert str(out / "report.html") in capsys.readouterr().out and (out / "report.html").is_file()
    args = parser.parse_args(["crossval", "merge", str(tmp_path)])
    with pytest.raises(CrossvalError, match="not a cross-validation folder"):
        args.handler(args)
    args = parser.parse_args(["crossval", "run", "--cache", str(tmp_path), "--targets", str(tmp_path),
                              "--module", "age", "--out", str(tmp_path / "new")])
    with pytest.raises(UsageError, match="pass --config"):
        args.handler(args)


def test_merging_a_folder_without_its_reference_table_is_an_error(tmp_path):
    (tmp_path / "splits.json").write_text("{}")
    with pytest.raises(CrossvalError, match=r"not a cross-validation folder \(no reference.csv\)"):
        merge_crossval(tmp_path)


def test_incomplete_crossval_error_survives_pickling(tmp_path):
    """Errors cross process boundaries (worker pools, clusters) by pickle."""
    import pickle

    error = IncompleteCrossvalError(tmp_path, [0, 2])
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is IncompleteCrossvalError
    assert str(copy) == str(error) and copy.missing == [0, 2]


def test_cli_run_writes_one_progress_line_per_fold_to_a_log(cohort, tmp_path, capsys):
    cache, targets = cohort
    config_path = tmp_path / "tiny.toml"
    tiny_config(iterations=2).write_toml(config_path)
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    crossval_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["crossval", "run", "--cache", str(cache), "--targets", str(targets), "--module", "cvtest",
                              "--config", str(config_path), "--out", str(tmp_path / "cv"), "--folds", "3",
                              "--fold-ids", "0,1", "--device", "cpu", "--no-baseline"])
    assert args.handler(args) == 0
    lines = capsys.readouterr().err.splitlines()  # stderr is no terminal: plain lines, no bars
    assert [line.split(", ")[0] for line in lines] == ["fold 0 2/2 (100 %)", "fold 1 2/2 (100 %)"]
    assert all(", loss " in line for line in lines)


def test_cli_exclude_leaves_listed_exams_out_of_every_fold_and_counts_them(cohort, tmp_path, capsys):
    from mimir.cli import main

    cache, targets = cohort
    config_path = tmp_path / "tiny.toml"
    tiny_config(iterations=2).write_toml(config_path)
    listed = tmp_path / "artefacts.csv"
    listed.write_text("eid,instance,reason\n1000001,,motion\n1000000,3,swap\n")  # a subject, and one visit
    out = tmp_path / "cv"
    argv = ["-q", "crossval", "run", "--cache", str(cache), "--targets", str(targets), "--module", "cvtest",
            "--config", str(config_path), "--out", str(out), "--folds", "3", "--fold-ids", "0", "--device", "cpu",
            "--no-baseline", "--exclude", str(listed)]
    assert main(argv) == 0
    assert f"2 cached exams left out: on the exclusion list {listed}" in capsys.readouterr().out
    folder = CrossvalFolder(out)
    reference = pd.read_csv(folder.reference)
    keys = set(zip(reference["eid"], reference["instance"], strict=True))
    assert (1000001, 2) not in keys and (1000000, 3) not in keys and (1000000, 2) in keys
    assert json.loads(folder.data_summary.read_text())["dropped"]["excluded_by_list"] == 2
    assert main(argv[:-2]) == 2  # the same folder without the list: other exams, refused
    assert "the data differ from those" in capsys.readouterr().err


def test_folds_ask_a_cluster_for_a_gpu_only_on_cuda():
    from mimir.learn.crossval import fold_resources

    assert fold_resources("cuda") == {"GPU": 1} and fold_resources("cuda:1") == {"GPU": 1}
    assert fold_resources("cpu") is None and fold_resources("auto") is None


def test_a_fold_that_fails_on_the_cluster_is_named_after_the_others_ended(cohort, tmp_path):
    """The executor here is a plain stand-in that runs each fold at once in this process (the
    real scheduler runs in tests/test_cluster.py); fold 1's images are gone before it trains."""
    from mimir.learn.crossval import CrossvalError
    from mimir.parallel import run_one

    class InProcess:
        def __init__(self) -> None:
            self.resources: list[object] = []

        def map_outcomes(self, func, items, *, resources=None):
            self.resources.append(resources)
            for item in items:
                if item.fold == 1:
                    item = dataclasses.replace(item, images=tmp_path / "nowhere")
                yield run_one(func, item)

    cache, targets = cohort
    executor = InProcess()
    out = tmp_path / "cv"
    with pytest.raises(CrossvalError, match=r"fold 1 \(.*\); the other folds are kept"):
        run_crossval(tiny_config(iterations=2), cache, targets, "cvtest", out, folds=FOLDS, device="cpu", baseline=None, executor=executor)
    assert [CrossvalFolder(out).fold(fold).is_complete() for fold in range(FOLDS)] == [True, False, True]
    assert executor.resources == [None]
