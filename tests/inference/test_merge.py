"""`mimir predict --part K/N` and `mimir predict merge`: the merged parts are the table of one run;
a part missing or given twice, parts of other splits or modules, and an exam in two parts are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mimir.cli import main
from mimir.inference.merge import MergeError, merge_parts, write_merged
from mimir.inference.table import dictionary_path


def _predict(modules, cache, out: Path, *extra: str) -> int:
    return main(["-q", "predict", str(cache), "--modules", *map(str, modules), "--out", str(out), "--device", "cpu", *extra])


@pytest.fixture()
def parts(modules, cache, tmp_path) -> tuple[list[Path], Path]:
    """The fixture's three exams in two parts (the hash gives part 0 two exams, part 1 one),
    predicted through the CLI, and the table of one run over the same cache."""
    whole = tmp_path / "whole.csv"
    assert _predict(modules, cache, whole) == 0
    written = [tmp_path / f"part{index}.csv" for index in range(2)]
    for index, out in enumerate(written):
        assert _predict(modules, cache, out, "--part", f"{index}/2") == 0
    return written, whole


def test_merged_parts_are_the_table_of_one_run(parts, tmp_path):
    written, whole = parts
    assert [len(pd.read_csv(out)) for out in written] == [2, 1]
    assert [json.loads(dictionary_path(out).read_text())["part"] for out in written] == ["0/2", "1/2"]
    merged = tmp_path / "merged.csv"
    assert main(["-q", "predict", "merge", *map(str, reversed(written)), "--out", str(merged)]) == 0
    one_run = pd.read_csv(whole, dtype=str, keep_default_na=False).sort_values("exam", ignore_index=True)
    assert pd.read_csv(merged, dtype=str, keep_default_na=False).equals(one_run)
    dictionary = json.loads(dictionary_path(merged).read_text())
    assert "part" not in dictionary and dictionary["merged_from_parts"] == 2
    assert dictionary["columns"] == json.loads(dictionary_path(whole).read_text())["columns"]


def _fake_part(path: Path, part: str, exams: list[str], columns: tuple[str, ...] = ("eid", "instance", "exam", "failure")) -> Path:
    table = pd.DataFrame({column: "" for column in columns}, index=range(len(exams)))
    table["exam"] = exams
    table["eid"] = [exam.split("_")[0] for exam in exams]
    table.to_csv(path, index=False)
    dictionary = {"form": "wide", "columns": [{"column": column} for column in columns]}
    if part:
        dictionary["part"] = part
    dictionary_path(path).write_text(json.dumps(dictionary))
    return path


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"a": "0/3", "b": "1/3"}, "parts missing: 2/3"),
        ({"a": "0/2", "b": "0/2", "c": "1/2"}, "part 0/2 given more than once"),
        ({"a": "0/2", "b": "1/3"}, "different splits"),
        ({"a": "0/1", "b": ""}, "written without --part"),
    ],
    ids=["missing", "twice", "other split", "not a part"],
)
def test_parts_that_do_not_make_one_table_are_refused(tmp_path, layout, message):
    paths = [
        _fake_part(tmp_path / f"{name}.csv", part, [f"{1000000 + index}_20201_2_0"]) for index, (name, part) in enumerate(layout.items())
    ]
    with pytest.raises(MergeError, match=message):
        merge_parts(paths)


def test_an_exam_in_two_parts_and_tables_of_other_modules_are_refused(tmp_path):
    first = _fake_part(tmp_path / "a.csv", "0/2", ["1000001_20201_2_0", "1000002_20201_2_0"])
    overlapping = _fake_part(tmp_path / "b.csv", "1/2", ["1000002_20201_2_0"])
    with pytest.raises(MergeError, match=r"1 exams are in more than one part, e.g. 1000002_20201_2_0 in parts 0/2, 1/2"):
        merge_parts([first, overlapping])
    other = _fake_part(tmp_path / "c.csv", "1/2", ["1000003_20201_2_0"], ("eid", "instance", "exam", "age", "failure"))
    with pytest.raises(MergeError, match="other columns"):
        merge_parts([first, other])


def test_merge_cli_refuses_in_one_line_and_writes_nothing(tmp_path, capsys):
    only = _fake_part(tmp_path / "a.csv", "0/2", ["1000001_20201_2_0"])
    out = tmp_path / "merged.csv"
    assert main(["-q", "predict", "merge", str(only), "--out", str(out)]) == 2
    assert "parts missing: 1/2" in capsys.readouterr().err
    assert not out.exists() and not dictionary_path(out).exists()
    complete = _fake_part(tmp_path / "b.csv", "1/2", ["1000002_20201_2_0"])
    assert main(["-q", "predict", "merge", str(only), str(complete), "--out", str(out)]) == 0
    assert main(["-q", "predict", "merge", str(only), str(complete), "--out", str(out)]) == 2  # exists: --force
    assert list(pd.read_csv(out)["exam"]) == ["1000001_20201_2_0", "1000002_20201_2_0"]
    with pytest.raises(MergeError, match="same"):
        write_merged([only, complete], tmp_path / "merged.parquet")


def test_predict_part_outside_the_split_is_a_usage_error(modules, cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _predict(modules, cache, tmp_path / "p.csv", "--part", "2/2")
    assert exit_info.value.code == 2
    assert "0 <= K < N" in capsys.readouterr().err
