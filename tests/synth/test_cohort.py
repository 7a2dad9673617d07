import numpy as np
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
    from mimir.targets.fields import export_columns

    reference = pd.read_csv(tiny_cohort / "reference.csv")
    truth = pd.read_csv(tiny_cohort / "truth.csv")
    assert list(reference.columns) == ["eid", *(column for t in catalog() for column in export_columns(t, 2))]
    assert list(truth.columns) == ["eid", "instance", *(t.name for t in catalog())]
    assert truth.drop(columns=["eid", "instance"]).notna().all().all()
    zips = sorted(p.stem.split("_")[0] for p in tiny_cohort.glob("*.zip"))
    assert zips == sorted(str(eid) for eid in truth["eid"])
    assert not (tiny_cohort / "quirks.csv").exists()



def _fake_results(n: int) -> list:
    """Subjects with known truths and no images: the reference export depends on nothing else."""
    from mimir.synth.cohort import SubjectResult
    from mimir.targets.catalog import catalog

    rng = np.random.default_rng(5)
    results = []
    for index in range(n):
        truth = {t.name: float(rng.integers(0, 2)) if t.is_binary else float(rng.uniform(1, 90)) for t in catalog()}
        results.append(SubjectResult(1_000_000 + index, "", truth, {}, [], 0.0))
    return results


def test_the_reference_export_is_in_showcase_units_and_reads_back_as_the_truth(tmp_path):
    """synth -> targets: the export holds DXA masses in g and both pulse readings, and
    `export_to_targets` turns it back into the truth (catalog units, readings averaged)."""
    import pandas as pd

    from mimir.synth.cohort import _csv_text, _reference_rows
    from mimir.targets.exports import export_to_targets

    results = _fake_results(120)
    path = tmp_path / "reference.csv"
    path.write_text(_csv_text(*_reference_rows(results, CohortConfig(n=len(results), seed=3))))
    export = pd.read_csv(path).set_index("eid")
    truth = pd.DataFrame([{"eid": r.eid, **r.truth} for r in results]).set_index("eid")
    dxa = export["23278-2.0"].dropna()
    assert len(dxa) > 3
    np.testing.assert_allclose(dxa, 1000 * truth.loc[dxa.index, "DxaTotalFatMass"], rtol=1e-5)
    both = export[["102-2.0", "102-2.1"]].dropna()
    assert len(both) > 50 and (both["102-2.0"] != both["102-2.1"]).all()
    assert export["102-2.0"].notna().sum() > len(both)  # some subjects have one reading only
    table = export_to_targets(path).set_index("eid")
    for name in table.columns.drop("instance"):
        present = table[name].dropna()
        assert len(present) > 3, name
        np.testing.assert_allclose(present, truth.loc[present.index, name], rtol=1e-5, err_msg=name)


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


def test_thigh_muscle_factor_has_its_own_stream_and_a_standard_cohort_records_no_sd():
    from dataclasses import asdict

    from mimir.synth.cohort import _config_record, subject_anatomy, thigh_muscle_factor

    assert thigh_muscle_factor(3, 1234567, 0.0) == 1.0
    factors = np.array([thigh_muscle_factor(3, eid, 0.15) for eid in draw_eids(400, seed=3)])
    assert np.log(factors).std() == pytest.approx(0.15, rel=0.15)
    assert thigh_muscle_factor(3, 1234567, 0.15) == thigh_muscle_factor(3, 1234567, 0.15)
    # the subject's other draws are the standard subject's: the factor never touches its stream
    standard, standard_plan, _ = subject_anatomy(3, 1234567)
    varied, varied_plan, _ = subject_anatomy(3, 1234567, thigh_muscle_sd=0.15)
    assert standard.thigh_muscle == 1.0 and varied.thigh_muscle == thigh_muscle_factor(3, 1234567, 0.15) != 1.0
    assert {**asdict(varied), "thigh_muscle": 1.0} == asdict(standard)
    assert varied_plan == standard_plan

    assert "thigh_muscle_sd" not in _config_record(CohortConfig(n=2))
    assert _config_record(CohortConfig(n=2, thigh_muscle_sd=0.15))["thigh_muscle_sd"] == 0.15
    with pytest.raises(CohortConfigError, match="thigh_muscle_sd"):
        CohortConfig(n=2, thigh_muscle_sd=-0.1)


def test_a_twin_with_its_thigh_muscle_scaled_differs_from_its_subject_only_in_the_thighs(tmp_path):
    from mimir.synth.cohort import SubjectJob, generate_subject, subject_anatomy

    eid = draw_eids(1, seed=7)[0]
    results = {
        scale: generate_subject(SubjectJob(eid, 7, 2, tmp_path / str(scale), (), False, False, 0.15,
                                           parameter_scales=(("thigh_muscle", scale),)))
        for scale in (1.0, 1.1)
    }
    subject, twin = results[1.0], results[1.1]
    assert twin.parameters["thigh_muscle"] == pytest.approx(subject.parameters["thigh_muscle"] * 1.1)
    assert {**twin.parameters, "thigh_muscle": 0} == {**subject.parameters, "thigh_muscle": 0}
    # the muscle radius grows by 10 %, so its cross-section by about 21 %
    ratio = twin.truth["AtlasTotalThighMuscleVolume"] / subject.truth["AtlasTotalThighMuscleVolume"]
    assert 1.15 < ratio < 1.25
    for name in ("liverVolume", "AtlasVatVolume", "height"):
        assert twin.truth[name] == subject.truth[name]
    # the abdominal fat's lower edge meets the top of the thighs, which widen a little
    assert twin.truth["AtlasAsatVolume"] == pytest.approx(subject.truth["AtlasAsatVolume"], rel=0.01)
    params, _, _ = subject_anatomy(7, eid, thigh_muscle_sd=0.15, parameter_scales=(("thigh_muscle", 1.1),))
    assert params.thigh_muscle == twin.parameters["thigh_muscle"]


def test_only_numeric_body_parameters_scale():
    from mimir.synth.cohort import scaled_parameters
    from mimir.synth.subject import sample_subject

    params = sample_subject(np.random.default_rng(0), 1234567)
    twin = scaled_parameters(params, [("lean_index", 1.05), ("vat_l", 2.0)])
    assert twin.lean_index == pytest.approx(params.lean_index * 1.05) and twin.vat_l == pytest.approx(params.vat_l * 2)
    assert twin.height_cm == params.height_cm
    for bad in [("sex", 2.0), ("hands_on_belly", 2.0), ("no_such_field", 1.1), ("lean_index", 0.0), ("lean_index", float("nan"))]:
        with pytest.raises(CohortConfigError, match="cannot scale"):
            scaled_parameters(params, [bad])


def test_shifts_move_parameters_of_either_sign_and_only_numeric_ones():
    from mimir.synth.cohort import shifted_parameters
    from mimir.synth.subject import sample_subject

    params = sample_subject(np.random.default_rng(0), 1234567)
    twin = shifted_parameters(params, [("tilt_deg", 5.0), ("android", -abs(params.android) - 1.0)])
    assert twin.tilt_deg == pytest.approx(params.tilt_deg + 5.0)
    assert twin.android == pytest.approx(params.android - abs(params.android) - 1.0) and twin.android < 0
    assert twin.height_cm == params.height_cm
    for bad in [("sex", 1.0), ("hands_on_belly", 1.0), ("no_such_field", 1.0), ("tilt_deg", float("inf"))]:
        with pytest.raises(CohortConfigError, match="cannot shift"):
            shifted_parameters(params, [bad])


def test_a_shifted_twin_differs_from_its_subject_in_that_parameter_only():
    from dataclasses import replace

    from mimir.synth.cohort import subject_anatomy

    eid = draw_eids(1, 7)[0]
    subject, _, anatomy = subject_anatomy(7, eid)
    same, _, same_anatomy = subject_anatomy(7, eid, parameter_shifts=(("leg_spread_mm", 0.0),))
    assert same == subject and np.array_equal(same_anatomy.labels, anatomy.labels)
    twin, _, twin_anatomy = subject_anatomy(7, eid, parameter_scales=(("vat_l", 1.5),),
                                            parameter_shifts=(("leg_spread_mm", 30.0), ("vat_l", 0.25)))
    assert twin.leg_spread_mm == pytest.approx(subject.leg_spread_mm + 30.0)
    assert twin.vat_l == pytest.approx(subject.vat_l * 1.5 + 0.25)  # scaled first, then shifted
    assert replace(twin, leg_spread_mm=subject.leg_spread_mm, vat_l=subject.vat_l) == subject
    assert not np.array_equal(twin_anatomy.labels, anatomy.labels)


def test_mimir_synth_thigh_muscle_sd_reaches_the_subjects_and_is_recorded(tmp_path, capsys):
    import json

    import pandas as pd

    from mimir.cli import main
    from mimir.synth.cohort import thigh_muscle_factor

    out = tmp_path / "cohort"
    assert main(["synth", "--n", "1", "--seed", "5", "--thigh-muscle-sd", "0.2", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "cohort.json").read_text())["config"]["thigh_muscle_sd"] == 0.2
    parameters = pd.read_csv(out / "parameters.csv")
    eid = int(parameters["eid"].iloc[0])
    assert parameters["thigh_muscle"].iloc[0] == pytest.approx(thigh_muscle_factor(5, eid, 0.2))
    assert main(["synth", "--n", "1", "--thigh-muscle-sd", "0.9", "--out", str(tmp_path / "bad")]) == 2
    assert "thigh_muscle_sd" in capsys.readouterr().err
