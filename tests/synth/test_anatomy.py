"""The synthetic anatomy: every tissue present, body inside the grid, bed at the back, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mimir import protocol
from mimir.synth.anatomy import BED_ROW, build_anatomy
from mimir.synth.labels import MUSCLES, Region, Tissue
from mimir.synth.subject import SubjectParams, sample_subject


@pytest.fixture(scope="module")
def subject() -> tuple[SubjectParams, object]:
    rng = np.random.default_rng([5, 1])
    params = sample_subject(rng, 1234567)
    return params, build_anatomy(params, 400, rng)


def test_volume_shape_and_types(subject) -> None:
    _, anatomy = subject
    assert anatomy.labels.shape == (400, protocol.GRID_ROWS, protocol.COLUMNS)
    assert anatomy.labels.dtype == np.uint8
    assert anatomy.fat_fraction.dtype == np.float32
    assert anatomy.fat_fraction.shape == anatomy.labels.shape
    assert 0.0 <= anatomy.fat_fraction.min() and anatomy.fat_fraction.max() <= 1.0


def test_every_tissue_is_present(subject) -> None:
    _, anatomy = subject
    present = set(np.unique(anatomy.labels).tolist())
    assert {int(t) for t in Tissue} <= present
    assert {int(r) for r in Region} <= set(np.unique(anatomy.region).tolist())


def test_bed_fills_the_posterior_edge_and_the_body_lies_on_it(subject) -> None:
    _, anatomy = subject
    labels = anatomy.labels
    assert (labels[:, BED_ROW:, :] == Tissue.BED).all()
    assert not (labels[:, :BED_ROW, :] == Tissue.BED).any()
    body = (labels != Tissue.BACKGROUND) & (labels != Tissue.BED)
    # The back touches the bed along the trunk; nothing touches the anterior edge.
    assert body[:, BED_ROW - 1, :].any(axis=1).mean() > 0.5
    assert not body[:, 0, :].any()


def test_body_is_centred_and_upright(subject) -> None:
    _, anatomy = subject
    body = (anatomy.labels != Tissue.BACKGROUND) & (anatomy.labels != Tissue.BED)
    cols = np.flatnonzero(body.any(axis=(0, 1)))
    centre = (cols[0] + cols[-1]) / 2
    assert abs(centre - (protocol.COLUMNS - 1) / 2) < 30
    # Lungs above the liver above the thighs (slice 0 is the top).
    depth_of = {t: np.flatnonzero((anatomy.labels == t).any(axis=(1, 2))).mean() for t in (Tissue.LUNG, Tissue.LIVER, Tissue.THIGH_ANTERIOR_LEFT)}
    assert depth_of[Tissue.LUNG] < depth_of[Tissue.LIVER] < depth_of[Tissue.THIGH_ANTERIOR_LEFT]


def test_left_and_right_follow_the_patient(subject) -> None:
    _, anatomy = subject
    columns = np.arange(protocol.COLUMNS)
    left = (anatomy.labels == Tissue.THIGH_ANTERIOR_LEFT).any(axis=(0, 1))
    right = (anatomy.labels == Tissue.THIGH_ANTERIOR_RIGHT).any(axis=(0, 1))
    liver = (anatomy.labels == Tissue.LIVER).any(axis=(0, 1))
    spleen = (anatomy.labels == Tissue.SPLEEN).any(axis=(0, 1))
    # Columns run from patient right to patient left.
    assert columns[right].mean() < columns[left].mean()
    assert columns[liver].mean() < columns[spleen].mean()


def test_whole_body_spans_vertex_to_sole(subject) -> None:
    params, anatomy = subject
    whole = anatomy.whole_body
    body = (whole.labels != Tissue.BACKGROUND) & (whole.labels != Tissue.BED)
    slices = np.flatnonzero(body.any(axis=(1, 2)))
    top, bottom = whole.grid.depth_mm[slices[0]], whole.grid.depth_mm[slices[-1]]
    assert top < 20.0
    assert bottom > params.height_cm * 10.0 - 20.0
    assert (whole.region[body] != Region.OUTSIDE).all()


def test_same_seed_same_anatomy() -> None:
    first = np.random.default_rng([9, 9])
    second = np.random.default_rng([9, 9])
    a = build_anatomy(sample_subject(first, 1), 60, first)
    b = build_anatomy(sample_subject(second, 1), 60, second)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.fat_fraction, b.fat_fraction)
    c_rng = np.random.default_rng([9, 10])
    c = build_anatomy(sample_subject(c_rng, 1), 60, c_rng)
    assert not np.array_equal(a.labels, c.labels)


def test_too_few_slices_is_an_error() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="slices"):
        build_anatomy(sample_subject(rng, 1), 1, rng)


def _body_measures(params: SubjectParams, seed: int) -> tuple[object, dict[str, float]]:
    from mimir.synth.measure import measure

    rng = np.random.default_rng([seed, 0])
    anatomy = build_anatomy(params, 400, rng)
    return anatomy, measure(anatomy, params, np.random.default_rng(0))


def test_hands_on_belly_move_the_arms_not_the_trunk() -> None:
    params = replace(sample_subject(np.random.default_rng([0, 18]), 1), hands_on_belly=False)  # slim: the pose fits
    beside, beside_values = _body_measures(params, 3)
    resting, resting_values = _body_measures(replace(params, hands_on_belly=True), 3)
    arms = (Region.ARM_LEFT, Region.ARM_RIGHT)
    rows = np.arange(protocol.GRID_ROWS)[None, :, None]
    front = {name: np.where(np.isin(a.region, arms), rows, 999).min() for name, a in (("beside", beside), ("resting", resting))}
    assert front["resting"] < front["beside"] - 10  # forearms lie in front of the body
    trunk = beside.region == Region.TRUNK
    np.testing.assert_array_equal(beside.labels[trunk], resting.labels[trunk])
    for name in ("AtlasVatVolume", "AtlasAsatVolume", "liverVolume", "AtlasTotalThighMuscleVolume"):
        assert resting_values[name] == beside_values[name], name
    assert resting_values["weight"] == pytest.approx(beside_values["weight"], rel=0.01)


def test_breathing_moves_the_liver_not_its_size() -> None:
    params = replace(sample_subject(np.random.default_rng([5, 3]), 1), breath_mm=0.0)
    depth_of = {}
    volume = {}
    for breath in (0.0, 24.0):
        anatomy, values = _body_measures(replace(params, breath_mm=breath), 4)
        liver = (anatomy.labels == Tissue.LIVER).sum(axis=(1, 2))
        depth_of[breath] = float((anatomy.grid.depth_mm * liver).sum() / liver.sum())
        volume[breath] = values["liverVolume"]
    assert depth_of[24.0] - depth_of[0.0] == pytest.approx(24.0, abs=6.0)
    assert volume[24.0] == pytest.approx(volume[0.0], rel=0.05)


def test_fat_spread_changes_where_subcutaneous_fat_lies_not_how_much() -> None:
    params = replace(sample_subject(np.random.default_rng([5, 4]), 1), sat_anterior=1.0, sat_posterior=1.0, sat_lateral=1.0)
    even, even_values = _body_measures(params, 5)
    front, front_values = _body_measures(replace(params, sat_anterior=1.6, sat_posterior=0.6), 5)
    assert front_values["AtlasTotalTrunkFat"] == pytest.approx(even_values["AtlasTotalTrunkFat"], rel=0.06)
    sat = {name: (a.labels == Tissue.SAT) & (a.region == Region.TRUNK) for name, a in (("even", even), ("front", front))}
    rows = np.arange(protocol.GRID_ROWS)[None, :, None]
    centre = {name: float((rows * mask).sum() / mask.sum()) for name, mask in sat.items()}
    assert centre["front"] < centre["even"] - 2  # the fat moved anteriorly (lower rows)


def test_the_knee_is_a_band_of_bone_that_marks_the_leg_length(subject) -> None:
    """At the joint line the femoral condyles fill most of the leg: the landmark for height."""
    _, anatomy = subject
    whole = anatomy.whole_body
    depth = whole.grid.depth_mm
    leg = np.isin(whole.region, (Region.LEG_RIGHT, Region.LEG_LEFT))
    bone = leg & (whole.labels == Tissue.BONE)
    muscle = leg & np.isin(whole.labels, MUSCLES)

    def at(landmark_mm: float) -> tuple[float, float]:
        index = int(np.argmin(np.abs(depth - landmark_mm)))
        return float(bone[index].sum() / leg[index].sum()), float(muscle[index].sum() / leg[index].sum())

    knee = anatomy.landmarks_mm["knee"]
    thigh = 0.5 * (anatomy.landmarks_mm["crotch"] + knee)
    knee_bone, knee_muscle = at(knee)
    thigh_bone, thigh_muscle = at(thigh)
    assert knee_bone > 0.2 and knee_bone > 6 * thigh_bone
    assert knee_muscle < 0.65 * thigh_muscle


def test_thigh_muscle_factor_scales_the_thighs_and_nothing_else(subject) -> None:
    from mimir.synth.labels import THIGH_MUSCLES

    params, standard = subject
    bigger = build_anatomy(replace(params, thigh_muscle=1.2), 400, np.random.default_rng([5, 1, 9]))
    again = build_anatomy(params, 400, np.random.default_rng([5, 1, 9]))

    def thigh_voxels(anatomy) -> int:
        return int(np.isin(anatomy.labels, THIGH_MUSCLES).sum())

    def arm_muscle_voxels(anatomy) -> int:
        arms = np.isin(anatomy.region, (Region.ARM_LEFT, Region.ARM_RIGHT))
        return int((arms & (anatomy.labels == Tissue.MUSCLE)).sum())

    assert thigh_voxels(again) == thigh_voxels(standard)
    # radius x 1.2: cross-sections x 1.44, a little more where the trunk no longer covers the thigh top
    assert 1.35 < thigh_voxels(bigger) / thigh_voxels(again) < 1.6
    # the hands rest beside the thighs and move out with them: the arms change only at the edges
    assert arm_muscle_voxels(bigger) == pytest.approx(arm_muscle_voxels(again), rel=0.03)
    for organ in (Tissue.LIVER, Tissue.KIDNEY, Tissue.SPLEEN):
        assert int((bigger.labels == organ).sum()) == int((again.labels == organ).sum())
