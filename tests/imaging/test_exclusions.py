"""Exclusion lists (UK Biobank's eids of exams with imaging artefacts): the formats read, and
one line naming the file and line for anything else."""

import pytest

from mimir.imaging.exclusions import ExclusionListError, read_exclusion_list


@pytest.mark.parametrize(
    "text",
    [
        "1000001\n1000002\n",
        "eid\n1000001\n1000002\n",
        "# return 3072: artefacts\n\n1000001\r\n 1000002 \n",
        "eid,reason\n1000001,fat-water swap\n1000002,motion\n",
        "Participant.eid\treason\n1000001\tswap\n1000002\tmotion\n",
        "\ufeffeid\n1000001\n1000002\n",
    ],
    ids=["lines", "header", "comments-crlf-spaces", "csv", "tsv-rap", "bom"],
)
def test_every_format_gives_the_eids(tmp_path, text):
    path = tmp_path / "exclude.txt"
    path.write_text(text, encoding="utf-8")
    exclusions = read_exclusion_list(path)
    assert exclusions.eids == {1000001, 1000002} and not exclusions.visits
    assert exclusions.excludes_exam("1000001_20201_2_0") and exclusions.excludes_exam("1000002_20201_3_0")
    assert not exclusions.excludes_exam("1000003_20201_2_0")


def test_an_instance_column_excludes_that_visit_only(tmp_path):
    path = tmp_path / "exclude.csv"
    path.write_text("eid,instance\n1000001,3\n1000002,\n")
    exclusions = read_exclusion_list(path)
    assert exclusions.excludes_exam("1000001_20201_3_0") and not exclusions.excludes_exam("1000001_20201_2_0")
    assert exclusions.excludes_exam("1000002_20201_2_0") and exclusions.excludes_exam("1000002_20201_3_0")
    assert len(exclusions) == 2


def test_an_exam_without_a_uk_biobank_name_is_never_excluded(tmp_path):
    path = tmp_path / "exclude.txt"
    path.write_text("1000001\n")
    exclusions = read_exclusion_list(path)
    assert not exclusions.excludes_exam("patient_007") and not exclusions.excludes_exam("1000001_20204_2_0")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"1000001\nabc\n", "line 2: 'abc' is not an eid"),
        (b"eid,instance\n1000001,two\n", "line 2: 'two' is not an instance"),
        (b"id,reason\n1000001,x\n", "a table needs a column named eid; its header is id, reason"),
        (b"eid,reason\n,x\n", "line 2: '' is not an eid"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff\xfe", "not a text file of eids"),
    ],
    ids=["word", "instance", "no-eid-column", "empty-eid", "zip"],
)
def test_what_is_not_a_list_of_eids_is_one_line_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "exclude.txt"
    path.write_bytes(content)
    with pytest.raises(ExclusionListError) as error:
        read_exclusion_list(path)
    assert str(error.value).startswith(f"exclusion list {path}") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_list_is_named(tmp_path):
    with pytest.raises(ExclusionListError, match="no such file"):
        read_exclusion_list(tmp_path / "nope.txt")


def test_an_empty_list_excludes_nothing_with_a_warning(tmp_path, caplog):
    path = tmp_path / "exclude.txt"
    path.write_text("eid\n")
    assert len(read_exclusion_list(path)) == 0
    assert "names no eids" in caplog.text
