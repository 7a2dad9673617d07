"""The target catalog: every measurement MIMIR knows, with its published metrics.

One packaged CSV is the single source of truth so that synthesis, training, prediction and
reports agree on names, UK Biobank fields and units.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from mimir.errors import MimirError

if TYPE_CHECKING:
    import pandas as pd

_METRIC_COLUMNS = (
    "cv_n", "cv_icc", "cv_r2", "cv_mae", "cv_mape_percent",
    "test_n", "test_icc", "test_r2", "test_mae", "test_mape_percent",
)


#: Units of quantities that cannot be negative: masses, lengths, volumes, shares, rates, ages and
#: their ratios. Every continuous target of the catalog has one of them; a target added in another
#: unit (a score, a z-value, a change between visits) may be negative.
NON_NEGATIVE_UNITS = frozenset({"kg", "g", "cm", "L", "%", "bpm", "years", "L/L", "L/m2", "kg/L"})

#: How the predictions table reports a target (docs/intervals.md): a normal 95 % interval, the
#: same bounded at 0 for quantities that cannot be negative, or a probability without interval.
INTERVAL_NORMAL = "normal"
INTERVAL_BOUNDED = "normal, bounded at 0"
INTERVAL_PROBABILITY = "probability"

#: Decimals of a binary target's probability in the predictions table.
PROBABILITY_DECIMALS = 3
#: Rounding of values of a unit no catalog target has a published error for: significant digits.
UNKNOWN_UNIT_SIGNIFICANT_DIGITS = 6
#: A unit's rounding step is at most this share of the smallest published cross-validation MAE of
#: the catalog's targets in that unit, so rounding adds under 0.1 % to any target's error.
ROUNDING_STEP_PER_MAE = 0.1

#: Fields recorded once, at the baseline visit (sex): their UK Biobank columns are instance 0.
BASELINE_ONLY_FIELDS = frozenset({31})


class UnknownTargetError(MimirError, KeyError):
    """A target name that is not in the catalog; the message lists near misses."""


class UnknownModuleError(MimirError, KeyError):
    """A module name that is neither one of the paper's modules nor defined in the configuration."""


@dataclass(frozen=True)
class Target:
    """One measurement: where it lives in UK Biobank and how well MIMIR predicted it."""

    module: str
    name: str
    ukb_field: int | None
    unit: str
    kind: str  # "continuous" or "binary"
    published: dict[str, float]

    @property
    def is_binary(self) -> bool:
        return self.kind == "binary"

    @property
    def can_be_negative(self) -> bool:
        """Whether a negative value can be a measurement (see `can_be_negative`)."""
        return can_be_negative(self.kind, self.unit)

    @property
    def interval(self) -> str:
        """How the predictions table reports this target (see `interval_kind`)."""
        return interval_kind(self.kind, self.unit)

    @property
    def value_rule(self) -> str:
        """What every value of this target must be, in words (readers set others to missing)."""
        if self.is_binary:
            return f"0 or 1 ({self.unit})"
        if not self.can_be_negative:
            return f"finite and not negative ({self.unit})"
        return f"finite ({self.unit})"

    def export_column(self, instance: int = 2, array: int = 0) -> str:
        """Column name in a UK Biobank (ukbconv) style export: `{field}-{instance}.{array}`.

        Targets without a field id (derived by MIMIR's authors) keep their catalog name.
        Sex (field 31) is recorded once at baseline, so it is always instance 0.
        """
        if self.ukb_field is None:
            return self.name
        return f"{self.ukb_field}-{field_instance(self.ukb_field, instance)}.{array}"


def can_be_negative(kind: str, unit: str) -> bool:
    """Whether a negative value can be a measurement: never for a binary target (0 or 1) nor for
    a unit in NON_NEGATIVE_UNITS. The one place this is decided, from kind and unit (module
    targets outside the catalog have both too)."""
    return kind != "binary" and unit not in NON_NEGATIVE_UNITS


def interval_kind(kind: str, unit: str) -> str:
    """INTERVAL_PROBABILITY for a binary target, INTERVAL_BOUNDED where values cannot be
    negative, else INTERVAL_NORMAL. Modules learn every target on a linear (standardised) scale
    with a Gaussian likelihood, so no target gets a log-normal interval."""
    if kind == "binary":
        return INTERVAL_PROBABILITY
    return INTERVAL_NORMAL if can_be_negative(kind, unit) else INTERVAL_BOUNDED


@cache
def unit_decimals(unit: str) -> int | None:
    """Decimals of a unit's values in the predictions table; None for a unit without a published
    error (rounded to UNKNOWN_UNIT_SIGNIFICANT_DIGITS significant digits instead).

    The step is the largest power of ten at most ROUNDING_STEP_PER_MAE times the smallest
    published cross-validation MAE among the catalog's continuous targets in that unit.
    """
    errors = [
        target.published["cv_mae"]
        for target in catalog()
        if target.unit == unit and not target.is_binary and math.isfinite(target.published["cv_mae"])
    ]
    if not errors:
        return None
    return max(0, math.ceil(-math.log10(ROUNDING_STEP_PER_MAE * min(errors))))


def field_instance(ukb_field: int, instance: int) -> int:
    """The instance a field is recorded at: BASELINE_ONLY_FIELDS at 0, others at the visit's."""
    return 0 if ukb_field in BASELINE_ONLY_FIELDS else instance


def ukb_column(name: str, ukb_field: int | None, instance: int) -> str:
    """A target's column in Research Analysis Platform style: `p{field}_i{instance}` (as the
    platform's table exporter names fields); a target without a field keeps its name."""
    if ukb_field is None:
        return name
    return f"p{ukb_field}_i{field_instance(ukb_field, instance)}"


def _parse_float(text: str) -> float:
    return float(text) if text.strip() else math.nan


@cache
def catalog() -> tuple[Target, ...]:
    """All targets in catalog order."""
    text = resources.files("mimir.targets").joinpath("data/targets_published.csv").read_text()
    rows = csv.DictReader(text.splitlines())
    targets = []
    for row in rows:
        field_text = row["ukb_field"].strip()
        targets.append(
            Target(
                module=row["module"],
                name=row["name"],
                ukb_field=int(field_text) if field_text else None,
                unit=row["unit"],
                kind=row["kind"],
                published={column: _parse_float(row[column]) for column in _METRIC_COLUMNS},
            )
        )
    return tuple(targets)


def get_target(name: str) -> Target:
    """The target called `name`; a clear error lists near misses."""
    by_name = {target.name: target for target in catalog()}
    if name in by_name:
        return by_name[name]
    lowered = name.lower()
    close = [known for known in by_name if lowered in known.lower() or known.lower() in lowered]
    hint = f" Did you mean: {', '.join(close[:5])}?" if close else ""
    raise UnknownTargetError(f"unknown target {name!r}: not in the MIMIR catalog of {len(by_name)} targets.{hint}")


def module_names() -> tuple[str, ...]:
    """The paper's four modules, in catalog order."""
    return tuple(dict.fromkeys(target.module for target in catalog()))


def module_targets(module: str) -> tuple[Target, ...]:
    """Targets predicted by one of the paper's modules."""
    selected = tuple(target for target in catalog() if target.module == module)
    if not selected:
        raise UnknownModuleError(f"unknown module {module!r}; the catalog defines {', '.join(module_names())}")
    return selected


def catalog_table() -> "pd.DataFrame":
    """The catalog as a pandas table (one row per target)."""
    import pandas as pd

    records = [
        {
            "module": t.module,
            "name": t.name,
            "ukb_field": t.ukb_field,
            "unit": t.unit,
            "kind": t.kind,
            "interval": t.interval,
            **t.published,
        }
        for t in catalog()
    ]
    table = pd.DataFrame.from_records(records)
    table["ukb_field"] = table["ukb_field"].astype("Int64")
    return table
