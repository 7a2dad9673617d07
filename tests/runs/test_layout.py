from mimir.runs.layout import CrossvalFolder, EvaluationFolder, FoldFolder, RunFolder


def test_a_run_folder_names_what_training_writes(tmp_path):
    run = RunFolder(str(tmp_path))
    assert run.path == tmp_path
    assert [p.name for p in (run.config, run.data_summary, run.standardization, run.checkpoints, run.history,
                             run.weights, run.val_predictions, run.record)] == [
        "config.toml", "data_summary.json", "standardization.json", "checkpoints", "history.csv",
        "weights.safetensors", "val_predictions.csv", "run.json",
    ]


def test_a_crossval_folder_holds_fold_runs_and_an_evaluation(tmp_path):
    folder = CrossvalFolder(tmp_path)
    fold = folder.fold(3)
    assert isinstance(fold, FoldFolder) and isinstance(fold, RunFolder) and fold.path == tmp_path / "fold_3"
    assert isinstance(folder, EvaluationFolder)
    assert (folder.metrics.name, folder.report.name) == ("metrics.csv", "report.html")
    assert folder.config.name == RunFolder(tmp_path).config.name == "config.toml"
    assert [p.name for p in (folder.splits, folder.reference, folder.record, folder.baseline_config,
                             folder.oof_predictions, folder.calibration, folder.summary)] == [
        "splits.json", "reference.csv", "crossval.json", "baseline.json",
        "oof_predictions.csv", "calibration.csv", "summary.csv",
    ]


def test_a_fold_is_complete_once_its_marker_predictions_and_weights_exist(tmp_path):
    fold = CrossvalFolder(tmp_path).fold(0)
    fold.path.mkdir()
    for path in (fold.val_predictions, fold.weights):
        path.write_text("x")
        assert not fold.is_complete()
    fold.done.write_text("{}")
    assert fold.is_complete()

