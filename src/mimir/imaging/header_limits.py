"""The plausible ranges of the header values that drive reading, in one table.

Every value a DICOM header gives and the reader trusts to size arrays or place voxels is
checked against these ranges before any pixel is decoded: a hostile or broken header
(PixelSpacing NaN or 1e6, 4096 x 4096 slices, a slice at z = NaN) then costs a specific
reason instead of a distorted image, a crash or gigabytes of memory. The ranges are wide
around the field-20201 protocol (`mimir.protocol`) so that other sites' exams of the same
protocol still pass. docs/reliability.md renders `HEADER_LIMITS` (a test keeps them equal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Rows and Columns (0028,0010), (0028,0011) of one slice; field 20201: 156-174 x 224.
MIN_MATRIX, MAX_MATRIX = 8, 1024
#: PixelSpacing (0028,0030) in mm, each of the two values; field 20201: 2.232.
MIN_PIXEL_SPACING_MM, MAX_PIXEL_SPACING_MM = 0.2, 10.0
#: |x|, |y| and |z| of ImagePositionPatient (0020,0032) in mm: the scanner's reach.
MAX_POSITION_MM = 5000.0
#: Median slice step of a series in mm, from the positions; field 20201: 3.0-4.5.
MIN_SLICE_SPACING_MM, MAX_SLICE_SPACING_MM = 0.5, 20.0
#: Slices of one series on its regular z grid, missing ones included; field 20201: 44-72.
MAX_SERIES_SLICES = 1024
#: Estimated peak bytes of one exam's arrays (held water/fat members, float32 series
#: volumes, the fused grid twice); a field-20201 exam needs about 0.5 GiB.
MAX_EXAM_BYTES = 3 * 2**29


@dataclass(frozen=True)
class HeaderLimit:
    """One row of the limits table: what is checked, its range, and what happens outside it."""

    quantity: str
    tags: str
    plausible: str
    field_20201: str
    outside: str


HEADER_LIMITS: tuple[HeaderLimit, ...] = (
    HeaderLimit(
        "Rows, Columns", "(0028,0010), (0028,0011)", f"{MIN_MATRIX} to {MAX_MATRIX}", "156-174 x 224",
        "the slice is never decoded: filled from its neighbours like a corrupt slice (noted); "
        "the series is refused (header) when half or more of its slices are unusable",
    ),
    HeaderLimit(
        "PixelSpacing", "(0028,0030)", f"finite, {MIN_PIXEL_SPACING_MM} to {MAX_PIXEL_SPACING_MM} mm", "2.232 mm",
        "missing: taken from the other slices of the series (noted), the exam refused (header) when no slice "
        "has it; not finite or out of range: the slice is unusable, as above",
    ),
    HeaderLimit(
        "ImageOrientationPatient", "(0020,0037)", "6 finite values, axial (1,0,0,0,1,0) within 0.001", "axial",
        "not finite: the slice is unusable, as above; not axial: the exam is refused (geometry)",
    ),
    HeaderLimit(
        "ImagePositionPatient", "(0020,0032)", f"3 finite values, each within +-{MAX_POSITION_MM:.0f} mm", "isocentred",
        "the slice is dropped (noted); its place is filled from its neighbours when inside the series, "
        "and counts as unusable for the series' share",
    ),
    HeaderLimit(
        "RescaleSlope, RescaleIntercept", "(0028,1053), (0028,1052)", "finite, and finite rescaled pixels", "absent (1, 0)",
        "the slice is unusable, as above (never a NaN cast to uint8)",
    ),
    HeaderLimit(
        "slice spacing", "ImagePositionPatient z steps", f"median {MIN_SLICE_SPACING_MM} to {MAX_SLICE_SPACING_MM} mm",
        "3.0-4.5 mm", "the exam is refused (geometry)",
    ),
    HeaderLimit(
        "slices per series", "ImagePositionPatient z",
        f"at most {MAX_SERIES_SLICES} on the series' z grid, at least half of them readable", "44-72",
        "the exam is refused (geometry)",
    ),
    HeaderLimit(
        "NIfTI volume", "dim, sform/qform affine",
        f"3D, 1 to {MAX_SERIES_SLICES} voxels per axis, finite affine, voxels {MIN_PIXEL_SPACING_MM} to {MAX_SLICE_SPACING_MM} mm",
        "(fused) 224 x 174 x ~370 of 2.232 x 2.232 x 3 mm", "the exam is refused (header)",
    ),
    HeaderLimit(
        "memory per exam", "Rows x Columns of every water/fat slice, positions, spacing; NIfTI dim and voxel size",
        f"at most {MAX_EXAM_BYTES / 2**30:.1f} GiB estimated before any pixel is decoded", "about 0.5 GiB",
        "the exam is refused (safety)",
    ),
)


def header_limits_markdown() -> str:
    """The limits as the Markdown table docs/reliability.md shows."""
    lines = [
        "| quantity | tags | plausible range | field 20201 | outside the range |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {row.quantity} | {row.tags} | {row.plausible} | {row.field_20201} | {row.outside} |" for row in HEADER_LIMITS]
    return "\n".join(lines) + "\n"


#: The tag of every header value checked here, for reasons that name it.
TAGS = {
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
    "PixelSpacing": "(0028,0030)",
    "ImagePositionPatient": "(0020,0032)",
    "ImageOrientationPatient": "(0020,0037)",
    "RescaleSlope": "(0028,1053)",
    "RescaleIntercept": "(0028,1052)",
}


def named(keyword: str, value: object) -> str:
    """'Keyword (gggg,eeee) value', the way every reason and note quotes a header value."""
    return f"{keyword} {TAGS[keyword]} {_shown(value)}"


def _shown(value: object) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(_shown(item) for item in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _finite(values: object, count: int) -> bool:
    """`count` finite numbers; header values arrive as lists (checked per slice, so kept cheap)."""
    return isinstance(values, list) and len(values) == count and all(map(math.isfinite, values))


def slice_header_problem(values: Mapping[str, object]) -> str | None:
    """Why a water/fat slice's header cannot be trusted to size or place its pixels, or None.

    PixelSpacing may be absent (the series may supply it, see `pixel_spacing`); every other
    value the reader relies on must be present, finite and within `HEADER_LIMITS`.
    """
    for keyword in ("Rows", "Columns"):
        size = values.get(keyword)
        if size is None:
            return f"{keyword} {TAGS[keyword]} missing"
        if not MIN_MATRIX <= int(size) <= MAX_MATRIX:  # type: ignore[call-overload]
            return f"{named(keyword, size)} outside {MIN_MATRIX} to {MAX_MATRIX}"
    problem = position_problem(values)
    if problem is not None:
        return problem
    orientation = values.get("ImageOrientationPatient")
    if orientation is not None and not _finite(orientation, 6):
        return f"{named('ImageOrientationPatient', orientation)} is not 6 finite values"
    spacing = values.get("PixelSpacing")
    if spacing is not None:
        if not _finite(spacing, 2):
            return f"{named('PixelSpacing', spacing)} is not 2 finite values"
        if not (MIN_PIXEL_SPACING_MM <= min(spacing) and max(spacing) <= MAX_PIXEL_SPACING_MM):  # type: ignore[type-var]
            return f"{named('PixelSpacing', spacing)} outside {MIN_PIXEL_SPACING_MM:g} to {MAX_PIXEL_SPACING_MM:g} mm"
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        rescale = values.get(keyword)
        if rescale is not None and not _finite(rescale, len(rescale)):  # type: ignore[arg-type]
            return f"{named(keyword, rescale)} is not finite"
    return None


def position_problem(values: Mapping[str, object]) -> str | None:
    """Why a slice's ImagePositionPatient cannot place it (missing, not finite, beyond reach), or None."""
    position = values.get("ImagePositionPatient")
    if position is None:
        return f"ImagePositionPatient {TAGS['ImagePositionPatient']} missing"
    if not _finite(position, 3):
        return f"{named('ImagePositionPatient', position)} is not 3 finite values"
    if max(map(abs, position)) > MAX_POSITION_MM:  # type: ignore[call-overload]
        return f"{named('ImagePositionPatient', position)} beyond +-{MAX_POSITION_MM:g} mm"
    return None


def pixel_spacing(values: Mapping[str, object]) -> tuple[float, float] | None:
    """(row, column) spacing of a slice that passed `slice_header_problem`; None when absent."""
    spacing = values.get("PixelSpacing")
    return None if spacing is None else (float(spacing[0]), float(spacing[1]))  # type: ignore[index]


def slice_spacing_problem(spacing: float) -> str | None:
    """Why a series' median slice step (mm, from ImagePositionPatient) is implausible, or None."""
    if MIN_SLICE_SPACING_MM <= spacing <= MAX_SLICE_SPACING_MM:
        return None
    return (
        f"slice spacing {spacing:g} mm from ImagePositionPatient {TAGS['ImagePositionPatient']} "
        f"outside {MIN_SLICE_SPACING_MM:g} to {MAX_SLICE_SPACING_MM:g} mm"
    )
