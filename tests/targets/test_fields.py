"""UK Biobank field facts: showcase units converted to the catalog's, repeated measurements
averaged, and docs/targets_units.md kept equal to the packaged table."""

import logging
import math
from pathlib import Path

import pytest

from mimir.cli import main
from mimir.targets.catalog import Target, catalog, get_target
from mimir.targets.exports import export_to_targets
from mimir.targets.fields import (
    CONFIDENCES,
    FieldUnitError,
    array_count,
    catalog_factor,
    export_columns,
    field_facts,
    field_units_markdown,
)

UNITS_DOC = Path(__file__).resolve().parents[2] / "docs" / "targets_units.md"


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_catalog_field_has_a_known_unit_that_converts_to_the_catalog_unit():
    fields = {t.ukb_field for t in catalog() if t.ukb_field is not None}
    assert set(field_facts()) == fields  # no field left out, none that the catalog lacks
    for target in catalog():
        assert catalog_factor(target) > 0, target.name
        if target.ukb_field is not None:
            facts = field_facts()[target.ukb_field]
            assert facts.confidence in CONFIDENCES and facts.arrays >= 1
            assert facts.confidence == "sure" or facts.note, f"{target.name}: say why the unit is not sure"


@pytest.mark.parametrize(
    ("name", "factor"),
    [("DxaTotalFatMass", 1e-3), ("DxaAndroidBoneMass", 1.0), ("DxaVatVolume", 1e-3), ("DxaTotalTissueFatPercentage", 1.0),
     ("gripStrengthRight", 1.0), ("weight", 1.0), ("AtlasVatVolume", 1.0), ("liverVolume", 1.0)],
)
def test_conversion_factors(name, factor):
    assert catalog_factor(get_target(name)) == factor


def test_pulse_rate_is_the_field_of_repeated_measurements():
    assert [t.name for t in catalog() if array_count(t) > 1] == ["pulseRate"]
    assert export_columns(get_target("pulseRate"), 3) == ("102-3.0", "102-3.1")
    assert export_columns(get_target("sex"), 2) == ("31-0.0",)
    assert export_columns(get_target("age"), 2) == ("age",)


def test_the_units_doc_shows_the_packaged_table():
    assert field_units_markdown() in UNITS_DOC.read_text(encoding="utf-8")


def test_dxa_masses_in_grams_are_read_in_kg_and_other_units_as_they_are(tmp_path):
    path = write_lines(
        tmp_path / "ukb.csv",
        ["eid,23278-2.0,23244-2.0,23289-2.0,23281-2.0,47-2.0,21002-2.0", "1000001,25130,48.5,1250,31.2,38,81.4"],
    )
    row = export_to_targets(path).iloc[0]
    assert row["DxaTotalFatMass"] == pytest.approx(25.13)
    assert row["DxaAndroidBoneMass"] == 48.5  # the catalog keeps bone masses in g
    assert row["DxaVatVolume"] == pytest.approx(1.25)  # cm3 -> L
    assert (row["DxaTotalTissueFatPercentage"], row["gripStrengthRight"], row["weight"]) == (31.2, 38, 81.4)


def test_rap_columns_are_converted_and_averaged_too(tmp_path):
    path = write_lines(
        tmp_path / "rap.tsv",
        ["participant.eid\tparticipant.p23278_i2\tp102_i2_a0\tp102_i2_a1", "1000001\t25130\t70\t75"],
    )
    row = export_to_targets(path).iloc[0]
    assert row["DxaTotalFatMass"] == pytest.approx(25.13) and row["pulseRate"] == 72.5


def test_pulse_rate_is_the_mean_of_the_readings_present(tmp_path, caplog):
    path = write_lines(
        tmp_path / "ukb.csv",
        [
            "eid,102-2.0,102-2.1,102-3.0,21002-2.0",
            "1,70,74,90,80",
            "2,,66,90,80",  # the first reading missing
            "3,61,NA,90,80",  # the second missing
            "4,,,90,80",  # none at this visit
            "5,-5,68,90,80",  # an impossible reading is dropped before averaging
        ],
    )
    with caplog.at_level(logging.INFO, logger="mimir.targets.exports"):
        table = export_to_targets(path).set_index("eid")
    assert table["pulseRate"].tolist()[:3] == [72.0, 66.0, 61.0]
    assert math.isnan(table.loc[4, "pulseRate"]) and table.loc[5, "pulseRate"] == 68.0
    messages = [record.getMessage() for record in caplog.records]
    dropped = f"{path}: pulseRate: 1 value set to missing (1 negative): a value must be finite and not negative (bpm)"
    averaged = "pulseRate: the mean of the readings present in 102-2.0, 102-2.1: 1 participants with all 2, 3 with fewer"
    assert dropped in messages and averaged in messages


def test_arrays_beyond_a_fields_measurements_are_not_read(tmp_path, caplog):
    path = write_lines(tmp_path / "ukb.csv", ["eid,102-2.0,102-2.1,102-2.2,21002-2.0,21002-2.1", "1,70,74,200,80,90"])
    with caplog.at_level(logging.INFO, logger="mimir.targets.exports"):
        row = export_to_targets(path).iloc[0]
    assert (row["pulseRate"], row["weight"]) == (72.0, 80.0)
    assert any("102-2.2, 21002-2.1" in record.getMessage() for record in caplog.records)


def test_one_array_given_twice_is_refused(tmp_path):
    path = write_lines(tmp_path / "ukb.csv", ["eid,102-2.1,p102_i2_a1", "1,70,74"])
    with pytest.raises(ValueError, match=r"columns '102-2.1' and 'p102_i2_a1' both hold target pulseRate \(array 1\)"):
        export_to_targets(path)


def _custom(field: int, unit: str) -> Target:
    return Target(module="custom", name="customMass", ukb_field=field, unit=unit, kind="continuous", published={})


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (_custom(99999, "kg"), r"customMass: the UK Biobank unit of field 99999 is unknown to MIMIR .*ukb_fields.csv"),
        (_custom(23278, "L"), r"customMass: field 23278 is recorded in g, which MIMIR cannot convert to the catalog's L"),
    ],
)
def test_a_field_of_unknown_or_unconvertible_unit_is_refused(tmp_path, target, message):
    path = write_lines(tmp_path / "ukb.csv", [f"eid,{target.ukb_field}-2.0,21002-2.0", "1,25130,80"])
    with pytest.raises(FieldUnitError, match=message):
        export_to_targets(path, targets=[target, get_target("weight")])
    # a target that the export does not hold needs no unit
    other = write_lines(tmp_path / "other.csv", ["eid,21002-2.0", "1,80"])
    assert export_to_targets(other, targets=[target, get_target("weight")]).loc[0, "weight"] == 80


def test_the_targets_command_writes_catalog_units(tmp_path):
    export = write_lines(tmp_path / "ukb.csv", ["eid,23278-2.0,102-2.0,102-2.1", "1000001,25130,70,75"])
    out = tmp_path / "targets.csv"
    assert main(["targets", str(export), "--out", str(out)]) == 0
    assert out.read_text().splitlines()[1].startswith("1000001,2,")
    table = export_to_targets(export)
    assert table.loc[0, "DxaTotalFatMass"] == pytest.approx(25.13) and table.loc[0, "pulseRate"] == 72.5


def test_values_far_from_the_published_scale_are_warned_about(tmp_path, caplog):
    """A DXA mass already in kg (divided once more), a VAT volume in mL: warned, not refused."""
    rows = [f"{1000001 + i},{25.0 + i},{1200 + i},{70 + i}" for i in range(12)]
    path = write_lines(tmp_path / "ukb.csv", ["eid,23278-2.0,22407-2.0,21002-2.0", *rows])
    with caplog.at_level(logging.WARNING, logger="mimir.targets.exports"):
        table = export_to_targets(path)
    assert table["DxaTotalFatMass"].iloc[0] == pytest.approx(0.025)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2, warnings
    assert "AtlasVatVolume: the median value, 1206 L" in warnings[0]  # catalog order
    assert warnings[1] == (
        f"{path}: DxaTotalFatMass: the median value, 0.0305 kg, is far from the published data's typical 22.35 kg: "
        "is field 23278 in the unit that docs/targets_units.md gives for it?"
    )
    caplog.clear()
    few = write_lines(tmp_path / "few.csv", ["eid,23278-2.0", *rows[:9]])  # too few values to judge
    with caplog.at_level(logging.WARNING, logger="mimir.targets.exports"):
        export_to_targets(few)
    assert not caplog.records
