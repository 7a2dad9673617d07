"""Body parameters of one synthetic UK Biobank participant.

Everything random about a participant's body and exam pose is drawn here, once, so that the
anatomy is a deterministic function of these numbers (plus texture noise). The factors are
correlated the way populations are (BMI raises every fat depot, men carry more visceral fat,
age lowers muscle and raises muscle and marrow fat) and include nuisance factors (position,
rotation, sideways bend, arm pose, breathing, coverage, tissue brightness) that change the
images without changing the measurements, and shape factors (trunk outline, where the
subcutaneous and visceral fat lie) independent of how much tissue there is, so that no fixed
linear read-out of the pixels recovers the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGE_RANGE = (44.5, 82.0)
BMI_RANGE = (14.0, 62.0)


@dataclass(frozen=True)
class SubjectParams:
    """Demographics, body composition latents, organ and shape latents, and exam pose."""

    eid: int
    sex: int  # 1 male, 0 female
    age: float
    height_cm: float
    bmi: float
    #: Intended fat mass / body mass; the anatomy realises it approximately.
    body_fat_fraction: float
    #: Lean (fat-free) mass index in kg/m2 implied by BMI and body fat.
    lean_index: float
    #: Extra limb muscle beyond the lean index (athletic build), relative.
    limb_muscle: float
    #: Intended visceral fat volume (L).
    vat_l: float
    #: Apple (+) versus pear (-) fat pattern, standard normal.
    android: float
    #: Gluteofemoral (hips and thighs) fat preference, standard normal.
    gynoid: float
    #: Volume of one breast (L).
    breast_l: float
    liver_volume_l: float
    #: Liver proton density fat fraction (0..1).
    liver_fat: float
    #: Both kidneys' parenchyma (L).
    kidney_volume_l: float
    spleen_volume_l: float
    #: Mean fat fraction of thigh muscle (0..1).
    muscle_fat: float
    marrow_fat: float
    #: Fat fraction of adipose tissue (varies with adipocyte size and water content).
    adipose_fat: float
    #: Visceral minus subcutaneous adipose fat fraction (visceral fat holds more water).
    vat_fat_offset: float
    #: The arms' share of subcutaneous fat relative to the average (about 1).
    arm_fat_share: float
    #: Fat fraction of bowel contents (diet): fat signal inside the abdomen that is not VAT.
    bowel_fat: float
    #: Bone mineral per mL of bone label (g/mL).
    bone_mineral: float
    #: Sitting height / height.
    sitting_ratio: float
    shoulder_scale: float
    hip_scale: float
    #: Anterior-posterior versus lateral trunk proportions.
    trunk_depth: float
    #: How box-like (versus elliptical) the trunk cross-section is (0..0.7).
    trunk_squareness: float
    liver_elongation: float
    liver_left_lobe: float
    liver_shift_mm: float
    kidney_drop_mm: float
    spleen_elongation: float
    #: Where the anterior/posterior thigh compartments split (fraction of thigh radius).
    thigh_split: float
    leg_spread_mm: float
    # Exam pose and coverage: change the image, not the measurements.
    x_offset_mm: float
    tilt_deg: float
    roll_deg: float
    #: FOV top below its nominal place (chin) in mm; large negative values cut the knees.
    fov_offset_mm: float
    arm_gap_mm: float
    #: Left arm gap minus right arm gap (mm).
    arm_asymmetry_mm: float
    arm_forward_mm: float
    knee_lift_mm: float
    head_lift_mm: float
    #: Forearms resting on the belly instead of lying beside the body.
    hands_on_belly: bool
    #: Sideways bend of the trunk (mm at the waist; positive towards the patient's left).
    lean_mm: float
    #: Breathing position: diaphragm, liver, spleen and kidneys lower by this much (mm).
    breath_mm: float
    #: Relative change of the trunk's lean width at the chest, waist and hips (~N(0, 0.07)).
    trunk_wave_chest: float
    trunk_wave_waist: float
    trunk_wave_hips: float
    #: Shift of the subcutaneous trunk fat towards the chest (+) or the hips (-), ~N(0, 1).
    trunk_fat_shift: float
    #: Subcutaneous trunk fat thickness factors anteriorly, posteriorly and laterally (about 1).
    sat_anterior: float
    sat_posterior: float
    sat_lateral: float
    #: Visceral fat near the cavity wall (high) versus between the bowel loops (low).
    vat_periphery: float
    #: Shift of the visceral fat towards the pelvis (+) or the upper abdomen (-) (fraction of u).
    vat_shift: float
    #: Bowel gas amount (log scale, ~N(0, 1)).
    bowel_gas: float
    #: Per-tissue signal scale (T1 and T2* weighting differ between people; about 1).
    signal_muscle: float
    signal_liver: float
    #: Bowel and other viscera.
    signal_viscera: float
    #: Kidneys and spleen.
    signal_kidney: float
    signal_adipose: float
    signal_marrow: float
    #: Thigh muscle radius factor independent of every other latent: 1 in the standard cohort,
    #: drawn by `CohortConfig.thigh_muscle_sd` for a cohort whose thigh muscle only the thighs show.
    thigh_muscle: float = 1.0

    @property
    def weight_kg(self) -> float:
        """Intended body mass; the measured weight comes from the anatomy."""
        return self.bmi * (self.height_cm / 100.0) ** 2


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    for _ in range(1000):
        value = rng.normal(mean, sd)
        if low <= value <= high:
            return float(value)
    return float(np.clip(mean, low, high))


def _lognormal(rng: np.random.Generator, sd: float) -> float:
    return float(np.exp(rng.normal(0.0, sd)))


def sample_subject(rng: np.random.Generator, eid: int) -> SubjectParams:
    """Draw one participant; the same generator state gives the same participant."""
    male = int(rng.random() < 0.47)
    age = _truncated_normal(rng, 64.0, 7.8, *AGE_RANGE)
    height = (
        rng.normal(176.5, 6.8) - 0.10 * (age - 64.0)
        if male
        else rng.normal(163.5, 6.2) - 0.12 * (age - 64.0)
    )
    log_bmi = np.log(27.0 if male else 26.3)
    bmi = float(np.exp(log_bmi + (0.14 if male else 0.17) * _truncated_normal(rng, 0.0, 1.0, -4.0, 4.0)))
    bmi = float(np.clip(bmi, *BMI_RANGE))
    weight = bmi * (height / 100.0) ** 2
    fat_pct = 1.2 * bmi + 0.15 * age - 11.0 * male - 4.5 + rng.normal(0.0, 3.0)
    body_fat = float(np.clip(fat_pct / 100.0, 0.06, 0.60))
    fat_kg = body_fat * weight
    lean_kg = weight - fat_kg
    android = float(rng.normal(0.4 if male else -0.3, 0.9))
    gynoid = float(-0.5 * android + np.sqrt(0.75) * rng.normal() + (0.0 if male else 0.4))
    vat_share = (0.19 if male else 0.075) * np.exp(0.25 * android + 0.012 * (age - 64.0))
    vat_l = float(np.clip(fat_kg * vat_share * _lognormal(rng, 0.22), 0.1, 14.0))
    liver_fat = float(
        np.clip(0.022 * (vat_l / 3.0) ** 0.6 * np.exp(0.12 * android) * _lognormal(rng, 0.8), 0.006, 0.45)
    )
    liver_volume = float(1.55 * (lean_kg / 52.0) ** 0.55 * (1.0 + 0.8 * liver_fat) * _lognormal(rng, 0.1))
    kidney_volume = float(0.30 * (lean_kg / 52.0) ** 0.6 * np.exp(-0.004 * (age - 64.0)) * _lognormal(rng, 0.1))
    spleen_volume = float(0.17 * (lean_kg / 52.0) ** 0.7 * _lognormal(rng, 0.22))
    muscle_fat = float(
        np.clip(
            0.062 + 0.0015 * (age - 64.0) + 0.0025 * (bmi - 27.0) + 0.012 * (1 - male) + rng.normal(0.0, 0.009),
            0.02,
            0.25,
        )
    )
    breast_l = (
        0.35 * (fat_kg / 25.0) ** 1.2 * _lognormal(rng, 0.35)
        if not male
        else 0.04 * max(0.0, fat_kg - 18.0) / 10.0
    )
    return SubjectParams(
        eid=int(eid),
        sex=male,
        age=float(age),
        height_cm=float(height),
        bmi=bmi,
        body_fat_fraction=body_fat,
        lean_index=float(lean_kg / (height / 100.0) ** 2),
        limb_muscle=float(np.clip(1.0 - 0.004 * (age - 64.0) + rng.normal(0.0, 0.06), 0.75, 1.3)),
        vat_l=vat_l,
        android=android,
        gynoid=gynoid,
        breast_l=float(min(breast_l, 3.0)),
        liver_volume_l=liver_volume,
        liver_fat=liver_fat,
        kidney_volume_l=kidney_volume,
        spleen_volume_l=spleen_volume,
        muscle_fat=muscle_fat,
        adipose_fat=float(np.clip(rng.normal(0.9, 0.025), 0.8, 0.97)),
        bowel_fat=float(rng.uniform(0.02, 0.25)),
        marrow_fat=float(np.clip(0.55 + 0.005 * (age - 64.0) + rng.normal(0.0, 0.05), 0.3, 0.85)),
        bone_mineral=float(
            (0.50 if male else 0.44) * (1.0 - (0.002 if male else 0.005) * (age - 64.0)) * _lognormal(rng, 0.08)
        ),
        sitting_ratio=float(np.clip(0.521 + 0.005 * (1 - male) + rng.normal(0.0, 0.012), 0.48, 0.56)),
        shoulder_scale=float(rng.normal(1.0, 0.05)),
        hip_scale=float(rng.normal(1.0, 0.05)),
        trunk_depth=float(rng.normal(1.0, 0.1)),
        trunk_squareness=float(rng.uniform(0.05, 0.6)),
        liver_elongation=float(rng.normal(1.0, 0.12)),
        liver_left_lobe=float(rng.uniform(0.12, 0.35)),
        liver_shift_mm=float(rng.normal(0.0, 8.0)),
        kidney_drop_mm=float(rng.normal(0.0, 12.0)),
        spleen_elongation=float(rng.normal(1.0, 0.12)),
        thigh_split=float(rng.normal(0.25, 0.05)),
        leg_spread_mm=float(rng.normal(0.0, 12.0)),
        x_offset_mm=_x_offset(rng),
        tilt_deg=float(rng.normal(0.0, 3.0)),
        roll_deg=float(rng.normal(0.0, 2.0)),
        fov_offset_mm=_fov_offset(rng),
        arm_gap_mm=float(np.clip(rng.normal(12.0, 15.0) - 1.0 * (bmi - 27.0), -30.0, 60.0)),
        arm_asymmetry_mm=float(rng.normal(0.0, 12.0)),
        arm_forward_mm=float(rng.normal(0.0, 25.0)),
        knee_lift_mm=float(rng.uniform(0.0, 45.0)),
        head_lift_mm=float(rng.normal(35.0, 10.0)),
        hands_on_belly=bool(rng.random() < 0.2),
        lean_mm=float(rng.normal(0.0, 12.0)),
        breath_mm=float(rng.normal(0.0, 12.0)),
        trunk_wave_chest=float(rng.normal(0.0, 0.07)),
        trunk_wave_waist=float(rng.normal(0.0, 0.07)),
        trunk_wave_hips=float(rng.normal(0.0, 0.07)),
        trunk_fat_shift=float(rng.normal(0.0, 1.0)),
        sat_anterior=_lognormal(rng, 0.3),
        sat_posterior=_lognormal(rng, 0.3),
        sat_lateral=_lognormal(rng, 0.3),
        vat_periphery=float(rng.normal(0.8, 0.8)),
        vat_shift=float(rng.normal(0.0, 0.03)),
        bowel_gas=float(rng.normal(0.0, 1.0)),
        # Lean tissues vary more in brightness than fat does.
        signal_muscle=_lognormal(rng, 0.12),
        signal_liver=_lognormal(rng, 0.1),
        signal_viscera=_lognormal(rng, 0.25),
        signal_kidney=_lognormal(rng, 0.1),
        signal_adipose=_lognormal(rng, 0.06),
        signal_marrow=_lognormal(rng, 0.1),
        vat_fat_offset=float(np.clip(rng.normal(-0.04, 0.03), -0.15, 0.03)),
        arm_fat_share=_lognormal(rng, 0.25),
    )


def _x_offset(rng: np.random.Generator) -> float:
    """Lateral position; a few percent lie far enough off-centre to lose a shoulder."""
    if rng.random() < 0.03:
        return float(rng.choice((-1.0, 1.0)) * rng.uniform(45.0, 75.0))
    return float(rng.normal(0.0, 30.0))


def _fov_offset(rng: np.random.Generator) -> float:
    """Head-foot position of the FOV; a few percent start high and lose the knees."""
    draw = rng.random()
    if draw < 0.03:
        return float(-rng.uniform(80.0, 160.0))
    if draw < 0.04:
        return float(rng.uniform(60.0, 100.0))
    return float(rng.normal(0.0, 60.0))
