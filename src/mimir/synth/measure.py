"""Ground-truth reference values computed from the label volume.

Atlas-style (MRI) measurements, organ volumes, liver fat, waist and hip come from the exam's
label volume; weight and the DXA-style masses come from the whole-body rasterisation of the
same anatomy, so they include the head and lower legs outside the field of view. Only grip
strength, pulse rate and probable diabetes are noisy functions of the anatomy.
"""

from __future__ import annotations

import numpy as np

from mimir.synth.anatomy import Anatomy, BodyVolume
from mimir.synth.labels import THIGH_MUSCLES, Region, Tissue
from mimir.synth.subject import SubjectParams

#: Mass density (kg/L) of pure fat and of fat-free soft tissue; lung parenchyma with its air.
FAT_DENSITY = 0.90
LEAN_DENSITY = 1.06
LUNG_DENSITY = 0.30

_NO_TISSUE = (Tissue.BACKGROUND, Tissue.BED, Tissue.AIR)
_ARMS = (Region.ARM_LEFT, Region.ARM_RIGHT)
_LEGS = (Region.LEG_LEFT, Region.LEG_RIGHT)


def _member(labels: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    """Elementwise membership by lookup table (much faster than np.isin on uint8 volumes)."""
    table = np.zeros(256, dtype=bool)
    table[list(values)] = True
    return table[labels]


def _slab(depth_mm: np.ndarray, top: float, bottom: float) -> slice:
    return slice(int(np.searchsorted(depth_mm, top)), int(np.searchsorted(depth_mm, bottom)))


def perimeter_mm(mask: np.ndarray, spacing_mm: float, bins: int = 180) -> float:
    """Tape-measure circumference of a 2D mask: the polygon of its outermost points by angle."""
    rows, cols = np.nonzero(mask)
    if rows.size < 3:
        return 0.0
    y = (rows - rows.mean()) * spacing_mm
    x = (cols - cols.mean()) * spacing_mm
    angle = np.arctan2(y, x)
    radius = np.hypot(x, y) + 0.5 * spacing_mm
    index = ((angle + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    outer = np.zeros(bins)
    np.maximum.at(outer, index, radius)
    filled = outer > 0
    theta = (np.arange(bins) + 0.5) / bins * 2 * np.pi - np.pi
    px, py = outer[filled] * np.cos(theta[filled]), outer[filled] * np.sin(theta[filled])
    return float(np.hypot(np.diff(np.append(px, px[0])), np.diff(np.append(py, py[0]))).sum())


def _masses(volume: BodyVolume, mineral: float, select: np.ndarray | None = None) -> dict[str, float]:
    """Fat, lean and bone mineral mass (kg) of the voxels in `select` (all when None)."""
    labels, ff = volume.labels, volume.fat_fraction
    if select is not None:
        labels, ff = labels[select], ff[select]
    vox = volume.grid.voxel_volume_l
    tissue = ~_member(labels, _NO_TISSUE)
    lung = labels == Tissue.LUNG
    soft = tissue & ~lung
    fat = float(ff[soft].sum()) * FAT_DENSITY * vox
    lean = (float((1.0 - ff[soft]).sum()) * LEAN_DENSITY + float(lung.sum()) * LUNG_DENSITY) * vox
    bone = float((labels == Tissue.BONE).sum()) * vox * mineral
    return {"fat": fat, "lean": lean, "bone": bone}


def _dxa_region(prefix: str, masses: dict[str, float], out: dict[str, float]) -> None:
    tissue = masses["fat"] + masses["lean"]
    out[f"{prefix}FatMass"] = masses["fat"]
    out[f"{prefix}LeanMass"] = masses["lean"]
    out[f"{prefix}TissueFatPercentage"] = 100.0 * masses["fat"] / tissue if tissue > 0 else float("nan")
    out[f"{prefix}TotalMass"] = tissue + masses["bone"]


def dxa_values(anatomy: Anatomy) -> dict[str, float]:
    """DXA-style regional masses of the whole body (kg; bone mass in g; VAT in L)."""
    body = anatomy.whole_body
    mineral = anatomy.bone_mineral_g_per_ml
    depth = body.grid.depth_mm
    marks = anatomy.landmarks_mm
    out: dict[str, float] = {}
    region = body.region
    sides = {"Left": Region.ARM_LEFT, "Right": Region.ARM_RIGHT}
    arms = [_masses(body, mineral, region == r) for r in sides.values()]
    legs = [_masses(body, mineral, region == r) for r in (Region.LEG_LEFT, Region.LEG_RIGHT)]
    for (side, _), arm, leg in zip(sides.items(), arms, legs, strict=True):
        out[f"DxaArmFatMass{side}"] = arm["fat"]
        out[f"DxaArmLeanMass{side}"] = arm["lean"]
        out[f"DxaArmTissueFatPercentage{side}"] = 100.0 * arm["fat"] / (arm["fat"] + arm["lean"])
        out[f"DxaArmTotalMass{side}"] = arm["fat"] + arm["lean"] + arm["bone"]
        out[f"DxaLegFatMass{side}"] = leg["fat"]
        out[f"DxaLegLeanMass{side}"] = leg["lean"]
        out[f"DxaLegTissueFatPercentage{side}"] = 100.0 * leg["fat"] / (leg["fat"] + leg["lean"])
        out[f"DxaLegTotalMass{side}"] = leg["fat"] + leg["lean"] + leg["bone"]
    _dxa_region("DxaArms", {k: arms[0][k] + arms[1][k] for k in arms[0]}, out)
    _dxa_region("DxaLegs", {k: legs[0][k] + legs[1][k] for k in legs[0]}, out)
    _dxa_region("DxaTrunk", _masses(body, mineral, region == Region.TRUNK), out)
    total = _masses(body, mineral)
    out["DxaTotalFatMass"] = total["fat"]
    out["DxaTotalLeanMass"] = total["lean"]
    out["DxaTotalFatFreeMass"] = total["lean"] + total["bone"]
    out["DxaTotalTissueMass"] = total["fat"] + total["lean"]
    out["DxaTotalTissueFatPercentage"] = 100.0 * total["fat"] / (total["fat"] + total["lean"])
    # Android: from the iliac crest up a fifth of the way to the chin; gynoid: below the trochanter.
    android_height = 0.2 * (marks["iliac_crest"] - marks["chin"])
    android = np.zeros(body.labels.shape, dtype=bool)
    android[_slab(depth, marks["iliac_crest"] - android_height, marks["iliac_crest"])] = True
    android &= region == Region.TRUNK
    gynoid = np.zeros(body.labels.shape, dtype=bool)
    gynoid[_slab(depth, marks["trochanter"], marks["trochanter"] + 1.5 * android_height)] = True
    gynoid &= ~_member(region, (*_ARMS, Region.OUTSIDE))
    for name, select in (("Android", android), ("Gynoid", gynoid)):
        masses = _masses(body, mineral, select)
        _dxa_region(f"Dxa{name}", masses, out)
        out[f"Dxa{name}BoneMass"] = masses["bone"] * 1000.0
    out["DxaVatVolume"] = float((body.labels[android] == Tissue.VAT).sum()) * body.grid.voxel_volume_l
    out["weight"] = total["fat"] + total["lean"] + total["bone"]
    return out


def atlas_values(anatomy: Anatomy, height_m: float, weight_kg: float) -> dict[str, float]:
    """Atlas-style MRI body composition from the exam's label volume (L, %, ratios)."""
    labels, ff, region = anatomy.labels, anatomy.fat_fraction, anatomy.region
    vox = anatomy.voxel_volume_l
    depth = anatomy.grid.depth_mm
    marks = anatomy.landmarks_mm
    abdomen = _slab(depth, marks["t9"], marks["femoral_head_top"])
    vat = float((labels[abdomen] == Tissue.VAT).sum()) * vox
    asat = float(((labels[abdomen] == Tissue.SAT) & (region[abdomen] == Region.TRUNK)).sum()) * vox
    out: dict[str, float] = {"AtlasVatVolume": vat, "AtlasAsatVolume": asat}
    names = {
        Tissue.THIGH_ANTERIOR_LEFT: "AtlasAnteriorThighLeanMuscleLeft",
        Tissue.THIGH_ANTERIOR_RIGHT: "AtlasAnteriorThighLeanMuscleRight",
        Tissue.THIGH_POSTERIOR_LEFT: "AtlasPosteriorThighLeanMuscleLeft",
        Tissue.THIGH_POSTERIOR_RIGHT: "AtlasPosteriorThighLeanMuscleRight",
    }
    for tissue, name in names.items():
        out[name] = float((1.0 - ff[labels == tissue]).sum()) * vox
    thigh = sum(out[name] for name in names.values())
    out["AtlasTotalThighMuscleVolume"] = thigh
    anterior = _member(labels, (Tissue.THIGH_ANTERIOR_LEFT, Tissue.THIGH_ANTERIOR_RIGHT))
    out["AtlasMuscleFat"] = 100.0 * float(ff[anterior].mean()) if anterior.any() else float("nan")
    counted = ~_member(region, (*_ARMS, Region.HEAD, Region.OUTSIDE))
    adipose = _member(labels, (Tissue.SAT, Tissue.VAT))
    out["AtlasTotalAdiposeTissueVolume"] = float((adipose & counted).sum()) * vox
    muscle = _member(labels, (Tissue.MUSCLE, *THIGH_MUSCLES)) & counted
    out["AtlasTotalLeanTissueVolume"] = float((1.0 - ff[muscle]).sum()) * vox
    out["AtlasTotalTrunkFat"] = float((adipose & (region == Region.TRUNK)).sum()) * vox
    abdominal_fat = vat + asat
    out["AtlasAbdominalFatRatio"] = abdominal_fat / (abdominal_fat + thigh) if abdominal_fat + thigh > 0 else float("nan")
    out["AtlasTotalAbdominalAdiposeTissueIndex"] = abdominal_fat / height_m**2
    out["AtlasWeightToMuscleRatio"] = weight_kg / thigh if thigh > 0 else float("nan")
    return out


def organ_values(anatomy: Anatomy) -> dict[str, float]:
    """Liver volume and fat (whole-liver mean and single-slice median), kidney parenchyma."""
    labels, ff = anatomy.labels, anatomy.fat_fraction
    vox = anatomy.voxel_volume_l
    liver = labels == Tissue.LIVER
    out = {
        "liverVolume": float(liver.sum()) * vox,
        "kidneyParenchymalVolume": float((labels == Tissue.KIDNEY).sum()) * vox,
    }
    if liver.any():
        out["AtlasLiverFat"] = 100.0 * float(ff[liver].mean())
        widest = int(np.argmax(liver.sum(axis=(1, 2))))
        out["liverFat"] = 100.0 * float(np.median(ff[widest][liver[widest]]))
    else:
        out["AtlasLiverFat"] = out["liverFat"] = float("nan")
    return out


def anthropometry(anatomy: Anatomy) -> dict[str, float]:
    """Waist, hip (cm) and sitting height (cm) from the body outline."""
    labels, region = anatomy.labels, anatomy.region
    spacing = float(anatomy.grid.x_mm[1] - anatomy.grid.x_mm[0])
    depth = anatomy.grid.depth_mm
    marks = anatomy.landmarks_mm
    body = ~_member(labels, (Tissue.BACKGROUND, Tissue.BED))
    k_waist = int(np.clip(np.searchsorted(depth, marks["waist"]), 0, depth.size - 1))
    waist = perimeter_mm(body[k_waist] & (region[k_waist] == Region.TRUNK), spacing)
    hip_slab = _slab(depth, marks["iliac_crest"] + 0.5 * (marks["trochanter"] - marks["iliac_crest"]), marks["crotch"])
    lower = body[hip_slab] & _member(region[hip_slab], (Region.TRUNK, *_LEGS))
    hip = max((perimeter_mm(s, spacing) for s in lower), default=0.0)
    trunk_slices = np.flatnonzero((region == Region.TRUNK).any(axis=(1, 2)))
    seat = float(depth[trunk_slices[-1]]) if trunk_slices.size and trunk_slices[-1] < depth.size - 1 else marks["crotch"]
    return {"waist": waist / 10.0, "hip": hip / 10.0, "sittingHeight": seat / 10.0}


def measure(anatomy: Anatomy, params: SubjectParams, rng: np.random.Generator) -> dict[str, float]:
    """Every catalog target, in catalog units, for one participant."""
    height_m = anatomy.height_mm / 1000.0
    out = dxa_values(anatomy)
    out.update(atlas_values(anatomy, height_m, out["weight"]))
    out.update(organ_values(anatomy))
    out.update(anthropometry(anatomy))
    out["height"] = anatomy.height_mm / 10.0
    out["sex"] = float(params.sex)
    out["age"] = float(params.age)
    arms_lean = out["DxaArmsLeanMass"]
    out["gripStrengthRight"] = float(max(2.0, 6.0 * arms_lean * (1.0 - 0.006 * (params.age - 64.0)) + rng.normal(0.0, 4.5)))
    bmi = out["weight"] / height_m**2
    out["pulseRate"] = float(
        np.clip(69.0 + 0.35 * (bmi - 27.0) - 2.5 * params.sex + 0.1 * out["liverFat"] + rng.normal(0.0, 10.0), 40.0, 130.0)
    )
    # Intercept tuned to the UK Biobank imaging visit's prevalence of about 6 %.
    logit = -3.5 + 0.45 * (out["AtlasVatVolume"] - 3.5) + 0.06 * (params.age - 64.0) + 0.06 * out["liverFat"] + 0.3 * params.sex
    out["diabetesType2Probable"] = float(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
    return out
