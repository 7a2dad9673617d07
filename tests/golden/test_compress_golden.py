"""The 2D representation keeps its recorded bytes: zips (clean and with every repaired quirk), a
DICOM folder and a NIfTI pair.

The representation was checked equal to the published implementation's output on an independent
cohort; these checksums make sure no refactor moves a pixel without the suite noticing.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs

#: qc.csv columns that describe where an exam came from, not what compression found.
_LOCATION_COLUMNS = ("source",)


def _compress(inputs: list[Path], cache: Path, sha256_file) -> dict[str, dict[str, str]]:
    summary = compress_exams(discover_inputs(inputs), CompressOptions(cache=cache))
    assert summary.failed == 0, (cache / "failures.csv").read_text()
    with (cache / "qc.csv").open(newline="") as handle:
        rows = {row["subject"]: row for row in csv.DictReader(handle)}
    return {
        stem: {
            "image_sha256": sha256_file(cache / f"{stem}.npy"),
            "qc": {column: value for column, value in row.items() if column not in _LOCATION_COLUMNS},
        }
        for stem, row in rows.items()
    }


def test_compressed_images_and_qc_keep_their_recorded_values(golden_exams, recordings, tmp_path):
    found = {
        "zip": _compress(golden_exams.zips, tmp_path / "zips", recordings.sha256_file),
        "dicom_folder": _compress([golden_exams.dicom_folder], tmp_path / "folder", recordings.sha256_file),
        "nifti_pair": _compress([golden_exams.nifti_list], tmp_path / "nifti", recordings.sha256_file),
    }
    assert len(found["zip"]) == len(golden_exams.zips)
    if recordings.record:
        recordings.write("compress.json", found)
    recorded = recordings.read("compress.json")
    for source, exams in recorded.items():
        assert sorted(found[source]) == sorted(exams), source
        for stem, expected in exams.items():
            quirk = golden_exams.quirks.get(stem, "")
            assert found[source][stem]["qc"] == expected["qc"], f"{source} {stem} ({quirk or 'clean'}): QC changed"
            assert found[source][stem]["image_sha256"] == expected["image_sha256"], (
                f"{source} {stem} ({quirk or 'clean'}): the compressed image is no longer byte-identical"
            )


def test_golden_exams_cover_every_repairable_quirk(golden_exams):
    from mimir.synth.quirks import QUIRKS

    assert sorted(filter(None, golden_exams.quirks.values())) == sorted(QUIRKS)
    assert sum(1 for quirk in golden_exams.quirks.values() if not quirk) == 2
