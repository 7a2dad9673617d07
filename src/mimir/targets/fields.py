"""UK Biobank facts about the catalog's fields: each field's showcase unit and array count.

An export holds values as the UK Biobank showcase records them (DXA masses in grams, for
example), while the catalog, the published modules and the predictions use the catalog's unit
(kg). The packaged table `data/ukb_fields.csv` records per field:

- `ukb_unit`: the showcase unit, in the catalog's notation (`%` for "percent", `kg` for "Kg");
- `arrays`: how many array indices the field has per visit. Fields with more than one hold
  repeated measurements of one quantity (pulse rate is read twice) and are averaged;
- `confidence`: `sure`, `likely` (from memory of the showcase, not re-checked) or `unsure`;
- `note`: why, where it is not `sure`.

`catalog_factor` is the one conversion: an export value times it is the catalog's value.
docs/targets_units.md renders the table (`field_units_markdown`; a test keeps them equal).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

from mimir.errors import MimirError
from mimir.targets.catalog import Target, catalog

#: Units whose values convert by a factor: a value in the first unit times it is in the second.
#: Kilogram-force (grip strength) is numerically the mass in kg that it would lift.
_FACTORS = {("g", "kg"): 1e-3, ("cm3", "L"): 1e-3, ("kgf", "kg"): 1.0}
CONFIDENCES = ("sure", "likely", "unsure")


class FieldUnitError(MimirError, ValueError):
    """A field whose showcase unit MIMIR does not know, or cannot convert to the catalog's unit:
    its values would be read in an unknown scale, so they are refused rather than guessed."""


@dataclass(frozen=True)
class FieldFacts:
    """What UK Biobank records for one field: its unit and how many measurements per visit."""

    field: int
    ukb_unit: str
    arrays: int
    confidence: str
    note: str

    @property
    def repeated(self) -> bool:
        """Several measurements of one quantity per visit (averaged when read)."""
        return self.arrays > 1


@cache
def field_facts() -> dict[int, FieldFacts]:
    """The packaged table, by field id."""
    text = resources.files("mimir.targets").joinpath("data/ukb_fields.csv").read_text(encoding="utf-8")
    facts = {}
    for row in csv.DictReader(text.splitlines()):
        field = int(row["ukb_field"])
        facts[field] = FieldFacts(field, row["ukb_unit"].strip(), int(row["arrays"]), row["confidence"], row["note"])
    return facts


def facts_of(target: Target) -> FieldFacts:
    """The facts of a target's field; FieldUnitError for a field the table does not hold."""
    facts = field_facts().get(target.ukb_field) if target.ukb_field is not None else None
    if facts is None or not facts.ukb_unit:
        raise FieldUnitError(
            f"{target.name}: the UK Biobank unit of field {target.ukb_field} is unknown to MIMIR "
            f"(mimir/targets/data/ukb_fields.csv), so its values cannot be converted to {target.unit}; "
            "add the field's showcase unit there"
        )
    return facts


def catalog_factor(target: Target) -> float:
    """What multiplies an export value of `target` into the catalog's unit (1 for targets without
    a field, which exports name as in the catalog and hold in its unit)."""
    if target.ukb_field is None:
        return 1.0
    unit = facts_of(target).ukb_unit
    if unit == target.unit:
        return 1.0
    factor = _FACTORS.get((unit, target.unit))
    if factor is None:
        raise FieldUnitError(
            f"{target.name}: field {target.ukb_field} is recorded in {unit}, which MIMIR cannot convert "
            f"to the catalog's {target.unit}"
        )
    return factor


#: How far (as a ratio either way) the median of a target may lie from its published typical
#: value before a unit is suspected: real medians lie within about 3x, unit slips are 100x-1000x.
SCALE_TOLERANCE = 20.0


def typical_value(target: Target) -> float:
    """A typical value of a continuous target in the published data, from its cross-validation
    MAE and MAPE (MAE / MAPE is the scale of the values); NaN where either is not published."""
    mae, mape = target.published.get("cv_mae", math.nan), target.published.get("cv_mape_percent", math.nan)
    if target.is_binary or not (mae > 0 and mape > 0):
        return math.nan
    return 100.0 * mae / mape


def array_count(target: Target) -> int:
    """How many array indices of the target's field hold its measurements (1 without a field)."""
    return 1 if target.ukb_field is None else facts_of(target).arrays


def export_columns(target: Target, instance: int = 2) -> tuple[str, ...]:
    """The ukbconv-style columns of a target in an export, one per array index."""
    return tuple(target.export_column(instance, array) for array in range(array_count(target)))


def field_units_markdown(targets: tuple[Target, ...] | None = None) -> str:
    """The table of docs/targets_units.md: every catalog field, its units, factor and arrays."""
    lines = [
        "| field | target | UK Biobank unit | catalog unit | factor | arrays | confidence | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in targets or catalog():
        if target.ukb_field is None:
            continue
        facts = facts_of(target)
        arrays = f"{facts.arrays} (averaged)" if facts.repeated else str(facts.arrays)
        lines.append(
            f"| {target.ukb_field} | {target.name} | {facts.ukb_unit} | {target.unit} | {catalog_factor(target):g} "
            f"| {arrays} | {facts.confidence} | {facts.note} |"
        )
    return "\n".join(lines) + "\n"
