"""Batch prediction: the table, failures kept, inputs, resume, and the command."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimir.cli import predict_cmd
from mimir.errors import MimirError
from mimir.imaging.compress import InputError
from mimir.inference.modules import TargetSpec, load_module
from mimir.inference.predict import PredictOptions, TargetConflictError, predict, run_prediction

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

STEMS = helpers.STEMS
BODY_TARGETS = helpers.BODY_TARGETS
make_module = helpers.make_module


def test_table_has_one_row_per_exam_and_every_column(modules, cache):
    table = predict([cache], modules, PredictOptions(device="cpu", precision="float32"))
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
    table = predict([cache], modules, PredictOptions(device="cpu", precision="float32"))
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


def test_uncertain_lists_targets_above_the_cross_validation_p99(tmp_path, cache):
    picky = (
        TargetSpec("height", 50, "cm", "continuous", mean=170.0, sd=9.0, sd_p99=1e-9),
        TargetSpec("weight", 21002, "kg", "continuous", mean=80.0, sd=14.0, sd_p99=1e9),
        TargetSpec("age", 21003, "years", "continuous", mean=64.0, sd=7.0, sd_p99=1e-9),
    )
    picky_module = make_module(tmp_path / "picky", "picky", picky)
    table = predict([cache], [picky_module], PredictOptions(device="cpu", precision="float32"))
    assert list(table["uncertain"]) == ["height;age"] * len(STEMS)


def test_failed_and_unloadable_exams_keep_a_row(modules, cache, tmp_path):
    np.save(cache / "4567890_20201_2_0.npy", np.zeros((3, 128, 128), dtype=np.uint8))
    np.save(cache / "5678901_20201_2_0.npy", np.zeros((3, 256, 256), dtype=np.float32))
    zips = tmp_path / "zips"
    zips.mkdir()
    (zips / "6789012_20201_2_0.zip").write_bytes(b"this is not a zip")
    options = PredictOptions(cache=tmp_path / "new_cache", device="cpu", workers=1)
    table = predict([cache, zips / "6789012_20201_2_0.zip"], modules, options)
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
    table = predict([cache], modules, PredictOptions(device="cpu"))
    assert list(table["qc_flag"]) == ["seam;low_coverage", "", ""]


def test_two_modules_with_one_target_is_an_error(modules, cache):
    with pytest.raises(TargetConflictError, match="height"):
        predict([cache], [modules[0], modules[0]], PredictOptions(device="cpu"))


def test_missing_input_is_an_input_error(modules, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        predict([tmp_path / "absent.zip"], modules, PredictOptions(device="cpu"))


def run_cli(argv: list[str], *, quiet: bool = True) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    predict_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    args.quiet = quiet
    try:
        return args.handler(args)
    except MimirError as error:
        return error.exit_code


def test_cli_refuses_an_unwritable_output_before_any_work(modules, tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    (zips / "1111111_20201_2_0.zip").write_bytes(b"not a zip")
    out = tmp_path / "missing" / "predictions.csv"
    assert run_cli(["predict", str(zips), "--modules", str(modules[0]), "--out", str(out)]) == 2
    assert not out.parent.exists()
    assert not (tmp_path / "predictions_cache").exists()


def test_cli_writes_the_table_and_rejects_missing_inputs(modules, cache, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert run_cli(["predict", str(cache), "--modules", *map(str, modules), "--out", str(out), "--device", "cpu"], quiet=False) == 0
    assert len(pd.read_csv(out)) == len(STEMS)
    printed = capsys.readouterr()
    assert "module body" in printed.out and "exams per minute" in printed.out
    assert printed.err.startswith(f"predict {len(STEMS)}/{len(STEMS)} (100 %), ") and "\x1b[" not in printed.err
    missing = tmp_path / "nothing_here.zip"
    assert run_cli(["predict", str(missing), "--modules", str(modules[0]), "--out", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_rerun_resumes_from_the_cache(tiny_cohort, modules, tmp_path):
    pytest.importorskip("mimir.synth.anatomy")
    zips = sorted(tiny_cohort.glob("*.zip"))[:2]
    cache = tmp_path / "cache"
    options = PredictOptions(cache=cache, device="cpu", workers=1)
    first = run_prediction(zips, modules, options)
    assert (first.compressed, first.reused) == (2, 0)
    assert (first.table["failure"] == "").all()
    assert first.table["height"].notna().all()
    stamps = {path: path.stat().st_mtime_ns for path in cache.glob("*.npy")}
    second = run_prediction(zips, modules, options)
    assert (second.compressed, second.reused) == (0, 2)
    assert {path: path.stat().st_mtime_ns for path in cache.glob("*.npy")} == stamps
    pd.testing.assert_frame_equal(first.table, second.table)


def test_prediction_does_not_import_training_code():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import mimir.inference.predict, mimir.inference.batching, mimir.inference.runner, mimir.inference.table\n"
        "import mimir.inference.background_compression, mimir.devices, mimir.cli.predict_cmd, mimir.cli.show_cmd\n"
        "assert not [name for name in sys.modules if name.startswith('mimir.learn')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)



def _header_only(path: Path, shape: tuple[int, ...]) -> None:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    path.write_bytes(buffer.getvalue())


def test_malformed_cache_files_become_failure_rows_and_the_table_is_written(modules, cache, tmp_path):
    import os

    with (cache / "4567890_20201_2_0.npy").open("wb") as handle:  # used to abort with AttributeError
        np.savez(handle, image=helpers.realistic_image(1))
    _header_only(cache / "5678901_20201_2_0.npy", (3, 2**23, 2**23))  # 192 TiB: used to abort with MemoryError
    image = (cache / f"{STEMS[0]}.npy").read_bytes()
    (cache / "6789012_20201_2_0.npy").write_bytes(image[:50_000])
    os.mkfifo(cache / "7890123_20201_2_0.npy")  # used to hang the reader
    out = tmp_path / "predictions.csv"
    assert run_cli(["predict", str(cache), "--modules", *map(str, modules), "--out", str(out), "--device", "cpu"]) == 0
    table = pd.read_csv(out, dtype={"exam": str, "failure": str}).fillna({"failure": ""}).set_index("exam")
    assert table.loc[list(STEMS), "failure"].eq("").all() and table.loc[list(STEMS), "height"].notna().all()
    assert table.loc["4567890_20201_2_0", "failure"] == (
        "load: not a readable .npy file (a zip archive such as .npz under a .npy name)"
    )
    assert table.loc["5678901_20201_2_0", "failure"] == (
        "load: expected a (3, 256, 256) uint8 array, the header says (3, 8388608, 8388608) uint8"
    )
    assert table.loc["6789012_20201_2_0", "failure"] == "load: truncated: 50000 bytes, the header needs 196736"
    assert table.loc["7890123_20201_2_0", "failure"] == "load: not a regular file (a FIFO)"
    assert table.loc[table["failure"] != "", ["height", "liverFat_sd"]].isna().all().all()


def test_a_fifo_named_as_an_image_input_is_reported_not_opened(modules, cache, tmp_path):
    import os

    fifo = tmp_path / "8901234_20201_2_0.npy"
    os.mkfifo(fifo)
    table = predict([cache / f"{STEMS[0]}.npy", fifo], modules, PredictOptions(device="cpu"))
    assert list(table["failure"]) == ["", "load: not a regular file (a FIFO)"]


def test_an_invalid_entry_of_a_raw_exam_is_compressed_again(tiny_cohort, modules, tmp_path):
    pytest.importorskip("mimir.synth.anatomy")
    exam = sorted(tiny_cohort.glob("*.zip"))[0]
    options = PredictOptions(cache=tmp_path / "cache", device="cpu", workers=1)
    first = run_prediction([exam], modules, options)
    image = tmp_path / "cache" / f"{exam.stem}.npy"
    expected = image.read_bytes()
    image.write_bytes(expected[:1000])
    second = run_prediction([exam], modules, options)
    assert (second.compressed, second.reused) == (1, 0)
    assert image.read_bytes() == expected
    pd.testing.assert_frame_equal(first.table, second.table)


def test_an_unwritable_cache_is_refused_before_the_modules_load(modules, tmp_path, monkeypatch):
    import mimir.inference.predict as predict_module
    from mimir.imaging.cache import CacheNotWritableError

    def no_work(*args, **kwargs):
        raise AssertionError("modules were loaded before the cache was checked")

    monkeypatch.setattr(predict_module, "load_module", no_work)
    zips = tmp_path / "zips"
    zips.mkdir()
    (zips / "1111111_20201_2_0.zip").write_bytes(b"not a zip")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CacheNotWritableError, match="a_file is not a folder"):
        run_prediction([zips], modules, PredictOptions(cache=blocker / "cache", device="cpu"))


def test_a_zip_of_another_uk_biobank_field_keeps_a_failure_row_not_a_prediction(tiny_cohort, modules, tmp_path):
    body = sorted(tiny_cohort.glob("*.zip"))[0]
    liver = tmp_path / "1000003_20204_2_0.zip"
    liver.write_bytes(body.read_bytes())
    table = predict([liver], modules, PredictOptions(cache=tmp_path / "cache", device="cpu", workers=1))
    row = table.set_index("exam").loc["1000003_20204_2_0"]
    assert row["failure"].startswith("field: the file name gives UK Biobank field 20204")
    assert pd.isna(row["height"])


@pytest.mark.parametrize("given", ["file", "folder"])
def test_a_cached_image_of_another_uk_biobank_field_is_refused_not_predicted(modules, cache, tmp_path, given):
    """A liver scan's .npy (field 20204) among body images is refused by name, as its zip is."""
    folder = tmp_path / "images"
    folder.mkdir()
    for stem in STEMS[:2]:
        (folder / f"{stem}.npy").write_bytes((cache / f"{stem}.npy").read_bytes())
    liver = folder / "1000003_20204_2_0.npy"
    liver.write_bytes((cache / f"{STEMS[2]}.npy").read_bytes())
    inputs = [folder] if given == "folder" else sorted(folder.glob("*.npy"))
    result = run_prediction(inputs, modules, PredictOptions(device="cpu", precision="float32"))
    table = result.table.set_index("exam")
    row = table.loc["1000003_20204_2_0"]
    assert row["failure"].startswith("field: the file name gives UK Biobank field 20204")
    assert pd.isna(row["height"]) and pd.isna(row["eid"])
    assert table.loc[list(STEMS[:2]), "height"].notna().all() and result.failed == 1


# --exclude: the exclusion list of known artefacts ------------------------------------------------
def test_cli_exclude_leaves_listed_exams_out_and_counts_them(modules, cache, tmp_path, capsys):
    from mimir.cli import main

    listed = tmp_path / "artefacts.txt"
    listed.write_text(f"eid\n{STEMS[1].split('_')[0]}\n")
    out = tmp_path / "predictions.csv"
    argv = ["-q", "predict", str(cache), "--modules", *map(str, modules), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--exclude", str(listed)]) == 0
    table = pd.read_csv(out)
    assert list(table["exam"]) == [STEMS[0], STEMS[2]] and table["height"].notna().all()
    assert "1 exams on the exclusion list were left out (they have no row)" in capsys.readouterr().out


def test_excluded_zips_are_not_even_compressed(tiny_cohort, modules, tmp_path):
    zips = sorted(tiny_cohort.glob("*.zip"))[:2]
    listed = tmp_path / "artefacts.csv"
    listed.write_text(f"eid,instance\n{zips[1].name.split('_')[0]},2\n")
    cache = tmp_path / "cache"
    result = run_prediction(zips, modules, PredictOptions(cache=cache, device="cpu", workers=1, exclude=listed))
    assert list(result.table["exam"]) == [zips[0].name.removesuffix(".zip")]
    assert result.excluded == [zips[1].name.removesuffix(".zip")]
    assert sorted(path.stem for path in cache.glob("*.npy")) == [zips[0].name.removesuffix(".zip")]


def test_cli_exclude_of_every_exam_or_a_bad_list_is_one_line_and_nothing_written(modules, cache, tmp_path, capsys):
    from mimir.cli import main

    out = tmp_path / "predictions.csv"
    argv = ["-q", "predict", str(cache), "--modules", *map(str, modules), "--out", str(out), "--device", "cpu"]
    everyone = tmp_path / "everyone.txt"
    everyone.write_text("".join(f"{stem.split('_')[0]}\n" for stem in STEMS))
    assert main([*argv, "--exclude", str(everyone)]) == 2
    assert capsys.readouterr().err == (
        f"mimir predict: error: every exam given (3) is on the exclusion list {everyone}; nothing to predict\n"
    )
    bad = tmp_path / "bad.txt"
    bad.write_text("1234567\n12345x7\n")
    assert main([*argv, "--exclude", str(bad)]) == 2
    assert capsys.readouterr().err == f"mimir predict: error: exclusion list {bad}, line 2: '12345x7' is not an eid (a whole number)\n"
    assert not out.exists() and not (tmp_path / "predictions_cache").exists()
