"""Real-data quirks of UK Biobank field-20201 zips, injected on request into synthetic exams.

Readers must survive what the real archive contains (see docs/ukb-body-mri.md, section 1), so
the synthetic cohort reproduces each quirk on chosen subjects and records where it put it.
This module decides *what* to inject (which station, slice, shift); the zip writer executes it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from mimir.errors import MimirError

logger = logging.getLogger(__name__)

#: Names of the injectable quirks (the strings `quirks.csv` and `--quirks` use).
QUIRKS: tuple[str, ...] = (
    "duplicate_station",
    "misspelled_manifest",
    "off_grid_station",
    "size_mismatch",
    "missing_slice",
    "corrupt_file",
    "extra_file",
    "water_fat_swap",
)


class UnknownQuirkError(MimirError, ValueError):
    """A quirk name that is not one of `QUIRKS`."""


#: Non-DICOM files a zip may carry, with their content.
_EXTRA_FILES: tuple[tuple[str, bytes], ...] = (
    ("readme.txt", b"Exported by the imaging centre. Contact the data manager with questions.\r\n"),
    (".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(range(32)) * 4),
    ("Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(56)),
)


@dataclass(frozen=True)
class QuirkRecord:
    """One injected quirk; `station` is the 1-based station number (1 = neck), None if exam-wide."""

    eid: int
    quirk: str
    station: int | None
    detail: str


@dataclass(frozen=True)
class SliceTarget:
    """One slice file of one series: 0-based station index, series suffix, 0-based slice (head to foot)."""

    station: int
    suffix: str
    slice_index: int


@dataclass(frozen=True)
class QuirkPlan:
    """Where each requested quirk goes; station indices are 0-based, None means not injected."""

    duplicate_station: int | None = None
    #: Gain of the repeated acquisition relative to the first one.
    duplicate_gain_factor: float = 1.0
    off_grid_station: int | None = None
    #: Shift (x, y, z) in mm of the off-grid station, each a fraction of a voxel.
    off_grid_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size_mismatch_station: int | None = None
    #: Extra (rows, columns) of the fat series, appended after the last row/column.
    size_mismatch_extra: tuple[int, int] = (0, 0)
    missing_slice: SliceTarget | None = None
    corrupt_slice: SliceTarget | None = None
    #: Share of the corrupt file's bytes kept (the cut falls inside the pixel data).
    corrupt_keep_fraction: float = 1.0
    extra_file: tuple[str, bytes] | None = None
    swap_station: int | None = None
    misspelled_manifest: bool = False


def validate_quirks(names: Collection[str]) -> tuple[str, ...]:
    """Known quirk names in canonical order; unknown names are an error, not silently skipped."""
    unknown = sorted(set(names) - set(QUIRKS))
    if unknown:
        raise UnknownQuirkError(f"unknown quirk(s) {', '.join(unknown)}; known: {', '.join(QUIRKS)}")
    return tuple(name for name in QUIRKS if name in names)


def plan_quirks(
    names: Collection[str],
    slices_per_station: Sequence[int],
    rng: np.random.Generator,
    *,
    pixel_spacing_mm: float,
    grid_spacing_mm: float,
) -> QuirkPlan:
    """Choose stations, slices and shifts for the requested quirks (draws from `rng` only if any)."""
    chosen = validate_quirks(names)
    n_stations = len(slices_per_station)
    plan: dict[str, object] = {}
    for name in chosen:
        if name == "duplicate_station":
            plan["duplicate_station"] = int(rng.integers(n_stations))
            plan["duplicate_gain_factor"] = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.3) + 1.0)
        elif name == "off_grid_station":
            # Station 1 anchors the grid in the published fusion, so shift one of the others.
            plan["off_grid_station"] = int(rng.integers(1, n_stations))
            fractions = rng.uniform(0.2, 0.8, size=3) * rng.choice([-1.0, 1.0], size=3)
            plan["off_grid_shift_mm"] = (
                float(fractions[0] * pixel_spacing_mm),
                float(fractions[1] * pixel_spacing_mm),
                float(fractions[2] * grid_spacing_mm),
            )
        elif name == "size_mismatch":
            plan["size_mismatch_station"] = int(rng.integers(n_stations))
            extra = int(rng.integers(2, 7))
            plan["size_mismatch_extra"] = (extra, 0) if rng.random() < 0.5 else (0, extra)
        elif name == "missing_slice":
            plan["missing_slice"] = _pick_slice(slices_per_station, rng, avoid=None)
        elif name == "corrupt_file":
            avoid = plan.get("missing_slice")
            plan["corrupt_slice"] = _pick_slice(slices_per_station, rng, avoid=avoid)  # type: ignore[arg-type]
            plan["corrupt_keep_fraction"] = float(rng.uniform(0.3, 0.9))
        elif name == "extra_file":
            plan["extra_file"] = _EXTRA_FILES[int(rng.integers(len(_EXTRA_FILES)))]
        elif name == "water_fat_swap":
            plan["swap_station"] = int(rng.integers(n_stations))
        elif name == "misspelled_manifest":
            plan["misspelled_manifest"] = True
    return QuirkPlan(**plan)  # type: ignore[arg-type]


def _pick_slice(slices_per_station: Sequence[int], rng: np.random.Generator, avoid: SliceTarget | None) -> SliceTarget:
    """An interior slice of a water or fat series, so the gap shows up inside the station."""
    while True:
        station = int(rng.integers(len(slices_per_station)))
        target = SliceTarget(
            station=station,
            suffix=str(rng.choice(["W", "F"])),
            slice_index=int(rng.integers(1, slices_per_station[station] - 1)),
        )
        if target != avoid:
            return target
