"""Ordinary mistakes, run as a user runs them (`mimir.cli.main`): one line on stderr that names
the file or flag, exit status 2, and nothing written."""

import json
import math

import pandas as pd
import pytest

from mimir.cli import main


def _entries(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _one_error_line(capsys, command: str, *names: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mimir {command}: error: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


@pytest.fixture
def tables(tmp_path):
    """A tiny predictions table and its reference, for commands that need both."""
    reference = pd.DataFrame({"eid": [1000001, 1000002, 1000003], "instance": 2, "height": [170.0, 180.0, 165.0]})
    predictions = reference.assign(height=reference["height"] + 1.0, height_sd=2.0)
    predictions_path, reference_path = tmp_path / "predictions.csv", tmp_path / "reference.csv"
    predictions.to_csv(predictions_path, index=False)
    reference.to_csv(reference_path, index=False)
    return predictions_path, reference_path


def _output_commands(tables, out):
    predictions, reference = tables
    return {
        "synth": ["synth", "--n", "1", "--out", out],
        "evaluate": ["evaluate", str(predictions), str(reference), "--out", out],
        "demo": ["demo", "--n-train", "6", "--n-test", "1", "--out", out],
    }


@pytest.mark.parametrize("command", ["synth", "evaluate", "demo"])
@pytest.mark.parametrize("through", [(), ("sub",), ("sub", "deeper")], ids=["is-a-file", "through-a-file", "deep"])
def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, tables, capsys, command, through):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine\n")
    out = blocker.joinpath(*through)
    before = _entries(tmp_path)
    assert main(["-q", *_output_commands(tables, str(out))[command]]) == 2
    line = _one_error_line(capsys, command, str(out))
    assert ("is not a folder" if through else "exists and is not a folder") in line
    assert _entries(tmp_path) == before and blocker.read_text() == "mine\n"


def test_evaluate_with_its_arguments_swapped_is_refused(tmp_path, tables, capsys):
    predictions, reference = tables
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", str(reference), str(predictions), "--out", str(out)]) == 2
    line = _one_error_line(capsys, "evaluate", str(reference), str(predictions), "height_sd")
    assert "(the first argument, the predictions)" in line and "swapped" in line
    assert not out.exists()


def test_evaluate_of_point_predictions_without_sd_gives_agreement_metrics(tmp_path, tables, capsys):
    """Predictions of another tool (no uncertainty) are evaluated; only the swapped case is refused."""
    predictions, reference = tables
    point = tmp_path / "point.csv"
    pd.read_csv(predictions).drop(columns="height_sd").to_csv(point, index=False)
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", str(point), str(reference), "--out", str(out)]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    row = metrics[metrics["name"] == "height"].iloc[0]
    assert row["n"] == 3 and row["mae"] == pytest.approx(1.0) and math.isnan(row["auce"])


def test_synth_into_a_folder_of_another_cohort_is_refused(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["-q", "synth", "--n", "1", "--seed", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert main(["-q", "synth", "--n", "1", "--seed", "4", "--out", str(out)]) == 2
    line = _one_error_line(capsys, "synth", str(out), "another cohort", "seed=3")
    assert "give an empty folder" in line
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_synth_reruns_the_same_cohort_and_completes_a_stopped_one(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["-q", "synth", "--n", "1", "--out", str(out)]) == 0
    (out / "cohort.json").unlink()  # a run stopped before its last write
    assert main(["-q", "synth", "--n", "1", "--out", str(out)]) == 0
    assert json.loads((out / "cohort.json").read_text())["config"]["n"] == 1
    assert main(["-q", "synth", "--n", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""


def test_synth_into_a_folder_of_other_files_is_refused(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    assert main(["-q", "synth", "--n", "1", "--out", str(out)]) == 2
    _one_error_line(capsys, "synth", str(out), "notes.txt")
    assert _entries(out) == ["notes.txt"]


def test_a_zip_of_another_uk_biobank_field_is_refused_with_its_field(tiny_cohort, tmp_path, caplog):
    body = sorted(tiny_cohort.glob("*_20201_2_0.zip"))[0]
    zips = tmp_path / "zips"
    zips.mkdir()
    (zips / body.name).write_bytes(body.read_bytes())
    (zips / "1000003_20204_2_0.zip").write_bytes(body.read_bytes())  # a liver-field name
    cache = tmp_path / "cache"
    assert main(["-q", "compress", str(zips), "--cache", str(cache), "--workers", "1"]) == 0
    failures = pd.read_csv(cache / "failures.csv")
    assert failures[["subject", "stage"]].values.tolist() == [["1000003_20204_2_0", "field"]]
    assert failures["reason"][0].startswith("the file name gives UK Biobank field 20204, not field 20201")
    assert pd.read_csv(cache / "qc.csv")["subject"].tolist() == [body.stem]
    assert not (cache / "1000003_20204_2_0.npy").exists()
    assert "1000003_20204_2_0 failed at field" in caplog.text
