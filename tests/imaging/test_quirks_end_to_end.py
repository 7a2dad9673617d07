"""Every quirk `mimir synth --quirks` injects is repaired or shows up in QC (or as a failure)."""

import csv
from pathlib import Path

import pytest

from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs
from mimir.synth import CohortConfig, generate_cohort
from mimir.synth.quirks import QUIRKS


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def quirk_exams(tmp_path_factory):
    """One exam per quirk, compressed; maps quirk -> (its quirks.csv row, its qc.csv row)."""
    out = tmp_path_factory.mktemp("quirks")
    generate_cohort(CohortConfig(n=len(QUIRKS), seed=5, quirks=QUIRKS), out)
    cache = out / "cache"
    summary = compress_exams(discover_inputs([out]), CompressOptions(cache=cache))
    assert summary.failed == 0, _rows(cache / "failures.csv")
    qc = {row["subject"]: row for row in _rows(cache / "qc.csv")}
    return {row["quirk"]: (row, qc[Path(row["zip"]).stem]) for row in _rows(out / "quirks.csv")}


def test_every_quirk_was_injected_once(quirk_exams):
    assert sorted(quirk_exams) == sorted(QUIRKS)


def test_duplicate_station_keeps_the_latest(quirk_exams):
    injected, qc = quirk_exams["duplicate_station"]
    assert qc["duplicates_dropped"] == "2" and qc["stations_used"] == "6" and qc["stations_found"] == "7"
    assert "kept" in qc["read_notes"] and "dropped" in qc["read_notes"]


def test_water_fat_swap_is_flagged_on_the_right_station(quirk_exams):
    injected, qc = quirk_exams["water_fat_swap"]
    assert "water_fat_swap" in qc["flag"].split(";")
    assert qc["swapped_stations"] == injected["station"]


@pytest.mark.parametrize(
    ("quirk", "note"),
    [
        ("off_grid_station", "off the in-plane grid"),
        ("size_mismatch", "cropped"),
        ("missing_slice", "interpolation"),
        ("corrupt_file", "unreadable pixel data"),
    ],
)
def test_repaired_quirks_are_noted(quirk_exams, quirk, note):
    _, qc = quirk_exams[quirk]
    assert note in qc["read_notes"]
    assert qc["stations_used"] == "6"


@pytest.mark.parametrize("quirk", ["extra_file", "misspelled_manifest"])
def test_harmless_quirks_pass_without_flags(quirk_exams, quirk):
    _, qc = quirk_exams[quirk]
    assert qc["flag"] == "" and qc["stations_used"] == "6"


def test_clean_exams_raise_no_flag(quirk_exams):
    flagged = {quirk for quirk, (_, qc) in quirk_exams.items() if qc["flag"]}
    assert flagged == {"water_fat_swap"}


def test_extra_file_is_skipped_beside_the_manifest(quirk_exams):
    assert quirk_exams["extra_file"][1]["skipped_files"] == "2"
    assert quirk_exams["duplicate_station"][1]["skipped_files"] == "1"  # the manifest alone
