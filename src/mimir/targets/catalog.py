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
        """Whether a negative value can be a measurement: never for a binary target (0 or 1) nor
        for a unit in NON_NEGATIVE_UNITS. The one place this is decided, from kind and unit."""
        return not self.is_binary and self.unit not in NON_NEGATIVE_UNITS

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
        if self.ukb_field == 31:
            return "31-0.0"
        return f"{self.ukb_field}-{instance}.{array}"


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
            **t.published,
        }
        for t in catalog()
    ]
    table = pd.DataFrame.from_records(records)
    table["ukb_field"] = table["ukb_field"].astype("Int64")
    return table
