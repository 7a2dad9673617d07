"""The field-20201 zip writer: real station geometry, strict DICOM, manifest, determinism, atomicity."""

from __future__ import annotations

import csv
import io
import itertools
import re
import warnings
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config

from mimir.protocol import COLUMNS, GRID_ROWS, GRID_SLICE_SPACING_MM, PIXEL_SPACING_MM, STATIONS
from mimir.synth.ukb_writer import (
    FAT_COUNTS,
    MAX_COUNT,
    WATER_COUNTS,
    ExamPlan,
    plan_exam,
    write_exam_zip,
)

EID = 1234567
SEED = 20201
#: In-plane extent (grid rows/columns) of the fat marker, which sits in the middle of station 3.
MARKER_ROWS = slice(80, 86)
MARKER_COLUMNS = slice(100, 106)
BODY_ROWS = slice(30, 140)
BODY_COLUMNS = slice(40, 184)
SHELL_ROWS = slice(20, 150)
SHELL_COLUMNS = slice(30, 194)


@dataclass
class Series:
    description: str
    number: int
    time: str
    uid: str
    rows: int
    columns: int
    positions: np.ndarray  # (slices, 3), head to foot
    pixels: np.ndarray  # (slices, rows, columns)
    names: list[str]


def marker_slice(plan: ExamPlan) -> int:
    station = plan.stations[2]
    middle_z = (station.z_top_mm + station.z_bottom_mm) / 2
    return int(round((plan.grid_z_top_mm - middle_z) / GRID_SLICE_SPACING_MM))


def phantom(plan: ExamPlan) -> tuple[np.ndarray, np.ndarray]:
    """A box of lean tissue in a fat shell, plus a small fat cube on two grid slices."""
    shape = (plan.grid_slices, GRID_ROWS, COLUMNS)
    water = np.zeros(shape, np.float32)
    fat = np.zeros(shape, np.float32)
    fat[:, SHELL_ROWS, SHELL_COLUMNS] = 1.0
    fat[:, BODY_ROWS, BODY_COLUMNS] = 0.0
    water[:, BODY_ROWS, BODY_COLUMNS] = 1.0
    fat[marker_slice(plan) : marker_slice(plan) + 2, MARKER_ROWS, MARKER_COLUMNS] = 1.0
    return water, fat


def write(path: Path, seed: int = SEED, eid: int = EID, **kwargs) -> tuple[ExamPlan, list]:
    rng = np.random.default_rng(seed)
    plan = plan_exam(rng, on_grid=kwargs.pop("on_grid", False))
    water, fat = phantom(plan)
    records = write_exam_zip(path, water, fat, plan, eid=eid, instance=2, rng=rng, **kwargs)
    return plan, records


def read_strictly(data: bytes) -> pydicom.Dataset:
    """Parse with pydicom in strict mode, turning every warning into an error; touch every element."""
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dataset = pydicom.dcmread(io.BytesIO(data))
            for _ in dataset:
                pass
            dataset.pixel_array  # noqa: B018 - decoding is part of parsing
    finally:
        config.settings.reading_validation_mode = previous
    return dataset


def read_series(path: Path, skip: frozenset[str] = frozenset()) -> dict[str, Series]:
    grouped: dict[str, list[tuple[str, pydicom.Dataset]]] = defaultdict(list)
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".dcm") and name not in skip:
                dataset = read_strictly(archive.read(name))
                grouped[dataset.SeriesInstanceUID].append((name, dataset))
    series = {}
    for uid, items in grouped.items():
        items.sort(key=lambda item: -float(item[1].ImagePositionPatient[2]))
        first = items[0][1]
        series[uid] = Series(
            description=first.SeriesDescription,
            number=int(first.SeriesNumber),
            time=first.SeriesTime,
            uid=uid,
            rows=int(first.Rows),
            columns=int(first.Columns),
            positions=np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items]),
            pixels=np.stack([ds.pixel_array for _, ds in items]),
            names=[name for name, _ in items],
        )
    return series


def by_station(plan: ExamPlan, series: dict[str, Series]) -> dict[int, list[Series]]:
    """Series grouped by the planned station whose first slice they start at."""
    grouped: dict[int, list[Series]] = defaultdict(list)
    for item in series.values():
        top = item.positions[0, 2]
        index = int(np.argmin([abs(top - station.z_top_mm) for station in plan.stations]))
        grouped[index].append(item)
    return grouped


@pytest.fixture(scope="module")
def clean_exam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExamPlan, dict[str, Series]]:
    path = tmp_path_factory.mktemp("clean") / f"{EID}_20201_2_0.zip"
    plan, records = write(path)
    assert records == []
    return path, plan, read_series(path)


def test_plan_has_the_real_station_geometry_and_overlaps() -> None:
    plan = plan_exam(np.random.default_rng(1))
    assert [s.rows for s in plan.stations] == [168, 174, 174, 174, 162, 156]
    assert [s.slices for s in plan.stations] == [64, 44, 44, 44, 72, 64]
    assert [s.slice_spacing_mm for s in plan.stations] == [3.0, 4.5, 4.5, 4.5, 3.5, 4.0]
    tops = [s.z_top_mm for s in plan.stations]
    assert tops == sorted(tops, reverse=True)
    for upper, lower in itertools.pairwise(plan.stations):
        overlap = lower.z_top_mm - upper.z_bottom_mm
        assert 15.0 < overlap < 45.0, overlap
    # The grid covers every station; the fused, end-trimmed volume is about 370 slices.
    grid_bottom = plan.grid_z_top_mm - GRID_SLICE_SPACING_MM * (plan.grid_slices - 1)
    assert all(s.z_top_mm <= plan.grid_z_top_mm and s.z_bottom_mm >= grid_bottom for s in plan.stations)
    span = plan.stations[0].z_top_mm - plan.stations[-1].z_bottom_mm
    assert 355 <= span / GRID_SLICE_SPACING_MM + 1 - 8 <= 385
    assert 0.8 <= min(s.gain for s in plan.stations) and max(s.gain for s in plan.stations) <= 1.25


def test_table_positions_vary_by_a_few_mm_off_the_grid() -> None:
    plans = [plan_exam(np.random.default_rng(seed)) for seed in range(8)]
    second_tops = np.array([plan.stations[1].z_top_mm - plan.stations[0].z_top_mm for plan in plans])
    assert 0.5 < np.ptp(second_tops) < 16.0
    offsets = [(p.grid_z_top_mm - p.stations[3].z_top_mm) / GRID_SLICE_SPACING_MM % 1.0 for p in plans]
    assert any(0.05 < offset < 0.95 for offset in offsets)


def test_on_grid_plan_puts_every_slice_on_the_grid() -> None:
    plan = plan_exam(np.random.default_rng(2), on_grid=True)
    assert plan.on_grid and all(s.slice_spacing_mm == GRID_SLICE_SPACING_MM for s in plan.stations)
    for station in plan.stations:
        index = (plan.grid_z_top_mm - station.z_positions) / GRID_SLICE_SPACING_MM
        np.testing.assert_allclose(index, np.round(index), atol=1e-9)
    for upper, lower in itertools.pairwise(plan.stations):
        assert lower.z_top_mm > upper.z_bottom_mm
    assert plan_exam(np.random.default_rng(3), on_grid=True).stations[2].z_top_mm == plan.stations[2].z_top_mm


def test_every_file_parses_strictly_with_the_planned_series(clean_exam) -> None:
    path, plan, series = clean_exam
    assert len(series) == 4 * len(STATIONS)
    stations = by_station(plan, series)
    for index, station in enumerate(plan.stations):
        stem = "Dixon_noBH" if index in (0, 4, 5) else "Dixon_BH_17s"
        found = sorted(stations[index], key=lambda s: s.number)
        assert [s.description for s in found] == [f"{stem}_{suffix}" for suffix in ("W", "F", "in", "opp")]
        for item in found:
            assert (item.rows, item.columns) == (station.rows, COLUMNS)
            assert item.pixels.shape == (station.slices, station.rows, COLUMNS)
            np.testing.assert_allclose(item.positions[:, 2], station.z_positions, atol=1e-6)
            np.testing.assert_allclose(np.diff(item.positions[:, 2]), -station.slice_spacing_mm, atol=1e-6)
            # In-plane centred on the isocentre.
            np.testing.assert_allclose(item.positions[:, 0], -(COLUMNS - 1) / 2 * PIXEL_SPACING_MM, atol=1e-6)
            np.testing.assert_allclose(item.positions[:, 1], -(station.rows - 1) / 2 * PIXEL_SPACING_MM, atol=1e-6)
    numbers = [s.number for s in series.values()]
    assert len(set(numbers)) == len(numbers)
    by_number = sorted(series.values(), key=lambda s: s.number)
    times = [float(s.time) for s in by_number]
    assert times == sorted(times) and len(set(times)) == len(times)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        first = pydicom.dcmread(io.BytesIO(archive.read(by_number[0].names[0])))
    assert len(names) == 1 + sum(4 * s.slices for s in plan.stations)
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == pydicom.uid.MRImageStorage
    assert first.PatientID == str(EID) and first.Modality == "MR"
    assert (first.BitsAllocated, first.BitsStored, first.PixelRepresentation, first.SamplesPerPixel) == (16, 12, 0, 1)
    assert [float(v) for v in first.PixelSpacing] == [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    assert first.StudyInstanceUID != first.SeriesInstanceUID != first.SOPInstanceUID


def test_manifest_lists_every_file_with_a_quoted_date(clean_exam) -> None:
    path, _, series = clean_exam
    with zipfile.ZipFile(path) as archive:
        text = archive.read("manifest.csv").decode("ascii")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {"filename", "patientid", "date", "series description"} <= set(rows[0])
    assert {row["filename"] for row in rows} == {name for item in series.values() for name in item.names}
    assert re.search(r'"[A-Z][a-z]{2} \d{1,2}, 20\d\d"', text)
    assert {row["series description"] for row in rows} == {item.description for item in series.values()}


def test_intensities_follow_gain_and_channels(clean_exam) -> None:
    _, plan, series = clean_exam
    for index, items in by_station(plan, series).items():
        station = plan.stations[index]
        channel = {item.description.rsplit("_", 1)[1]: item.pixels.astype(np.float64) for item in items}
        offset = (GRID_ROWS - station.rows) // 2
        body = (slice(None), slice(BODY_ROWS.start - offset + 5, BODY_ROWS.stop - offset - 5), slice(60, 160))
        ratio = np.median(channel["W"][body]) / (WATER_COUNTS * station.gain)
        assert 0.6 < ratio < 1.6  # the coil field is smooth and within a few tens of per cent
        assert np.median(channel["F"][body]) < 0.1 * FAT_COUNTS
        assert np.median(channel["W"][:, :, :10]) < 40  # air: Rician noise floor only
        assert all(item.pixels.max() <= MAX_COUNT for item in items)
        np.testing.assert_allclose(channel["in"], channel["W"] + channel["F"], atol=1.0)
        np.testing.assert_allclose(channel["opp"], np.abs(channel["W"] - channel["F"]), atol=1.0)


def test_marker_appears_at_its_position(clean_exam) -> None:
    _, plan, series = clean_exam
    marker_z = plan.grid_z_top_mm - (marker_slice(plan) + 0.5) * GRID_SLICE_SPACING_MM
    grid_rows = np.arange(GRID_ROWS)[MARKER_ROWS]
    grid_columns = np.arange(COLUMNS)[MARKER_COLUMNS]
    expected_x = (grid_columns.mean() - (COLUMNS - 1) / 2) * PIXEL_SPACING_MM
    expected_y = (grid_rows.mean() - (GRID_ROWS - 1) / 2) * PIXEL_SPACING_MM
    for index, items in by_station(plan, series).items():
        fat = next(item for item in items if item.description.endswith("_F"))
        # Look inside the lean body only, where the marker is the one fat.
        top = BODY_ROWS.start - (GRID_ROWS - plan.stations[index].rows) // 2 + 2
        body = fat.pixels[:, top : top + 100, BODY_COLUMNS.start + 2 : BODY_COLUMNS.stop - 2].astype(np.float64)
        contrast = body - np.median(body)
        peak = np.unravel_index(np.argmax(contrast), contrast.shape)
        if index != 2:
            assert contrast.max() < 0.2 * FAT_COUNTS
            continue
        assert contrast.max() > 0.3 * FAT_COUNTS
        assert abs(fat.positions[peak[0], 2] - marker_z) <= plan.stations[2].slice_spacing_mm / 2 + 1e-6
        plate = contrast[peak[0]] > 0.5 * contrast[peak]
        rows, columns = np.nonzero(plate)
        x = fat.positions[peak[0], 0] + (columns.mean() + BODY_COLUMNS.start + 2) * PIXEL_SPACING_MM
        y = fat.positions[peak[0], 1] + (rows.mean() + top) * PIXEL_SPACING_MM
        assert abs(x - expected_x) < PIXEL_SPACING_MM / 2 and abs(y - expected_y) < PIXEL_SPACING_MM / 2


def test_on_grid_exam_positions_are_on_the_grid(tmp_path: Path) -> None:
    plan, _ = write(tmp_path / "grid.zip", on_grid=True)
    with zipfile.ZipFile(tmp_path / "grid.zip") as archive:
        zs = [
            float(pydicom.dcmread(io.BytesIO(archive.read(name)), stop_before_pixels=True).ImagePositionPatient[2])
            for name in archive.namelist()[1::97]
        ]
    index = (plan.grid_z_top_mm - np.array(zs)) / GRID_SLICE_SPACING_MM
    np.testing.assert_allclose(index, np.round(index), atol=1e-6)


def test_same_seed_same_bytes_and_distinct_uids_per_subject(tmp_path: Path, clean_exam) -> None:
    path, _, series = clean_exam
    write(tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == path.read_bytes()
    write(tmp_path / "other.zip", eid=EID + 1)
    with zipfile.ZipFile(tmp_path / "other.zip") as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode("ascii"))))
    assert len({row["seriesid"] for row in rows}) == len(series)
    assert not {row["seriesid"] for row in rows} & set(series)
    assert not {row["filename"] for row in rows} & {name for item in series.values() for name in item.names}


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "exam.zip"
    target.write_bytes(b"previous version")
    calls = {"n": 0}
    original = zipfile.ZipFile.writestr

    def failing_writestr(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 50:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(OSError, match="disk full"):
        write(target)
    assert target.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["exam.zip"]


def test_rejects_volumes_not_on_the_plan_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    plan = plan_exam(rng)
    small = np.zeros((plan.grid_slices - 1, GRID_ROWS, COLUMNS), np.float32)
    with pytest.raises(ValueError, match="must be"):
        write_exam_zip(tmp_path / "x.zip", small, small, plan, eid=EID, instance=2, rng=rng)
    assert list(tmp_path.iterdir()) == []


def test_sub_voxel_sampling_is_linear_and_zero_outside() -> None:
    from mimir.synth.ukb_writer import _linear_samples

    ramp = np.tile(np.arange(10, dtype=np.float32) * 2.0, (3, 1))
    shifted = _linear_samples(ramp, 1, np.array([-1.0, -0.5, 0.25, 3.6, 8.5, 9.0, 9.5]))
    np.testing.assert_allclose(shifted[0], [0.0, 0.0, 0.5, 7.2, 17.0, 18.0, 9.0], atol=1e-5)
    on_grid = _linear_samples(ramp, 1, np.array([2.0, 3.0, 4.0]))
    assert np.shares_memory(on_grid, ramp)  # whole-voxel positions copy nothing
