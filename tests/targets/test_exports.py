import argparse
import gzip
import logging
import math

import numpy as np
import pandas as pd
import pytest

from mimir.cli import UsageError, targets_cmd
from mimir.targets.catalog import catalog, get_target
from mimir.targets.exports import (
    ExportFormatError,
    FieldColumn,
    export_to_targets,
    parse_field_column,
    read_reference,
    read_targets_table,
    write_targets_table,
)
from mimir.targets.fields import catalog_factor, export_columns


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def value_for(target_index: int, row: int) -> float:
    """Distinct, exactly representable values per (target, participant)."""
    return float(row % 2) if catalog()[target_index].is_binary else 0.5 * target_index + row + 0.25


@pytest.fixture
def synthetic_reference(tmp_path):
    """A file shaped like the synthetic cohort's reference.csv: every array of each target's
    field (`export_columns`), values in the field's UK Biobank unit (catalog value / factor)."""
    targets = catalog()
    header = ["eid"] + [column for t in targets for column in export_columns(t, 2)]
    rows = []
    for row in range(3):
        values = []
        for i, target in enumerate(targets):
            text = "" if (i, row) == (0, 1) else f"{value_for(i, row) / catalog_factor(target):.15g}"  # one missing
            values += [text] * len(export_columns(target, 2))
        rows.append([str(1000001 + row), *values])
    return write_lines(tmp_path / "reference.csv", [",".join(header)] + [",".join(r) for r in rows])


def test_synthetic_reference_shape_maps_every_target(synthetic_reference):
    table = export_to_targets(synthetic_reference)
    names = [t.name for t in catalog()]
    assert list(table.columns) == ["eid", "instance", *names]
    assert table["eid"].tolist() == [1000001, 1000002, 1000003]
    assert table["instance"].tolist() == [2, 2, 2]
    assert table["eid"].dtype == np.int64 and table["instance"].dtype == np.int64
    for i, name in enumerate(names):
        expected = [value_for(i, row) for row in range(3)]
        if i == 0:
            expected[1] = math.nan
        np.testing.assert_allclose(table[name].to_numpy(), expected, rtol=1e-12, err_msg=name)


def test_tab_separated_and_gzip_exports(tmp_path, synthetic_reference):
    expected = export_to_targets(synthetic_reference)
    tab_text = synthetic_reference.read_text().replace(",", "\t")
    (tmp_path / "reference.tsv").write_text(tab_text)
    pd.testing.assert_frame_equal(export_to_targets(tmp_path / "reference.tsv"), expected)
    with gzip.open(tmp_path / "reference.csv.gz", "wt") as handle:
        handle.write(synthetic_reference.read_text())
    pd.testing.assert_frame_equal(export_to_targets(tmp_path / "reference.csv.gz"), expected)


def test_rap_export_with_and_without_entity_prefix(tmp_path):
    path = write_lines(
        tmp_path / "rap.tsv",
        [
            "participant.eid\tparticipant.p22407_i2\tparticipant.p31\tp12144_i2_a0\tp12144_i3\tp21002_i2_a1\tage",
            "1234567\t1.25\tMale\t170.5\t171\t80\t61",
            "2345678\tNA\tFemale\t\t\t\t",
        ],
    )
    table = export_to_targets(path).set_index("eid")
    assert table.loc[1234567, "AtlasVatVolume"] == 1.25
    assert table.loc[1234567, "sex"] == 1.0 and table.loc[2345678, "sex"] == 0.0
    assert table.loc[1234567, "height"] == 170.5  # instance 2, not the repeat visit
    assert math.isnan(table.loc[1234567, "weight"])  # only array 1 present: array 0 is used
    assert table.loc[1234567, "age"] == 61
    assert math.isnan(table.loc[2345678, "AtlasVatVolume"])


def test_rap_comma_export_without_prefix_and_padded_header(tmp_path):
    path = write_lines(tmp_path / "rap.csv", ['"eid", p22407_i2 ,p31', "1, 2.5,0"])
    table = export_to_targets(path)
    assert table.loc[0, "AtlasVatVolume"] == 2.5 and table.loc[0, "sex"] == 0.0


def test_r_style_ukbconv_export(tmp_path):
    path = write_lines(tmp_path / "ukb.tab", ["f.eid\tf.22407.2.0\tf.31.0.0", "7\t1.5\t1"])
    table = export_to_targets(path)
    assert table.loc[0, "eid"] == 7 and table.loc[0, "AtlasVatVolume"] == 1.5 and table.loc[0, "sex"] == 1.0


def test_repeat_instance_is_selected_and_sex_stays_baseline(tmp_path):
    path = write_lines(tmp_path / "ukb.csv", ["eid,22407-2.0,22407-3.0,31-0.0,31-2.0", "1,1.0,2.0,1,0"])
    table = export_to_targets(path, instance=3)
    assert table.loc[0, "instance"] == 3
    assert table.loc[0, "AtlasVatVolume"] == 2.0
    assert table.loc[0, "sex"] == 1.0


def test_unknown_columns_are_ignored_with_a_summary(tmp_path, caplog):
    path = write_lines(
        tmp_path / "ukb.csv",
        ["eid,53-2.0,note,22407-2.0,22407-3.0", '1,2015-01-01,"free, text",1.0,', "2,,x,,"],
    )
    with caplog.at_level(logging.INFO, logger="mimir.targets.exports"):
        table = export_to_targets(path)
    assert table["eid"].tolist() == [1]  # eid 2 has no target value
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "ignored 2 columns that hold no catalog target: 53-2.0, note" in messages
    assert "22407-3.0" in messages
    assert "71 of 72 targets are not in the export" in messages
    assert "dropped 1 eids" in messages


def test_restricting_targets(tmp_path, synthetic_reference):
    chosen = [get_target("height"), get_target("liverVolume")]
    table = export_to_targets(synthetic_reference, targets=chosen)
    assert list(table.columns) == ["eid", "instance", "height", "liverVolume"]


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("22407-2.0", FieldColumn(22407, 2, 0)),
        ("31-0.0", FieldColumn(31, 0, 0)),
        ("102-2.1", FieldColumn(102, 2, 1)),
        ("f.22407.3.0", FieldColumn(22407, 3, 0)),
        ("participant.p22407_i2", FieldColumn(22407, 2, 0)),
        ("p22407_i2_a1", FieldColumn(22407, 2, 1)),
        ("p31", FieldColumn(31, 0, 0)),
        ("eid", None),
        ("liverVolume", None),
        ("participant.eid", None),
        ("f.eid", None),
        ("pulse", None),
    ],
)
def test_parse_field_column(column, expected):
    assert parse_field_column(column) == expected


@pytest.mark.parametrize(
    "column",
    ["22407-2", "22407-x.0", "22407-2.a", "22407", "f.22407.2", "p22407_i", "p22407_ix_a0", "participant.p22407_i2_a"],
)
def test_malformed_field_suffix_is_rejected(tmp_path, column):
    path = write_lines(tmp_path / "bad.csv", [f"eid,{column}", "1,2"])
    with pytest.raises(ExportFormatError, match="instance/array suffix is malformed"):
        export_to_targets(path)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["id,22407-2.0", "1,2"], "no participant id column"),
        (["eid,participant.eid,p31", "1,1,0"], "several participant id columns"),
        (["eid,22407-2.0,22407-2.0", "1,2,3"], "duplicated columns: 22407-2.0"),
        (["eid,participant.p22407_i2,p22407_i2", "1,2,3"], "both hold target AtlasVatVolume"),
        (["eid,22407-2.0", "1,2", "2,1.5 L"], "non-numeric value '1.5 L' for eid 2"),
        (["eid,liverVolume", "1,big"], r"'liverVolume' \(liverVolume\) holds a non-numeric value"),
        (["eid,22407-2.0", "A12,2"], "not a participant id"),
        (["eid,22407-2.0", "1,2", "1,3"], "duplicated eid rows, e.g. 1"),
        (["eid,22407-2.0", "1,2", "2,\"3"], "unreadable rows"),
        ([""], "empty file"),
    ],
)
def test_malformed_exports_give_clear_errors(tmp_path, lines, message):
    path = write_lines(tmp_path / "bad.csv", lines)
    with pytest.raises(ExportFormatError, match=message):
        export_to_targets(path)


def test_missing_tokens_are_nan_and_ignored_columns_may_hold_text(tmp_path):
    path = write_lines(tmp_path / "ukb.csv", ["eid,22407-2.0,12144-2.0,20001-0.0", "1,NA,170,cancer", "2,nan,,"])
    table = export_to_targets(path)
    assert table["eid"].tolist() == [1]
    assert math.isnan(table.loc[0, "AtlasVatVolume"]) and table.loc[0, "height"] == 170


def test_write_is_atomic_and_round_trips(tmp_path, synthetic_reference):
    table = export_to_targets(synthetic_reference)
    out = tmp_path / "out" / "targets.csv"
    write_targets_table(table, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["targets.csv"]
    pd.testing.assert_frame_equal(read_targets_table(out), table)


def test_read_reference_accepts_targets_tables_and_exports(tmp_path, synthetic_reference):
    from_export = read_reference(synthetic_reference)
    targets_path = tmp_path / "targets.csv"
    write_targets_table(from_export, targets_path)
    pd.testing.assert_frame_equal(read_reference(targets_path), from_export)


def test_read_targets_table_rejects_text_values(tmp_path):
    path = write_lines(tmp_path / "targets.csv", ["eid,instance,height", "1,2,tall"])
    with pytest.raises(ExportFormatError, match="'height' holds non-numeric"):
        read_targets_table(path)


def test_read_targets_table_names_the_file_of_unreadable_rows(tmp_path):
    path = write_lines(tmp_path / "targets.csv", ["eid,instance,height", "1,2,170", '2,2,"160'])
    with pytest.raises(ExportFormatError, match="targets.csv: unreadable rows"):
        read_targets_table(path)


def run_targets_command(argv):
    parser = argparse.ArgumentParser()
    targets_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["targets", *argv])
    return args.handler(args)


def test_targets_command_writes_table(tmp_path, synthetic_reference, capsys):
    out = tmp_path / "targets.csv"
    assert run_targets_command([str(synthetic_reference), "--out", str(out), "--instance", "2"]) == 0
    table = pd.read_csv(out)
    assert len(table) == 3 and table.columns[:2].tolist() == ["eid", "instance"]
    assert "wrote 3 participants x 72 targets" in capsys.readouterr().out


def test_targets_command_errors_name_the_export(tmp_path):
    bad = write_lines(tmp_path / "bad.csv", ["id,22407-2.0", "1,2"])
    with pytest.raises(ExportFormatError, match="bad.csv: no participant id column"):
        run_targets_command([str(bad), "--out", str(tmp_path / "t.csv")])
    with pytest.raises(UsageError, match="no such export file"):
        run_targets_command([str(tmp_path / "missing.csv"), "--out", str(tmp_path / "t.csv")])
    assert not (tmp_path / "t.csv").exists()


def _zip_bytes() -> bytes:
    """A field-20201-like zip, as given by mistake instead of an export."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.csv", "filename\n")
        archive.writestr("slice.dcm", b"\0" * 128 + b"DICM" + bytes(range(256)) * 16)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("exam.csv", _zip_bytes(), "not a text table: 'utf-8' codec can't decode"),
        ("image.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not a text table: 'utf-8' codec can't decode"),
        ("zeros.csv", b"\0" * 4096, "not a text table: its first line holds NUL bytes"),
        ("plain.csv.gz", b"eid,22407-2.0\n1,2\n", "not a text table: Not a gzipped file"),
        ("cut.csv.gz", gzip.compress(b"eid,22407-2.0\n" + b"".join(b"%d,2\n" % eid for eid in range(50_000)))[:2000], "unreadable rows: Compressed file ended"),
    ],
)
def test_a_file_that_is_not_a_text_table_is_refused_naming_it(tmp_path, capsys, name, content, message):
    from mimir.cli import main

    path = tmp_path / name
    path.write_bytes(content)
    # a targets table is read from its header on: one that is no text is refused the same way
    readers = (export_to_targets, read_reference, *([read_targets_table] if "not a text table" in message else []))
    for reader in readers:
        with pytest.raises(ExportFormatError, match=f"{name}: {message}"):
            reader(path)
    assert main(["targets", str(path), "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "t.csv").exists()


def test_an_export_without_target_columns_is_refused_saying_what_was_found_and_sought(tmp_path, capsys):
    from mimir.cli import main

    path = write_lines(tmp_path / "ukb.csv", ["eid,53-2.0,note,22407-3.0", "1,2015-01-01,x,2.5"])
    with pytest.raises(ExportFormatError) as caught:
        export_to_targets(path, targets=[get_target("AtlasVatVolume"), get_target("liverVolume")])
    message = str(caught.value)
    assert message.startswith(f"{path}: no target columns: found 3 besides 'eid': 53-2.0, note, 22407-3.0; looked for ")
    assert "22407-2.0, p22407_i2 or f.22407.2.0" in message and "columns named liverVolume" in message
    assert "catalog fields of other instances or array indices (22407-3.0)" in message
    assert main(["targets", str(path), "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no target columns" in err[0]
    assert not (tmp_path / "t.csv").exists()


def test_implausible_values_become_missing_with_one_warning_per_target(tmp_path, caplog):
    lines = [
        "eid,21002-2.0,12144-2.0,31-0.0,22407-2.0,liverVolume",
        "1,inf,-5000,7,1e400,1.5",
        "2,-70,170,1,2.0,0",
        "3,80,175.5,0,-inf,2",
    ]
    path = write_lines(tmp_path / "ukb.csv", lines)
    with caplog.at_level(logging.WARNING, logger="mimir.targets.exports"):
        table = export_to_targets(path).set_index("eid")
    assert table["weight"].tolist()[2] == 80 and table["weight"].iloc[:2].isna().all()
    assert math.isnan(table.loc[1, "height"]) and table.loc[2, "height"] == 170 and table.loc[3, "height"] == 175.5
    assert math.isnan(table.loc[1, "sex"]) and table.loc[2, "sex"] == 1 and table.loc[3, "sex"] == 0
    assert table["AtlasVatVolume"].isna().tolist() == [True, False, True]
    assert table["liverVolume"].tolist() == [1.5, 0.0, 2.0]  # zero is a possible volume
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"{path}: height: 1 value set to missing (1 negative): a value must be finite and not negative (cm)",
        f"{path}: sex: 1 value set to missing (1 not 0 or 1): a value must be 0 or 1 (male=1)",
        f"{path}: weight: 2 values set to missing (1 not finite, 1 negative): a value must be finite and not negative (kg)",
        f"{path}: AtlasVatVolume: 2 values set to missing (2 not finite): a value must be finite and not negative (L)",
    ]
    caplog.clear()
    targets_path = tmp_path / "targets.csv"
    targets_path.write_text("eid,instance,weight,sex\n1,2,-70,7\n2,2,80,1\n")
    with caplog.at_level(logging.WARNING, logger="mimir.targets.exports"):
        read = read_targets_table(targets_path)
    assert read["weight"].isna().tolist() == [True, False] and read["sex"].isna().tolist() == [True, False]
    assert len(caplog.records) == 2


@pytest.mark.parametrize(
    ("lines", "instance", "message"),
    [
        (["eid,p31,liverVolume", "1,1,1.5"], 5, r"instance 5 is not an imaging visit \(2 first, 3 repeat\) and no target "
         r"column is of instance 5; the columns without one \(p31, liverVolume\) would be copied to it"),
        (["eid,22407-2.0,31-0.0", "1,2.5,1"], 0, r"no target column is of instance 0 \(the catalog fields present are "
         r"of instance 2\); the columns without one \(31-0.0\)"),
    ],
)
def test_an_instance_that_is_no_imaging_visit_needs_columns_of_its_own(tmp_path, capsys, lines, instance, message):
    from mimir.cli import main

    path = write_lines(tmp_path / "ukb.csv", lines)
    with pytest.raises(ExportFormatError, match=message):
        export_to_targets(path, instance=instance)
    assert main(["targets", str(path), "--out", str(tmp_path / "t.csv"), "--instance", str(instance)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_imaging_visits_and_instances_with_columns_of_their_own_are_read(tmp_path):
    instanceless = write_lines(tmp_path / "rap.csv", ["eid,p31,liverVolume", "1,1,1.5"])
    for instance in (2, 3):
        table = export_to_targets(instanceless, instance=instance)
        assert (table.loc[0, "instance"], table.loc[0, "sex"], table.loc[0, "liverVolume"]) == (instance, 1, 1.5)
    baseline = write_lines(tmp_path / "ukb.csv", ["eid,21002-0.0,31-0.0", "1,80,1"])
    table = export_to_targets(baseline, instance=0)
    assert (table.loc[0, "instance"], table.loc[0, "weight"], table.loc[0, "sex"]) == (0, 80, 1)


def test_ids_too_large_for_an_integer_are_refused_not_a_crash(tmp_path):
    """Found by tests/fuzz/fuzz_export.py: a 40-digit eid raised OverflowError."""
    export = tmp_path / "export.csv"
    write_lines(export, ["eid,21002-2.0", f"{'9' * 40},70"])
    with pytest.raises(ExportFormatError, match="not a participant id"):
        export_to_targets(export)
    table = tmp_path / "targets.csv"
    write_lines(table, ["eid,instance,weight", f"{2**63 + 5},2,70"])
    with pytest.raises(ExportFormatError, match="too large for an id"):
        read_targets_table(table)
