"""The flags naming DICOM water and fat series, shared by `mimir compress` and `mimir predict`."""

from __future__ import annotations

import argparse


def add_series_patterns(parser: argparse.ArgumentParser) -> None:
    """--water-pattern and --fat-pattern, for exams whose series neither UK Biobank's
    descriptions nor ImageType mark (imaging/dixon_series.py decides with them)."""
    group = parser.add_argument_group(
        "DICOM series",
        "Water and fat series are found by UK Biobank descriptions ending _W/_F, else by ImageType "
        "values WATER/FAT or W/F (never in-phase, opposed-phase or fat-fraction images). For other exams name them here.",
    )
    group.add_argument(
        "--water-pattern", metavar="REGEX",
        help="regular expression searched in SeriesDescription that marks the water series, e.g. 'Dixon.*_W$' "
        "or '(?i)water'; replaces the built-in rules for water",
    )
    group.add_argument(
        "--fat-pattern", metavar="REGEX",
        help="the same for the fat series; replaces the built-in rules for fat",
    )


def series_patterns(args: argparse.Namespace) -> dict[str, str | None]:
    """The patterns as keyword arguments of CompressOptions and PredictOptions."""
    return {"water_pattern": args.water_pattern, "fat_pattern": args.fat_pattern}
