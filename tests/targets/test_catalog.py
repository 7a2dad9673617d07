import math

import pytest

from mimir.targets.catalog import (
    UnknownModuleError,
    UnknownTargetError,
    catalog,
    catalog_table,
    get_target,
    module_names,
    module_targets,
)

NO_FIELD_TARGETS = {"liverVolume", "kidneyParenchymalVolume", "age", "diabetesType2Probable"}


def test_catalog_has_72_unique_targets_with_valid_kinds():
    targets = catalog()
    assert len(targets) == 72
    assert len({t.name for t in targets}) == 72
    assert {t.kind for t in targets} == {"continuous", "binary"}
    assert {t.name for t in targets if t.is_binary} == {"sex", "diabetesType2Probable"}
    fields = [t.ukb_field for t in targets if t.ukb_field is not None]
    assert len(fields) == len(set(fields))


def test_targets_without_a_field_are_the_known_four():
    assert {t.name for t in catalog() if t.ukb_field is None} == NO_FIELD_TARGETS


def test_export_columns_follow_ukbconv_naming():
    assert get_target("AtlasVatVolume").export_column(2) == "22407-2.0"
    assert get_target("AtlasVatVolume").export_column(3) == "22407-3.0"
    assert get_target("sex").export_column(3) == "31-0.0"
    assert get_target("liverVolume").export_column(2) == "liverVolume"


def test_published_metrics_are_parsed():
    height = get_target("height")
    assert height.ukb_field == 12144 and height.unit == "cm" and height.module == "experimental"
    assert height.published["cv_mae"] == pytest.approx(1.794)
    assert math.isnan(height.published["test_icc"])
    assert get_target("AtlasVatVolume").published["test_n"] == 14772


def test_get_target_suggests_near_misses():
    with pytest.raises(UnknownTargetError, match="Did you mean: .*liverFat"):
        get_target("liverfat2")
    with pytest.raises(UnknownTargetError, match="unknown target 'zzz'"):
        get_target("zzz")


def test_modules_partition_the_catalog():
    assert module_names() == ("experimental", "organs", "age", "bodycomp")
    assert sum(len(module_targets(m)) for m in module_names()) == 72
    assert [t.name for t in module_targets("age")] == ["age"]
    with pytest.raises(UnknownModuleError, match="unknown module"):
        module_targets("brain")


def test_catalog_table_types():
    table = catalog_table()
    assert len(table) == 72
    assert str(table["ukb_field"].dtype) == "Int64"
    assert table["ukb_field"].isna().sum() == len(NO_FIELD_TARGETS)
    assert table.loc[table["name"] == "weight", "cv_icc"].item() == pytest.approx(0.997)


def test_every_catalog_target_states_the_values_it_can_take():
    from mimir.targets.catalog import NON_NEGATIVE_UNITS, catalog, get_target

    for target in catalog():
        assert target.is_binary or target.unit in NON_NEGATIVE_UNITS, f"decide whether {target.unit} can be negative"
        assert not target.can_be_negative
    assert get_target("weight").value_rule == "finite and not negative (kg)"
    assert get_target("sex").value_rule == "0 or 1 (male=1)"


def test_interval_kinds_follow_kind_and_unit():
    from mimir.targets.catalog import (
        INTERVAL_BOUNDED,
        INTERVAL_NORMAL,
        INTERVAL_PROBABILITY,
        interval_kind,
    )

    assert get_target("AtlasVatVolume").interval == INTERVAL_BOUNDED
    assert get_target("sex").interval == INTERVAL_PROBABILITY
    assert interval_kind("continuous", "z-score") == INTERVAL_NORMAL  # a unit that may be negative
    assert catalog_table().set_index("name").loc["liverFat", "interval"] == INTERVAL_BOUNDED


def test_rounding_steps_are_a_tenth_of_the_smallest_published_error_or_finer():
    from mimir.targets.catalog import catalog, unit_decimals

    assert (unit_decimals("kg"), unit_decimals("L"), unit_decimals("cm"), unit_decimals("L/L")) == (2, 3, 1, 4)
    assert unit_decimals("points") is None  # no published error to size the step on
    for target in catalog():
        if not target.is_binary:
            step = 10.0 ** -unit_decimals(target.unit)
            assert step <= 0.1 * target.published["cv_mae"], target.name
            assert 10 * step > 0.1 * min(
                t.published["cv_mae"] for t in catalog() if t.unit == target.unit
            ), f"{target.unit}: the largest such step"


def test_ukb_column_names_follow_the_research_analysis_platform():
    from mimir.targets.catalog import ukb_column

    assert ukb_column("AtlasVatVolume", 22407, 2) == "p22407_i2"
    assert ukb_column("AtlasVatVolume", 22407, 3) == "p22407_i3"
    assert ukb_column("sex", 31, 3) == "p31_i0"
    assert ukb_column("liverVolume", None, 2) == "liverVolume"


def test_docs_list_every_target_with_its_interval_kind_and_decimals():
    from pathlib import Path

    from mimir.targets.catalog import PROBABILITY_DECIMALS, catalog, unit_decimals

    text = (Path(__file__).parents[2] / "docs" / "intervals.md").read_text()
    for target in catalog():
        decimals = PROBABILITY_DECIMALS if target.is_binary else unit_decimals(target.unit)
        row = f"| {target.name} | {target.module} | {target.unit} | {target.ukb_field or '-'} | {target.interval} | {decimals} |"
        assert row in text, f"docs/intervals.md: {row}"
