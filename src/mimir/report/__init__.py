"""Figures and pages that show people how well MIMIR measures: plots, HTML report, subject figure.

The number formatting lives here so that the report tables and the subject figure round alike.
"""

from __future__ import annotations

import math

#: Shown in place of a number that is missing or undefined (NaN, inf).
MISSING = "\u2013"

#: Headings for the catalog's module ids (the paper's four networks).
MODULE_TITLES = {
    "experimental": "Anthropometry and experimental",
    "organs": "Abdominal organs",
    "age": "Age",
    "bodycomp": "Body composition",
}


def significant_decimals(value: float, digits: int = 3) -> int | None:
    """Decimals that show `value` to `digits` significant digits (None for 0 and non-finite)."""
    if value is None or not math.isfinite(value) or value == 0:
        return None
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    rounded = round(value, decimals)
    if rounded == 0:
        return None
    # Rounding can add a digit (9.996 -> 10.0): count again on the rounded value.
    return digits - 1 - math.floor(math.log10(abs(rounded)))


def format_significant(value: float, digits: int = 3) -> str:
    """`value` rounded to `digits` significant digits, never in scientific notation."""
    if value is None or not math.isfinite(value):
        return MISSING
    decimals = significant_decimals(value, digits)
    if decimals is None:
        return "0"
    return f"{round(value, decimals):.{max(decimals, 0)}f}"


def format_like(value: float, reference: float, digits: int = 3) -> str:
    """`value` with the decimals that `reference` needs, so an interval reads like its mean."""
    decimals = significant_decimals(reference, digits)
    if decimals is None:
        return format_significant(value, digits)
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{round(value, decimals):.{max(decimals, 0)}f}"


def format_decimals(value: float, decimals: int) -> str:
    """Fixed decimals for bounded scores (ICC, R2, AUC) and percentages."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.{decimals}f}"


def format_count(value: float) -> str:
    """Whole counts with thousands separators, e.g. 38,874."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{int(round(value)):,}"
