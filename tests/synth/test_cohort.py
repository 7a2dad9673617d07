import pytest

from mimir.synth.cohort import CohortConfig, CohortConfigError, assign_quirks, draw_eids
from mimir.synth.quirks import UnknownQuirkError


def test_eids_are_distinct_seven_digit_and_reproducible():
    eids = draw_eids(50, seed=3)
    assert len(set(eids)) == 50
    assert all(1_000_000 <= eid < 10_000_000 for eid in eids)
    assert draw_eids(50, seed=3) == eids
    assert draw_eids(50, seed=4) != eids


def test_each_quirk_goes_to_one_subject_and_wraps_when_subjects_are_few():
    assert assign_quirks([1, 2, 3], ["a", "b"]) == {1: ("a",), 2: ("b",)}
    assert assign_quirks([1, 2], ["a", "b", "c"]) == {1: ("a", "c"), 2: ("b",)}


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"n": 0}, CohortConfigError, "at least one subject"),
        ({"instance": 1}, CohortConfigError, "instances 2 and 3"),
        ({"quirks": ("bogus",)}, UnknownQuirkError, "bogus"),
    ],
)
def test_invalid_configs_are_refused(changes, error, message):
    with pytest.raises(error, match=message):
        CohortConfig(**{"n": 2, **changes})


def test_tiny_cohort_tables(tiny_cohort):
    import pandas as pd

    from mimir.targets.catalog import catalog

    reference = pd.read_csv(tiny_cohort / "reference.csv")
    truth = pd.read_csv(tiny_cohort / "truth.csv")
    assert list(reference.columns) == ["eid", *(t.export_column(2) for t in catalog())]
    assert list(truth.columns) == ["eid", "instance", *(t.name for t in catalog())]
    assert truth.drop(columns=["eid", "instance"]).notna().all().all()
    zips = sorted(p.stem.split("_")[0] for p in tiny_cohort.glob("*.zip"))
    assert zips == sorted(str(eid) for eid in truth["eid"])
    assert not (tiny_cohort / "quirks.csv").exists()


def test_subject_anatomy_is_the_anatomy_of_the_generated_subject(tiny_cohort):
    import csv

    from mimir.synth.cohort import subject_anatomy
    from mimir.synth.labels import Tissue

    with open(tiny_cohort / "truth.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    _, plan, anatomy = subject_anatomy(11, int(first["eid"]))
    liver = float((anatomy.labels == Tissue.LIVER).sum()) * anatomy.voxel_volume_l
    assert liver == pytest.approx(float(first["liverVolume"]), rel=1e-5)  # truth.csv keeps 6 digits
    assert anatomy.labels.shape[0] == plan.grid_slices
