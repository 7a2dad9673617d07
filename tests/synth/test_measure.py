"""Ground-truth measurements: complete, plausible, consistent with the labels, correlated sensibly."""

from __future__ import annotations

import numpy as np
import pytest

from mimir.synth.anatomy import build_anatomy
from mimir.synth.labels import Region, Tissue
from mimir.synth.measure import measure, perimeter_mm
from mimir.synth.subject import sample_subject
from mimir.targets.catalog import catalog

N_SUBJECTS = 10


@pytest.fixture(scope="module")
def cohort():
    results = []
    for index in range(N_SUBJECTS):
        rng = np.random.default_rng([21, index])
        params = sample_subject(rng, 1_000_000 + index)
        anatomy = build_anatomy(params, 400, rng)
        results.append((params, anatomy, measure(anatomy, params, rng)))
    return results


def test_every_catalog_target_is_measured(cohort) -> None:
    names = {t.name for t in catalog()}
    for _, _, values in cohort:
        assert names <= set(values)
        assert all(np.isfinite(values[name]) for name in names)


PLAUSIBLE = {
    "height": (140, 205),
    "weight": (35, 180),
    "waist": (55, 160),
    "hip": (70, 170),
    "sittingHeight": (70, 110),
    "AtlasVatVolume": (0.1, 15),
    "AtlasAsatVolume": (0.5, 30),
    "AtlasTotalThighMuscleVolume": (4, 18),
    "AtlasMuscleFat": (1, 25),
    "liverVolume": (0.7, 3.5),
    "liverFat": (0.3, 45),
    "kidneyParenchymalVolume": (0.1, 0.6),
    "DxaTotalFatMass": (4, 80),
    "DxaTotalLeanMass": (25, 90),
    "DxaTotalTissueFatPercentage": (8, 65),
    "DxaAndroidBoneMass": (10, 300),
    "DxaGynoidBoneMass": (80, 800),
    "DxaVatVolume": (0.02, 6),
    "AtlasAbdominalFatRatio": (0.1, 0.9),
    "gripStrengthRight": (2, 80),
    "pulseRate": (40, 130),
}


@pytest.mark.parametrize("name", sorted(PLAUSIBLE))
def test_values_are_plausible(cohort, name: str) -> None:
    low, high = PLAUSIBLE[name]
    values = [v[name] for _, _, v in cohort]
    assert low <= min(values) and max(values) <= high, (name, values)


def test_measured_bmi_tracks_the_sampled_bmi(cohort) -> None:
    for params, _, values in cohort:
        bmi = values["weight"] / (values["height"] / 100) ** 2
        assert abs(bmi - params.bmi) / params.bmi < 0.2


def test_atlas_values_are_voxel_counts(cohort) -> None:
    _, anatomy, values = cohort[0]
    vox = anatomy.voxel_volume_l
    depth = anatomy.grid.depth_mm
    marks = anatomy.landmarks_mm
    k0, k1 = np.searchsorted(depth, marks["t9"]), np.searchsorted(depth, marks["femoral_head_top"])
    assert values["AtlasVatVolume"] == pytest.approx((anatomy.labels[k0:k1] == Tissue.VAT).sum() * vox)
    assert values["liverVolume"] == pytest.approx((anatomy.labels == Tissue.LIVER).sum() * vox)
    assert values["kidneyParenchymalVolume"] == pytest.approx((anatomy.labels == Tissue.KIDNEY).sum() * vox)
    left = anatomy.labels == Tissue.THIGH_ANTERIOR_LEFT
    assert values["AtlasAnteriorThighLeanMuscleLeft"] == pytest.approx((1 - anatomy.fat_fraction[left]).sum() * vox, rel=1e-4)
    thigh_parts = [k for k in values if "ThighLeanMuscle" in k]
    assert values["AtlasTotalThighMuscleVolume"] == pytest.approx(sum(values[k] for k in thigh_parts))
    asat = (anatomy.labels[k0:k1] == Tissue.SAT) & (anatomy.region[k0:k1] == Region.TRUNK)
    assert values["AtlasAsatVolume"] == pytest.approx(asat.sum() * vox)


def test_dxa_parts_add_up(cohort) -> None:
    for _, _, v in cohort:
        assert v["DxaArmsFatMass"] == pytest.approx(v["DxaArmFatMassLeft"] + v["DxaArmFatMassRight"])
        assert v["DxaLegsLeanMass"] == pytest.approx(v["DxaLegLeanMassLeft"] + v["DxaLegLeanMassRight"])
        assert v["DxaTotalTissueMass"] == pytest.approx(v["DxaTotalFatMass"] + v["DxaTotalLeanMass"])
        parts = v["DxaArmsTotalMass"] + v["DxaLegsTotalMass"] + v["DxaTrunkTotalMass"]
        assert parts < v["weight"] < parts + 12.0  # the head is the rest
        assert v["DxaAndroidTotalMass"] < v["DxaTrunkTotalMass"]


def test_correlations_go_the_right_way(cohort) -> None:
    bmi = np.array([p.bmi for p, _, _ in cohort])
    asat = np.array([v["AtlasAsatVolume"] for _, _, v in cohort])
    assert np.corrcoef(bmi, asat)[0, 1] > 0.5
    fat = np.array([v["DxaTotalFatMass"] for _, _, v in cohort])
    assert np.corrcoef(bmi, fat)[0, 1] > 0.6


def test_men_carry_more_visceral_fat_for_their_fat_mass() -> None:
    """Sex effect on VAT from the sampled latents (cheap: no rasterisation)."""
    ratios = {0: [], 1: []}
    for index in range(400):
        p = sample_subject(np.random.default_rng([4, index]), index)
        ratios[p.sex].append(p.vat_l / (p.body_fat_fraction * p.weight_kg))
    assert np.mean(ratios[1]) > 1.8 * np.mean(ratios[0])


def test_measurement_is_deterministic(cohort) -> None:
    rng = np.random.default_rng([21, 0])
    params = sample_subject(rng, 1_000_000)
    anatomy = build_anatomy(params, 400, rng)
    assert measure(anatomy, params, rng) == cohort[0][2]


def test_perimeter_of_a_disc() -> None:
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 <= 60**2
    assert perimeter_mm(disc, 2.0) == pytest.approx(2 * np.pi * 60 * 2.0, rel=0.03)
