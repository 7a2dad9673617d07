"""Real-data quirks: each one injected where its record says, and only there."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from mimir.protocol import COLUMNS, GRID_ROWS, GRID_SLICE_SPACING_MM, PIXEL_SPACING_MM
from mimir.synth.quirks import QUIRKS, QuirkRecord, SliceTarget, UnknownQuirkError, plan_quirks, validate_quirks
from mimir.synth.ukb_writer import ExamPlan, StationPlan, plan_exam, write_exam_zip

EID = 7654321
BODY = (slice(40, 130), slice(50, 170))
SHELL = (slice(20, 150), slice(30, 194))


@dataclass
class SeriesInfo:
    description: str
    number: int
    time: float
    rows: int
    columns: int
    positions: np.ndarray  # head to foot
    names: list[str]
    archive: Path

    def pixels(self) -> np.ndarray:
        with zipfile.ZipFile(self.archive) as archive:
            return np.stack([pydicom.dcmread(io.BytesIO(archive.read(name))).pixel_array for name in self.names])

    @property
    def suffix(self) -> str:
        return self.description.rsplit("_", 1)[1]


@dataclass
class QuirkyExam:
    path: Path
    plan: ExamPlan
    records: dict[str, QuirkRecord]
    series: list[SeriesInfo]
    broken: list[str]  # DICOM members without pixel data that decode

    def station(self, record: QuirkRecord) -> StationPlan:
        assert record.station is not None
        return self.plan.stations[record.station - 1]

    def series_of(self, record: QuirkRecord) -> list[SeriesInfo]:
        """Series whose first slice lies within a voxel of the record's station's first slice."""
        top = self.station(record).z_top_mm
        return [s for s in self.series if abs(s.positions[0, 2] - top) < GRID_SLICE_SPACING_MM]


def phantom(plan: ExamPlan) -> tuple[np.ndarray, np.ndarray]:
    """Lean box in a fat shell: water and fat occupy different places, so a swap shows."""
    shape = (plan.grid_slices, GRID_ROWS, COLUMNS)
    water, fat = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    fat[(slice(None), *SHELL)] = 1.0
    fat[(slice(None), *BODY)] = 0.0
    water[(slice(None), *BODY)] = 1.0
    return water, fat


def read_headers(path: Path) -> tuple[list[SeriesInfo], list[str]]:
    grouped: dict[str, list[tuple[str, pydicom.Dataset]]] = defaultdict(list)
    broken = []
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".dcm"):
                continue
            dataset = pydicom.dcmread(io.BytesIO(archive.read(name)))
            if len(dataset.get("PixelData", b"")) != 2 * dataset.get("Rows", 0) * dataset.get("Columns", 0):
                broken.append(name)
                continue
            grouped[dataset.SeriesInstanceUID].append((name, dataset))
    series = []
    for items in grouped.values():
        items.sort(key=lambda item: -float(item[1].ImagePositionPatient[2]))
        first = items[0][1]
        series.append(
            SeriesInfo(
                description=first.SeriesDescription,
                number=int(first.SeriesNumber),
                time=float(first.SeriesTime),
                rows=int(first.Rows),
                columns=int(first.Columns),
                positions=np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items]),
                names=[name for name, _ in items],
                archive=path,
            )
        )
    return series, broken


def write(path: Path, quirks: tuple[str, ...]) -> tuple[ExamPlan, list[QuirkRecord]]:
    """An exam on the common grid (so an off-grid station stands out)."""
    rng = np.random.default_rng(5)
    plan = plan_exam(rng, on_grid=True)
    water, fat = phantom(plan)
    return plan, write_exam_zip(path, water, fat, plan, eid=EID, instance=2, rng=rng, quirks=quirks)


@pytest.fixture(scope="module")
def quirky(tmp_path_factory: pytest.TempPathFactory) -> QuirkyExam:
    path = tmp_path_factory.mktemp("quirky") / f"{EID}_20201_2_0.zip"
    plan, records = write(path, QUIRKS)
    series, broken = read_headers(path)
    return QuirkyExam(path, plan, {r.quirk: r for r in records}, series, broken)


def test_quirk_names_are_the_agreed_strings() -> None:
    assert QUIRKS == (
        "duplicate_station",
        "misspelled_manifest",
        "off_grid_station",
        "size_mismatch",
        "missing_slice",
        "corrupt_file",
        "extra_file",
        "water_fat_swap",
    )
    assert validate_quirks(["water_fat_swap", "extra_file"]) == ("extra_file", "water_fat_swap")
    with pytest.raises(UnknownQuirkError, match="unknown quirk"):
        validate_quirks(["water_fat_swop"])


def test_no_quirks_draw_nothing_and_slice_targets_are_interior() -> None:
    rng = np.random.default_rng(9)
    untouched = np.random.default_rng(9)
    plan = plan_quirks((), [64, 44], rng, pixel_spacing_mm=PIXEL_SPACING_MM, grid_spacing_mm=3.0)
    assert plan.missing_slice is None and plan.duplicate_station is None
    assert rng.integers(1 << 30) == untouched.integers(1 << 30)
    for seed in range(30):
        chosen = plan_quirks(
            ("missing_slice", "corrupt_file"), [5, 4], np.random.default_rng(seed),
            pixel_spacing_mm=PIXEL_SPACING_MM, grid_spacing_mm=3.0,
        )
        for target in (chosen.missing_slice, chosen.corrupt_slice):
            assert isinstance(target, SliceTarget) and target.suffix in ("W", "F")
            assert 1 <= target.slice_index <= (3 if target.station == 0 else 2)
        assert chosen.missing_slice != chosen.corrupt_slice


def test_every_quirk_is_recorded_once(quirky: QuirkyExam) -> None:
    assert set(quirky.records) == set(QUIRKS)
    for record in quirky.records.values():
        assert record.eid == EID and record.detail
        assert record.station is None or 1 <= record.station <= len(quirky.plan.stations)


def test_duplicate_station_is_reacquired_later_at_the_same_position(quirky: QuirkyExam) -> None:
    record = quirky.records["duplicate_station"]
    groups: dict[str, list[SeriesInfo]] = defaultdict(list)
    for item in quirky.series_of(record):
        groups[item.suffix].append(item)
    factor = float(re.search(r"gain x([0-9.]+)", record.detail).group(1))
    assert set(groups) == {"W", "F", "in", "opp"}
    for suffix, items in groups.items():
        assert len(items) == 2, suffix
        earlier, later = sorted(items, key=lambda s: s.time)
        assert later.number > earlier.number
        if suffix in ("W", "F") and len(earlier.names) == len(later.names):
            np.testing.assert_allclose(earlier.positions, later.positions)
    water_early, water_late = (s.pixels() for s in sorted(groups["W"], key=lambda s: s.time))
    offset = (GRID_ROWS - quirky.station(record).rows) // 2
    body = (slice(None), slice(50 - offset, 120 - offset), slice(60, 160))
    ratio = np.median(water_early[body]) / np.median(water_late[body])
    if np.median(water_late[body]) > 100:  # not a water-fat swapped station
        assert ratio == pytest.approx(factor, rel=0.05)
    # Every other station is acquired once.
    descriptions_at = defaultdict(list)
    for item in quirky.series:
        descriptions_at[(item.description, round(item.positions[0, 2]))].append(item)
    assert sum(len(v) == 2 for v in descriptions_at.values()) == 4


def test_misspelled_manifest(quirky: QuirkyExam) -> None:
    with zipfile.ZipFile(quirky.path) as archive:
        names = archive.namelist()
        text = archive.read("manifest.cvs").decode("ascii")
    assert "manifest.csv" not in names
    header = next(csv.reader(io.StringIO(text)))
    assert "series discription" in header and "series description" not in header


def test_off_grid_station_is_shifted_by_a_fraction_of_a_voxel(quirky: QuirkyExam) -> None:
    record = quirky.records["off_grid_station"]
    station = quirky.station(record)
    dx, dy, dz = (float(v) for v in re.findall(r"[xyz]=([-+0-9.]+)", record.detail))
    assert 0.1 < abs(dz) / GRID_SLICE_SPACING_MM < 0.9
    assert 0.1 < abs(dx) / PIXEL_SPACING_MM < 0.9 and 0.1 < abs(dy) / PIXEL_SPACING_MM < 0.9
    for item in quirky.series_of(record):
        if len(item.names) != station.slices:
            continue  # a slice quirk hit this series too
        # The record rounds the shift to micrometres.
        np.testing.assert_allclose(item.positions[:, 2], station.z_positions + dz, atol=1e-3)
        np.testing.assert_allclose(item.positions[:, 0], -(COLUMNS - 1) / 2 * PIXEL_SPACING_MM + dx, atol=1e-3)
        np.testing.assert_allclose(item.positions[:, 1], -(station.rows - 1) / 2 * PIXEL_SPACING_MM + dy, atol=1e-3)
    # Every other series is still on the grid.
    for item in quirky.series:
        if not any(item is s for s in quirky.series_of(record)):
            index = (quirky.plan.grid_z_top_mm - item.positions[:, 2]) / GRID_SLICE_SPACING_MM
            np.testing.assert_allclose(index, np.round(index), atol=1e-6)


def test_size_mismatch_between_water_and_fat(quirky: QuirkyExam) -> None:
    record = quirky.records["size_mismatch"]
    station = quirky.station(record)
    sizes = {item.suffix: (item.rows, item.columns) for item in quirky.series_of(record)}
    first_voxel = {item.suffix: item.positions[0, :2] for item in quirky.series_of(record)}
    water, fat = sizes["W"], sizes["F"]
    if quirky.records["water_fat_swap"].station == record.station:
        water, fat = fat, water
    assert water == (station.rows, station.columns)
    extra = (fat[0] - water[0], fat[1] - water[1])
    assert sorted(extra)[0] == 0 and 2 <= max(extra) <= 6
    assert f"{fat[0]}x{fat[1]}" in record.detail
    np.testing.assert_allclose(first_voxel["W"], first_voxel["F"])
    assert sizes["in"] == sizes["opp"] == (station.rows, station.columns)


def test_missing_slice_is_really_missing(quirky: QuirkyExam) -> None:
    record = quirky.records["missing_slice"]
    station = quirky.station(record)
    description, position = re.match(r"(\S+) slice (\d+)/", record.detail).groups()
    z = float(re.search(r"z=([-0-9.]+)", record.detail).group(1))
    target = [s for s in quirky.series_of(record) if s.description == description]
    kept = max(target, key=lambda s: s.time)  # the acquisition a reader keeps
    corrupt = quirky.records["corrupt_file"]
    also_corrupt = corrupt.station == record.station and f"({description} " in corrupt.detail
    assert len(kept.names) == station.slices - 1 - also_corrupt
    assert np.min(np.abs(kept.positions[:, 2] - z)) > 1.0
    assert int(position) not in (1, station.slices)


def test_corrupt_file_fails_to_parse(quirky: QuirkyExam) -> None:
    record = quirky.records["corrupt_file"]
    name = record.detail.split()[0]
    assert quirky.broken == [name]
    with zipfile.ZipFile(quirky.path) as archive:
        data = archive.read(name)
        assert name in archive.read("manifest.cvs").decode("ascii")
    for force in (False, True):
        with pytest.raises((AttributeError, ValueError)):
            pydicom.dcmread(io.BytesIO(data), force=force).pixel_array  # noqa: B018


def test_extra_file_is_not_dicom(quirky: QuirkyExam) -> None:
    name = quirky.records["extra_file"].detail.rsplit(" ", 1)[1]
    with zipfile.ZipFile(quirky.path) as archive:
        data = archive.read(name)
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(io.BytesIO(data))


def test_water_fat_swap_exchanges_the_channels(quirky: QuirkyExam) -> None:
    record = quirky.records["water_fat_swap"]
    offset = (GRID_ROWS - quirky.station(record).rows) // 2
    inside = (slice(None), slice(50 - offset, 120 - offset), slice(60, 160))
    shell = (slice(None), slice(23 - offset, 37 - offset), slice(60, 160))
    for item in quirky.series_of(record):
        if item.suffix in ("W", "F"):
            pixels = item.pixels()
            if item.suffix == "W":
                assert np.median(pixels[shell]) > 5 * np.median(pixels[inside])
            else:
                assert np.median(pixels[inside]) > 5 * np.median(pixels[shell])
    unswapped = next(
        s for s in quirky.series if s.suffix == "W" and all(s is not t for t in quirky.series_of(record))
    ).pixels()
    other_offset = (GRID_ROWS - unswapped.shape[1]) // 2
    assert np.median(unswapped[:, 50 - other_offset : 120 - other_offset, 60:160]) > 200


def test_quirks_leave_the_other_stations_untouched(quirky: QuirkyExam, tmp_path: Path) -> None:
    _, clean_records = write(tmp_path / "clean.zip", ())
    assert clean_records == []
    clean, _ = read_headers(tmp_path / "clean.zip")
    hit = {record.station for record in quirky.records.values()}
    untouched = next(number for number in range(1, len(quirky.plan.stations) + 1) if number not in hit)
    top = quirky.plan.stations[untouched - 1].z_top_mm

    def water_at_top(series: list[SeriesInfo]) -> np.ndarray:
        (found,) = [s for s in series if s.suffix == "W" and abs(s.positions[0, 2] - top) < 1e-6]
        return found.pixels()

    np.testing.assert_array_equal(water_at_top(quirky.series), water_at_top(clean))
