"""A participant's label volume from body parameters.

The body is a set of analytic segments (head, neck, trunk, arms, legs) whose cross-sections are
ellipses varying along the body axis: a fat layer around a lean core, with the trunk cavity,
organs and bones inside. The same model is rasterised twice: finely on the exam's grid
(what the image shows; atlas and organ measurements) and coarsely over the whole body (what a
scale or a DXA scan sees, including the head and lower legs outside the field of view).

Depths are mm below the vertex; `u` is the depth as a fraction of height on a reference body
whose crotch is at 0.52, mapped onto each participant's own proportions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtri

from mimir import protocol
from mimir.synth.labels import Region, Tissue
from mimir.synth.subject import SubjectParams

logger = logging.getLogger(__name__)

_REF_HEIGHT_MM = 1760.0
_REF_LEAN_INDEX = 19.6
_REF_CROTCH_U = 0.52
_CHIN_U = 0.125
#: First row of the scanner bed on the common grid (the bed fills the rows below).
BED_ROW = protocol.GRID_ROWS - 19
#: Coarse whole-body grid: slice step and in-plane spacing (mm), rows and columns.
_COARSE_SLICE_MM = 9.0
_COARSE_PIXEL_MM = 2.0 * protocol.PIXEL_SPACING_MM
_COARSE_SHAPE = (100, 156)
_FIELD_LATTICE_MM = 16.0
#: Nothing may lie further anterior than this (mm in front of the isocentre): the grid's edge.
_ANTERIOR_LIMIT_MM = 0.5 * protocol.PIXEL_SPACING_MM * (protocol.GRID_ROWS - 4)

#: Reference landmarks (u) used by the measurements.
LANDMARKS_U = {
    "chin": _CHIN_U,
    "shoulder": 0.185,
    "t9": 0.285,
    "waist": 0.39,
    "iliac_crest": 0.415,
    "femoral_head_top": 0.472,
    "trochanter": 0.485,
    "crotch": _REF_CROTCH_U,
    "knee": 0.715,
}


@dataclass(frozen=True)
class Grid:
    """Voxel centres of a volume in body-scanner coordinates (mm)."""

    depth_mm: np.ndarray  # (slices,) depth below the vertex, increasing
    y_mm: np.ndarray  # (rows,) posterior positive
    x_mm: np.ndarray  # (columns,) patient-left positive

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.depth_mm.size, self.y_mm.size, self.x_mm.size)

    @property
    def voxel_volume_l(self) -> float:
        dz = float(self.depth_mm[1] - self.depth_mm[0]) if self.depth_mm.size > 1 else protocol.GRID_SLICE_SPACING_MM
        return dz * float(self.y_mm[1] - self.y_mm[0]) * float(self.x_mm[1] - self.x_mm[0]) * 1e-6


@dataclass
class BodyVolume:
    """Labels, fat fraction and region of one rasterisation."""

    grid: Grid
    labels: np.ndarray
    fat_fraction: np.ndarray
    region: np.ndarray


@dataclass
class Anatomy:
    """The exam's label volume plus what the measurements need beyond it."""

    labels: np.ndarray  # uint8 (slices, rows, columns), Tissue values
    fat_fraction: np.ndarray  # float32, same shape
    region: np.ndarray  # uint8, Region values
    grid: Grid
    #: The whole body on a coarse grid (for weight and DXA-style masses).
    whole_body: BodyVolume
    #: Landmark depths (mm below the vertex).
    landmarks_mm: dict[str, float] = field(default_factory=dict)
    height_mm: float = 0.0
    bone_mineral_g_per_ml: float = 0.45

    @property
    def voxel_volume_l(self) -> float:
        return self.grid.voxel_volume_l


def _centred_axis(n: int, spacing: float) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2.0) * spacing


def exam_grid(params: SubjectParams, n_slices: int) -> Grid:
    """The common 3 mm grid of the exam, its top near the chin."""
    height = params.height_cm * 10.0
    top = 0.108 * height + params.fov_offset_mm
    depth = top + protocol.GRID_SLICE_SPACING_MM * np.arange(n_slices)
    return Grid(
        depth_mm=depth,
        y_mm=_centred_axis(protocol.GRID_ROWS, protocol.PIXEL_SPACING_MM),
        x_mm=_centred_axis(protocol.COLUMNS, protocol.PIXEL_SPACING_MM),
    )


def whole_body_grid(params: SubjectParams) -> Grid:
    height = params.height_cm * 10.0
    depth = np.arange(_COARSE_SLICE_MM / 2.0, height, _COARSE_SLICE_MM)
    return Grid(
        depth_mm=depth,
        y_mm=_centred_axis(_COARSE_SHAPE[0], _COARSE_PIXEL_MM),
        x_mm=_centred_axis(_COARSE_SHAPE[1], _COARSE_PIXEL_MM),
    )


def bed_top_mm() -> float:
    """Posterior limit of the body: the upper surface of the scanner bed."""
    return (BED_ROW - 0.5 - (protocol.GRID_ROWS - 1) / 2.0) * protocol.PIXEL_SPACING_MM


# --------------------------------------------------------------------------------------------
# Profiles: reference keyframes along u


def _interp(u: np.ndarray, knots: tuple[float, ...], values: tuple[float, ...]) -> np.ndarray:
    return np.interp(u, knots, values, left=values[0], right=values[-1])


# The trunk's top slopes from the neck to the shoulders and its bottom arches between the thighs.
_TRUNK_U = (0.158, 0.168, 0.178, 0.19, 0.205, 0.225, 0.26, 0.30, 0.34, 0.385, 0.42, 0.46, 0.49, 0.505, 0.518, 0.528, 0.536, 0.542)
_TRUNK_A = (45, 80, 110, 136, 157, 150, 146, 141, 133, 129, 136, 143, 141, 131, 108, 76, 42, 1)
_TRUNK_B = (42, 50, 60, 72, 86, 96, 101, 99, 93, 87, 86, 93, 96, 91, 80, 62, 38, 1)
_TRUNK_FAT_U = (0.158, 0.20, 0.26, 0.30, 0.34, 0.385, 0.42, 0.46, 0.50, 0.525, 0.536, 0.542)
_TRUNK_FAT_W = (0.3, 0.5, 0.7, 0.8, 1.0, 1.2, 1.2, 1.1, 0.9, 0.5, 0.25, 0.0)
_VAT_U = (0.29, 0.32, 0.36, 0.40, 0.44, 0.48, 0.51, 0.52)
_VAT_W = (0.0, 0.5, 1.0, 1.0, 0.8, 0.5, 0.2, 0.0)
_LEG_U = (0.445, 0.49, 0.53, 0.60, 0.68, 0.715, 0.76, 0.84, 0.92, 0.955, 0.965)
_LEG_R = (20, 73, 71, 64, 57, 49, 53, 43, 29, 24, 22)
#: Leg bone radius (mm): femoral shaft, condyles flaring above the knee (u 0.715), tibial plateau.
_LEG_BONE_U = (0.49, 0.5, 0.66, 0.70, 0.725, 0.74, 0.76, 0.9, 0.96)
_LEG_BONE_R = (18, 14, 14, 36, 36, 30, 17, 13, 0)
_LEG_FAT_U = (0.445, 0.49, 0.55, 0.65, 0.715, 0.80, 0.95, 1.0)
_LEG_FAT_W = (0.3, 1.0, 1.0, 0.75, 0.45, 0.35, 0.15, 0.1)
_ARM_U = (0.19, 0.25, 0.33, 0.37, 0.40, 0.47, 0.515, 0.53, 0.58, 0.625)
_ARM_A = (40, 42, 38, 32, 37, 28, 21, 16, 15, 6)
_ARM_B = (40, 42, 38, 32, 37, 28, 17, 45, 45, 22)

#: Reference adipose volume per segment (L) at the reference fat mass index (6.2 kg/m2).
_REF_FAT_INDEX = 6.2


@dataclass(frozen=True)
class _Body:
    """Derived per-body constants shared by both rasterisations."""

    p: SubjectParams
    height: float
    core_scale: float
    limb_scale: float
    fat_trunk_l: float
    fat_arm_l: float
    fat_leg_l: float
    fat_neck_l: float
    bed_y: float

    def u_of(self, depth: np.ndarray) -> np.ndarray:
        crotch = self.p.sitting_ratio * self.height
        return np.interp(
            depth,
            (0.0, _CHIN_U * self.height, crotch, self.height),
            (0.0, _CHIN_U, _REF_CROTCH_U, 1.0),
        )

    def depth_of(self, u: float) -> float:
        crotch = self.p.sitting_ratio * self.height
        return float(np.interp(u, (0.0, _CHIN_U, _REF_CROTCH_U, 1.0), (0.0, _CHIN_U * self.height, crotch, self.height)))

    def midline(self, depth: np.ndarray) -> np.ndarray:
        """Body axis: shifted, tilted, and bent sideways above the hips."""
        bend = self.p.lean_mm * _interp(self.u_of(depth), (0.12, 0.3, 0.39, 0.47), (1.8, 1.6, 1.0, 0.0))
        return self.p.x_offset_mm + np.tan(np.radians(self.p.tilt_deg)) * (depth - 0.4 * self.height) + bend

    @property
    def dome_mm(self) -> float:
        """Depth of the diaphragm's right dome, which moves with breathing."""
        return self.depth_of(0.29) + self.p.breath_mm

    def roll_shift(self, lateral_mm: np.ndarray | float) -> np.ndarray | float:
        """Anterior-posterior shift of a structure at `lateral_mm` from the midline (body roll)."""
        return np.tan(np.radians(self.p.roll_deg)) * lateral_mm


def _make_body(params: SubjectParams) -> _Body:
    height = params.height_cm * 10.0
    h_rel = height / _REF_HEIGHT_MM
    fat_kg = params.body_fat_fraction * params.weight_kg
    fat_index = fat_kg / (params.height_cm / 100.0) ** 2
    # Adipose volume (L) outside the abdominal cavity, split over segments by sex and pattern.
    adipose_l = max(fat_kg / 0.83 - params.vat_l, 1.0)
    female = 1 - params.sex
    weights = {
        "trunk": (0.44 + 0.06 * params.android - 0.08 * female) * (1.0 + 0.1 * np.tanh((fat_index - _REF_FAT_INDEX) / 4)),
        "arm": (0.055 + 0.015 * female) * params.arm_fat_share,
        "leg": (0.19 + 0.05 * female) * np.exp(0.15 * params.gynoid),
        "neck": 0.03,
    }
    total = weights["trunk"] + 2 * weights["arm"] + 2 * weights["leg"] + weights["neck"]
    return _Body(
        p=params,
        height=height,
        core_scale=float(1.04 * np.sqrt(h_rel * params.lean_index / _REF_LEAN_INDEX)),
        limb_scale=float(np.sqrt(h_rel * params.lean_index / _REF_LEAN_INDEX) * params.limb_muscle**0.5),
        fat_trunk_l=adipose_l * weights["trunk"] / total,
        fat_arm_l=adipose_l * weights["arm"] / total,
        fat_leg_l=adipose_l * weights["leg"] / total,
        fat_neck_l=adipose_l * weights["neck"] / total,
        bed_y=bed_top_mm(),
    )


def _area_profile(body: _Body, knots: tuple[float, ...], weights: np.ndarray | tuple, volume_l: float, u: np.ndarray, u_weights: np.ndarray) -> np.ndarray:
    """Cross-section area (mm2) along u so that the segment holds `volume_l`."""
    fine_u = np.linspace(knots[0], knots[-1], 400)
    fine_w = np.interp(fine_u, knots, weights)
    depths = np.array([body.depth_of(v) for v in (knots[0], knots[-1])])
    length = depths[1] - depths[0]
    integral = np.trapezoid(fine_w, fine_u) / (knots[-1] - knots[0]) * length
    inside = (u >= knots[0]) & (u <= knots[-1])
    return np.where(inside, u_weights * volume_l * 1e6 / max(integral, 1e-6), 0.0)


def _ring_thickness(a: np.ndarray, b: np.ndarray, area: np.ndarray, lateral: np.ndarray | float, ap: np.ndarray | float) -> np.ndarray:
    """Fat thickness t so that an ellipse grown by (t*lateral, t*ap) gains `area`."""
    qa = np.pi * lateral * ap
    qb = np.pi * (a * ap + b * lateral)
    return (-qb + np.sqrt(qb * qb + 4 * qa * area)) / (2 * qa)


# --------------------------------------------------------------------------------------------
# Painting


class _Canvas:
    def __init__(self, grid: Grid, bed_y: float) -> None:
        self.grid = grid
        self.labels = np.zeros(grid.shape, dtype=np.uint8)
        self.region = np.zeros(grid.shape, dtype=np.uint8)
        self.max_row = int(np.searchsorted(grid.y_mm, bed_y))
        self.labels[:, self.max_row :, :] = Tissue.BED

    def ellipses(
        self,
        cx: np.ndarray,
        cy: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        square: float = 0.0,
    ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """Mask of per-slice ellipses (absent where a or b <= 0) inside their bounding box."""
        present = (a > 0.5) & (b > 0.5)
        if not present.any():
            return None
        ks = np.flatnonzero(present)
        k0, k1 = int(ks[0]), int(ks[-1]) + 1
        cx, cy = np.asarray(cx[k0:k1], float), np.asarray(cy[k0:k1], float)
        a = np.where(present[k0:k1], a[k0:k1], 1e-3)
        b = np.where(present[k0:k1], b[k0:k1], 1e-3)
        xs, ys = self.grid.x_mm, self.grid.y_mm
        c0 = int(np.searchsorted(xs, (cx - a)[present[k0:k1]].min()))
        c1 = int(np.searchsorted(xs, (cx + a)[present[k0:k1]].max()))
        r0 = int(np.searchsorted(ys, (cy - b)[present[k0:k1]].min()))
        r1 = min(int(np.searchsorted(ys, (cy + b)[present[k0:k1]].max())), self.max_row)
        if c1 <= c0 or r1 <= r0:
            return None
        dx2 = (((xs[c0:c1][None, :] - cx[:, None]) / a[:, None]) ** 2).astype(np.float32)
        dy2 = (((ys[r0:r1][None, :] - cy[:, None]) / b[:, None]) ** 2).astype(np.float32)
        q = dx2[:, None, :] + dy2[:, :, None]
        if square > 0:
            q -= square * np.minimum(dx2, 1.0)[:, None, :] * np.minimum(dy2, 1.0)[:, :, None]
        return (slice(k0, k1), slice(r0, r1), slice(c0, c1)), q < 1.0

    def paint(self, shape, tissue: int, region: int | None = None, only: tuple[int, ...] | None = None) -> None:
        if shape is None:
            return
        box, mask = shape
        if only is not None:
            table = np.zeros(256, dtype=bool)
            table[list(only)] = True
            mask = mask & table[self.labels[box]]
        self.labels[box][mask] = tissue
        if region is not None:
            self.region[box][mask] = region


def _ellipsoid(depth: np.ndarray, centre_depth: float, half_length: float, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    t = (depth - centre_depth) / max(half_length, 1e-3)
    s = np.sqrt(np.clip(1.0 - t * t, 0.0, None))
    return a * s, b * s


class _Field:
    """A smooth standard-normal random field in scanner coordinates, evaluated anywhere."""

    def __init__(self, rng: np.random.Generator, height: float) -> None:
        step = _FIELD_LATTICE_MM
        self.depth = np.arange(-3 * step, height + 3 * step, step)
        self.y = np.arange(-260.0, 260.0 + step, step)
        self.x = np.arange(-380.0, 380.0 + step, step)
        self.noise = rng.standard_normal((self.depth.size, self.y.size, self.x.size)).astype(np.float32)

    @staticmethod
    def _weights(points: np.ndarray, lattice: np.ndarray) -> np.ndarray:
        w = np.exp(-0.5 * ((points[:, None] - lattice[None, :]) / _FIELD_LATTICE_MM) ** 2)
        w /= np.sqrt((w * w).sum(axis=1, keepdims=True))
        return w.astype(np.float32)

    def sample(self, depth: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        lo = max(int(np.searchsorted(self.depth, depth.min() - 4 * _FIELD_LATTICE_MM)), 0)
        hi = int(np.searchsorted(self.depth, depth.max() + 4 * _FIELD_LATTICE_MM)) + 1
        noise = self.noise[lo:hi]
        along_x = noise @ self._weights(x, self.x).T  # (d, Ly, nx)
        along_y = self._weights(y, self.y) @ along_x  # (d, ny, nx)
        wd = self._weights(depth, self.depth[lo:hi])
        return (wd @ along_y.reshape(along_y.shape[0], -1)).reshape(depth.size, y.size, x.size)


# --------------------------------------------------------------------------------------------
# The body


@dataclass(frozen=True)
class _Trunk:
    """Per slice: the lean core's and the outer (fat) ellipse's half-axes and centres."""

    a_core: np.ndarray
    b_core: np.ndarray
    cy_core: np.ndarray
    a_out: np.ndarray
    b_out: np.ndarray
    cy_out: np.ndarray
    present: np.ndarray
    vat_area: np.ndarray


@dataclass(frozen=True)
class _NeckAndHead:
    neck_r: np.ndarray
    neck_t: np.ndarray
    neck_cy: np.ndarray
    head_a: np.ndarray
    head_b: np.ndarray
    head_cy: float


@dataclass(frozen=True)
class _Legs:
    """Per slice: muscle radius, fat thickness, outer half-axes, centre height and lateral offset."""

    r: np.ndarray
    t: np.ndarray
    a: np.ndarray
    b: np.ndarray
    cy: np.ndarray
    x: np.ndarray
    foot: np.ndarray


@dataclass(frozen=True)
class _Arms:
    a: np.ndarray
    b: np.ndarray
    t: np.ndarray
    xs: dict[int, np.ndarray]  # side -> lateral distance of the arm axis from the midline
    cys: dict[int, np.ndarray]  # side -> centre height


@dataclass(frozen=True)
class _Cavity:
    a: np.ndarray
    b: np.ndarray
    cy: np.ndarray


def _rasterise(body: _Body, grid: Grid, noise: _Field) -> BodyVolume:
    canvas = _Canvas(grid, body.bed_y)
    depth = grid.depth_mm
    u = body.u_of(depth)
    mid = body.midline(depth)
    trunk = _trunk(body, u)
    neck_head = _neck_and_head(body, u, depth, trunk)
    legs = _legs(body, u)
    arms = _arms(body, u, trunk, legs)
    cavity_shape = _cavity(body, u, depth, trunk)

    _paint_outer_layer(canvas, body, depth, mid, trunk, neck_head, legs, arms)
    thigh_top, knee = _paint_lean_cores(canvas, body, grid, mid, trunk, neck_head, legs, arms)

    # ---- Trunk cavity: viscera, visceral fat, lungs, organs.
    a_cav, b_cav, cy_cav = cavity_shape.a, cavity_shape.b, cavity_shape.cy
    cavity = canvas.ellipses(mid, cy_cav, a_cav, b_cav, 0.5 * body.p.trunk_squareness)
    canvas.paint(cavity, Tissue.VISCERA)
    dome = body.dome_mm
    if cavity is not None:
        _fill_cavity(canvas, body, cavity, noise, mid, cy_cav, a_cav, b_cav, trunk.vat_area, dome)
    _paint_organs(canvas, body, mid, cy_cav, a_cav, b_cav, dome)

    # ---- Bones.
    _paint_bones(
        canvas, body, u, mid, cy_cav, b_cav, neck_head.neck_cy, neck_head.neck_r, legs.x, legs.cy, legs.r,
        arms.xs, arms.cys, legs.foot,
    )

    fat_fraction = _fat_fraction(canvas, body, noise, thigh_top, knee, dome)
    return BodyVolume(grid=grid, labels=canvas.labels, fat_fraction=fat_fraction, region=canvas.region)


def _trunk(body: _Body, u: np.ndarray) -> _Trunk:
    """The trunk's lean core, widened by the visceral fat it holds, inside its fat ring (android
    fat on the belly, gynoid fat on the hips and buttocks)."""
    p = body.p
    female = 1 - p.sex
    s = body.core_scale
    shoulder = 1.0 + (p.shoulder_scale - 1.0 - 0.08 * female) * _interp(u, (0.18, 0.2, 0.26, 0.32), (0, 1, 1, 0))
    hips = 1.0 + (p.hip_scale - 1.0 + 0.07 * female) * _interp(u, (0.38, 0.44, 0.5, 0.53), (0, 1, 1, 0))
    wave = 1.0 + sum(
        amplitude * np.exp(-0.5 * ((u - centre) / 0.035) ** 2)
        for amplitude, centre in ((p.trunk_wave_chest, 0.25), (p.trunk_wave_waist, 0.37), (p.trunk_wave_hips, 0.46))
    )
    a_core = _interp(u, _TRUNK_U, _TRUNK_A) * s * shoulder * hips * wave / np.sqrt(p.trunk_depth)
    b_core = _interp(u, _TRUNK_U, _TRUNK_B) * s * np.sqrt(p.trunk_depth) * (1.0 - 0.05 * female * _interp(u, (0.2, 0.26, 0.33), (0, 1, 0)))
    vat_knots = tuple(k + p.vat_shift * (0.0 < i < len(_VAT_U) - 1) for i, k in enumerate(_VAT_U))
    vat_area = _area_profile(body, vat_knots, _VAT_W, p.vat_l, u, _interp(u, vat_knots, _VAT_W))
    grow = np.sqrt(1.0 + vat_area / np.maximum(np.pi * a_core * b_core * 0.55, 1.0))
    a_core = a_core * grow**0.6
    b_core = b_core * grow**1.4

    trunk_w = _interp(u, _TRUNK_FAT_U, _TRUNK_FAT_W)
    trunk_w = trunk_w * np.exp(0.2 * p.android * _interp(u, (0.3, 0.36, 0.42, 0.46), (0, 1, 1, 0)))
    trunk_w = trunk_w * np.exp(0.2 * p.gynoid * _interp(u, (0.42, 0.46, 0.52), (0, 1, 1)))
    trunk_w = trunk_w * np.exp(0.25 * p.trunk_fat_shift * np.clip((0.37 - u) / 0.12, -1.0, 1.0))
    fat_area = _area_profile(body, _TRUNK_FAT_U, _TRUNK_FAT_W, body.fat_trunk_l, u, trunk_w)
    belly = _interp(u, (0.26, 0.34, 0.44, 0.48), (0, 1, 1, 0))
    seat = _interp(u, (0.42, 0.47, 0.53), (0, 1, 1))
    m_ant = (1.0 + (0.35 + 0.15 * p.android) * belly - 0.2 * seat) * p.sat_anterior
    m_post = (0.75 + 0.55 * seat) * p.sat_posterior
    m_lat = (1.0 + 0.2 * female * seat) * p.sat_lateral
    m_ap = (m_ant + m_post) / 2
    present = (a_core > 2) & (b_core > 2)
    t = np.where(present, _ring_thickness(a_core, b_core, fat_area, m_lat, m_ap), 0.0)
    a_out = np.where(present, a_core + t * m_lat, 0.0)
    b_out = np.where(present, b_core + t * m_ap, 0.0)
    lift = p.head_lift_mm * _interp(u, (0.16, 0.2), (1, 0)) + 8.0 * _interp(u, (0.34, 0.39, 0.44), (0, 1, 0))
    cy_out = body.bed_y + 0.06 * b_out - b_out - lift
    cy_core = cy_out - t * (m_post - m_ant) / 2
    return _Trunk(a_core, b_core, cy_core, a_out, b_out, cy_out, present, vat_area)


def _neck_and_head(body: _Body, u: np.ndarray, depth: np.ndarray, trunk: _Trunk) -> _NeckAndHead:
    p = body.p
    s = body.core_scale
    h_rel = body.height / _REF_HEIGHT_MM
    neck_present = (u > 0.095) & (u < 0.2)
    neck_r = np.where(neck_present, 52.0 * s * _interp(u, (0.1, 0.13, 0.2), (0.9, 1.0, 1.1)), 0.0)
    neck_area = _area_profile(body, (0.1, 0.2), (1.0, 1.0), body.fat_neck_l, u, np.ones_like(u))
    neck_t = np.where(neck_present, _ring_thickness(neck_r, neck_r, neck_area, 1.0, 1.0), 0.0)
    head_a, head_b = _ellipsoid(depth, 0.062 * body.height, 0.066 * body.height, 74.0 * h_rel**0.4, 96.0 * h_rel**0.4)
    head_cy = body.bed_y - p.head_lift_mm - 96.0 * h_rel**0.4
    neck_cy = np.where(neck_present, _interp(u, (0.1, 0.175, 0.2), (head_cy + 20, head_cy + 35, 0)), 0.0)
    neck_cy = np.where(u > 0.175, (neck_cy + trunk.cy_out) / 2, neck_cy)
    neck_cy = np.minimum(neck_cy, body.bed_y - neck_r - neck_t)
    return _NeckAndHead(neck_r, neck_t, neck_cy, head_a, head_b, head_cy)


def _legs(body: _Body, u: np.ndarray) -> _Legs:
    """Thighs to feet, resting on the bed, knees on a cushion."""
    p = body.p
    s = body.core_scale
    h_rel = body.height / _REF_HEIGHT_MM
    leg_present = u > 0.445
    thigh_u = (LANDMARKS_U["femoral_head_top"] - 0.01, LANDMARKS_U["femoral_head_top"], LANDMARKS_U["knee"], LANDMARKS_U["knee"] + 0.01)
    thigh_factor = 1.0 + (p.thigh_muscle - 1.0) * _interp(u, thigh_u, (0.0, 1.0, 1.0, 0.0))
    leg_r = np.where(leg_present, _interp(u, _LEG_U, _LEG_R) * 1.15 * body.limb_scale * thigh_factor, 0.0)
    leg_area = _area_profile(body, _LEG_FAT_U, _LEG_FAT_W, body.fat_leg_l, u, _interp(u, _LEG_FAT_U, _LEG_FAT_W) * np.exp(0.25 * p.gynoid * _interp(u, (0.47, 0.6, 0.7), (1, 1, 0))))
    leg_t = np.where(leg_present, _ring_thickness(leg_r, leg_r, leg_area, 1.0, 1.0), 0.0)
    foot = u > 0.962
    leg_a = np.where(foot, 40.0 * s, leg_r + leg_t)
    leg_b = np.where(foot, 95.0 * s, leg_r + leg_t)
    knee_lift = p.knee_lift_mm * _interp(u, (0.52, 0.715, 0.85, 0.98), (0, 1, 0.6, 0.3))
    leg_cy = body.bed_y - 0.93 * (leg_r + leg_t) - knee_lift - np.where(foot, 70.0, 0.0)
    leg_x = (_interp(u, (0.445, 0.52, 0.715, 0.96), (80, 86, 82, 76)) * h_rel**0.5 + 0.4 * np.maximum(leg_t - 15.0, 0.0) + p.leg_spread_mm)
    return _Legs(leg_r, leg_t, leg_a, leg_b, leg_cy, leg_x, foot)


def _arms(body: _Body, u: np.ndarray, trunk: _Trunk, legs: _Legs) -> _Arms:
    """A straight-ish line from the shoulder past the waist and hips to the hand; the deltoid
    rounds the top of the arm, the hand tapers; hands may rest folded on the belly."""
    p = body.p
    female = 1 - p.sex
    arm_present = (u > 0.172) & (u < 0.625)
    arm_scale = 1.08 * body.limb_scale * (0.88 if female else 1.0)
    arm_cap = np.sqrt(np.clip((u - 0.172) / 0.028, 0.0, 1.0) * np.clip((0.625 - u) / 0.02, 0.0, 1.0))
    arm_a = np.where(arm_present, _interp(u, _ARM_U, _ARM_A) * arm_scale * arm_cap, 0.0)
    arm_b = np.where(arm_present, _interp(u, _ARM_U, _ARM_B) * arm_scale * arm_cap, 0.0)
    arm_area = _area_profile(body, (0.19, 0.33, 0.45, 0.52, 0.625), (1.0, 1.0, 0.55, 0.3, 0.1), body.fat_arm_l, u, _interp(u, (0.19, 0.33, 0.45, 0.52, 0.625), (1.0, 1.0, 0.55, 0.3, 0.1)))
    arm_t = np.where(arm_present, _ring_thickness(arm_a, arm_b, arm_area, 1.0, 1.0), 0.0)
    arm_xs = {side: _arm_path(body, side, u, trunk.a_out, legs.x + legs.r + legs.t, arm_a + arm_t) for side in (-1, 1)}
    arm_cy = body.bed_y - 0.95 * (arm_b + arm_t) - p.arm_forward_mm * _interp(u, (0.2, 0.62), (0, 1))
    arm_cys = {side: arm_cy + body.roll_shift(side * arm_xs[side]) for side in (-1, 1)}
    if p.hands_on_belly:
        folded = _rest_hands_on_belly(body, u, trunk.cy_out, trunk.a_out, trunk.b_out, arm_a, arm_b, arm_t, arm_xs, arm_cys)
        if folded is not None:
            arm_a, arm_b, arm_t = folded
    return _Arms(arm_a, arm_b, arm_t, arm_xs, arm_cys)


def _cavity(body: _Body, u: np.ndarray, depth: np.ndarray, trunk: _Trunk) -> _Cavity:
    """The trunk cavity inside the lean core's walls, from the thoracic inlet to the pelvic floor."""
    s = body.core_scale
    cavity_hi, cavity_lo = body.depth_of(0.172), body.depth_of(0.512)
    wall_ant = 12.0 * s
    wall_lat = 14.0 * s
    wall_post = _interp(u, (0.18, 0.3, 0.44, 0.5), (45, 55, 62, 70)) * s
    cav_present = (depth > cavity_hi) & (depth < cavity_lo)
    a_cav = np.where(cav_present, trunk.a_core - wall_lat, 0.0)
    b_cav = np.where(cav_present, trunk.b_core - (wall_ant + wall_post) / 2, 0.0)
    a_cav = np.where(cav_present, np.minimum(a_cav, 0.92 * trunk.a_core) * _interp(u, (0.172, 0.18, 0.19, 0.205, 0.49, 0.512), (0.35, 0.6, 0.8, 1, 1, 0.7)), 0.0)
    cy_cav = trunk.cy_core + (wall_ant - wall_post) / 2
    return _Cavity(a_cav, b_cav, cy_cav)


def _paint_outer_layer(
    canvas: _Canvas, body: _Body, depth: np.ndarray, mid: np.ndarray, trunk: _Trunk, neck_head: _NeckAndHead,
    legs: _Legs, arms: _Arms,
) -> None:
    """Everything starts as subcutaneous fat: legs, trunk, neck, scalp, breasts, arms."""
    p = body.p
    for side in (-1, 1):
        region = Region.LEG_LEFT if side > 0 else Region.LEG_RIGHT
        cx = mid + side * legs.x
        canvas.paint(canvas.ellipses(cx, legs.cy + body.roll_shift(side * legs.x), legs.a, legs.b), Tissue.SAT, region)
    canvas.paint(canvas.ellipses(mid, trunk.cy_out, trunk.a_out, trunk.b_out, p.trunk_squareness), Tissue.SAT, Region.TRUNK)
    neck_outer = neck_head.neck_r + neck_head.neck_t
    canvas.paint(canvas.ellipses(mid, neck_head.neck_cy, neck_outer, neck_outer), Tissue.SAT, Region.TRUNK)
    scalp = 4.0 + 2.0 * body.fat_neck_l
    head_a, head_b = neck_head.head_a, neck_head.head_b
    canvas.paint(canvas.ellipses(mid, np.full_like(depth, neck_head.head_cy), np.where(head_a > 0, head_a + scalp, 0), np.where(head_b > 0, head_b + scalp, 0)), Tissue.SAT, Region.HEAD)
    if p.breast_l > 0.01:
        size = (p.breast_l * 1e6 * 3 / (4 * np.pi) / (1.3 * 0.7)) ** (1 / 3)
        centre = body.depth_of(0.265)
        ba, bb = _ellipsoid(depth, centre, 1.0 * size, 1.3 * size, 0.7 * size)
        chest_front = trunk.cy_out - trunk.b_out
        for side in (-1, 1):
            cx = mid + side * 0.5 * trunk.a_out
            canvas.paint(canvas.ellipses(cx, chest_front + 0.25 * bb, ba, bb), Tissue.SAT, Region.TRUNK)
    for side in (-1, 1):
        region = Region.ARM_LEFT if side > 0 else Region.ARM_RIGHT
        cx = mid + side * arms.xs[side]
        canvas.paint(canvas.ellipses(cx, arms.cys[side], arms.a + arms.t, arms.b + arms.t), Tissue.SAT, region)


def _paint_lean_cores(
    canvas: _Canvas, body: _Body, grid: Grid, mid: np.ndarray, trunk: _Trunk, neck_head: _NeckAndHead,
    legs: _Legs, arms: _Arms,
) -> tuple[float, float]:
    """Muscle inside the fat: legs (thigh compartments labelled between femoral head and knee),
    feet, trunk, neck, arms; the skull and brain. Returns the thigh's top and the knee's depth."""
    p = body.p
    s = body.core_scale
    depth = grid.depth_mm
    split = p.thigh_split
    thigh_top = body.depth_of(LANDMARKS_U["femoral_head_top"])
    knee = body.depth_of(LANDMARKS_U["knee"])
    for side in (-1, 1):
        cx = mid + side * legs.x
        cy = legs.cy + body.roll_shift(side * legs.x)
        core_r = np.where(legs.foot, 0.0, legs.r)
        shape = canvas.ellipses(cx, cy, core_r, core_r)
        canvas.paint(shape, Tissue.MUSCLE)
        if shape is not None:
            box, mask = shape
            d = depth[box[0]][:, None, None]
            lateral = (grid.x_mm[box[2]][None, None, :] - cx[box[0]][:, None, None]) * side
            forward = grid.y_mm[box[1]][None, :, None] - cy[box[0]][:, None, None]
            radius = np.maximum(core_r[box[0]], 1.0)[:, None, None]
            thigh = mask & (d >= thigh_top) & (d <= knee)
            anterior = forward < radius * (-split) + 0.35 * lateral
            ant_label = Tissue.THIGH_ANTERIOR_LEFT if side > 0 else Tissue.THIGH_ANTERIOR_RIGHT
            post_label = Tissue.THIGH_POSTERIOR_LEFT if side > 0 else Tissue.THIGH_POSTERIOR_RIGHT
            view = canvas.labels[box]
            view[thigh & anterior] = ant_label
            view[thigh & ~anterior] = post_label
        canvas.paint(canvas.ellipses(cx, cy, np.where(legs.foot, 30.0 * s, 0), np.where(legs.foot, 75.0 * s, 0)), Tissue.MUSCLE)
    canvas.paint(canvas.ellipses(mid, trunk.cy_core, trunk.a_core * trunk.present, trunk.b_core * trunk.present, p.trunk_squareness), Tissue.MUSCLE)
    canvas.paint(canvas.ellipses(mid, neck_head.neck_cy, neck_head.neck_r, neck_head.neck_r), Tissue.MUSCLE)
    head_cy = np.full_like(depth, neck_head.head_cy)
    canvas.paint(canvas.ellipses(mid, head_cy, neck_head.head_a, neck_head.head_b), Tissue.BONE)
    canvas.paint(canvas.ellipses(mid, head_cy, np.maximum(neck_head.head_a - 7, 0), np.maximum(neck_head.head_b - 7, 0)), Tissue.VISCERA)
    for side in (-1, 1):
        cx = mid + side * arms.xs[side]
        canvas.paint(canvas.ellipses(cx, arms.cys[side], arms.a, arms.b), Tissue.MUSCLE)
    return thigh_top, knee


def _arm_path(body: _Body, side: int, u: np.ndarray, trunk_half_width: np.ndarray, leg_outer: np.ndarray, arm_half_width: np.ndarray) -> np.ndarray:
    """Lateral distance of the arm axis from the midline: clear of the trunk by the arm gap."""
    gap = body.p.arm_gap_mm + 0.5 * body.p.arm_asymmetry_mm * side

    def widest(lo: float, hi: float, values: np.ndarray) -> float:
        sel = (u >= lo) & (u <= hi)
        return float(values[sel].max()) if sel.any() else 150.0

    arm_mid = float(np.median(arm_half_width[(u > 0.22) & (u < 0.34)])) if ((u > 0.22) & (u < 0.34)).any() else 50.0
    elbow_w = float(np.median(arm_half_width[(u > 0.35) & (u < 0.39)])) if ((u > 0.35) & (u < 0.39)).any() else 40.0
    wrist_w = float(np.median(arm_half_width[(u > 0.49) & (u < 0.52)])) if ((u > 0.49) & (u < 0.52)).any() else 30.0
    shoulder_x = widest(0.2, 0.23, trunk_half_width) - 0.35 * arm_mid
    elbow_x = max(widest(0.3, 0.4, trunk_half_width) + gap + elbow_w, shoulder_x)
    wrist_x = max(widest(0.4, 0.5, trunk_half_width), widest(0.5, 0.56, leg_outer)) + gap + wrist_w
    return _interp(u, (0.19, 0.37, 0.52, 0.625), (shoulder_x, elbow_x, wrist_x, wrist_x - 5.0))


def _rest_hands_on_belly(
    body: _Body, u, cy_out, a_out, b_out, arm_a, arm_b, arm_t, arm_xs, arm_cys
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Bend the elbows so that the forearms lie on the belly, clear of it and inside the grid.

    The forearm and hand, seen slice by slice, fold into a shorter and wider segment of about
    the same volume. Moves the arms in `arm_xs` and `arm_cys` in place and returns the folded
    widths; returns None (arms stay beside the body) when a forearm would leave the field of
    view in front of a large belly.
    """
    elbow, hand_end, arm_end = 0.37, 0.49, 0.625
    forearm = (u > elbow) & (u < arm_end)
    if not forearm.any() or u[0] > elbow or u[-1] < arm_end:
        return None
    folded = (u > elbow) & (u < hand_end)
    source = elbow + (u - elbow) * (arm_end - elbow) / (hand_end - elbow)
    # Lying across the slices, the forearm's cross-section is wide and as flat as the arm.
    widen = (arm_end - elbow) / (hand_end - elbow)
    arm_a, arm_b, arm_t = (
        np.where(folded, np.interp(source, u, values) * scale, np.where(forearm, 0.0, values))
        for values, scale in ((arm_a, widen), (arm_b, 1.0), (arm_t, 1.0))
    )
    bend = _interp(u, (0.37, 0.43, 0.625), (0.0, 1.0, 1.0))
    square = body.p.trunk_squareness
    radius = arm_b + arm_t
    hand_x = np.maximum(0.35 * a_out, _interp(u, (0.4, 0.5), (90.0, 70.0)))
    posed = {}
    for side in (-1, 1):
        x = arm_xs[side] * (1.0 - bend) + hand_x * bend
        medial = (x - (arm_a + arm_t)) / np.maximum(a_out, 1.0)
        inner = np.clip(medial, 0.0, 0.999) ** 2
        clear = cy_out - b_out * np.sqrt((1.0 - inner) / (1.0 - square * inner)) - radius - 4.0
        y = arm_cys[side] * (1.0 - bend) + clear * bend
        y = np.where(medial < 1.0, np.minimum(y, clear), y)
        if np.any((y - radius)[forearm] < -_ANTERIOR_LIMIT_MM):
            return None
        posed[side] = (x, y)
    for side, (x, y) in posed.items():
        arm_xs[side] = np.where(forearm, x, arm_xs[side])
        arm_cys[side] = np.where(forearm, y, arm_cys[side])
    return arm_a, arm_b, arm_t


def _fill_cavity(canvas: _Canvas, body: _Body, cavity, noise: _Field, mid, cy_cav, a_cav, b_cav, vat_area, dome: float) -> None:
    """Lungs above the diaphragm; visceral fat and bowel (with gas) below it."""
    box, mask = cavity
    grid = canvas.grid
    depth = grid.depth_mm[box[0]]
    xs, ys = grid.x_mm[box[2]], grid.y_mm[box[1]]
    k = box[0]
    xn = (xs[None, None, :] - mid[k][:, None, None]) / np.maximum(a_cav[k], 1.0)[:, None, None]
    yn = (ys[None, :, None] - cy_cav[k][:, None, None]) / np.maximum(b_cav[k], 1.0)[:, None, None]
    # Diaphragm: right dome higher, lower laterally and posteriorly.
    diaphragm = dome + 35.0 * xn * xn + 40.0 * np.clip(yn, 0, None) + 12.0 * (xn > 0)
    thorax = mask & (depth[:, None, None] < diaphragm)
    # Mediastinum: lens-shaped in cross-section, narrow at the apex, wide at the heart.
    apex = body.depth_of(0.172)
    widening = np.clip((depth - apex) / max(dome - apex, 1.0), 0.0, 1.0)[:, None, None]
    lens = np.sqrt(np.clip(1.0 - ((yn + 0.05) / 0.8) ** 2, 0.0, None))
    mediastinum = np.abs(xn - 0.05) < (0.1 + 0.22 * widening) * lens
    view = canvas.labels[box]
    view[thorax & ~mediastinum] = Tissue.LUNG
    abdomen = mask & ~thorax
    area = np.pi * np.maximum(a_cav[k] * b_cav[k], 1.0)
    fraction = np.clip(vat_area[k] / area / 0.8, 0.0, 0.95)
    threshold = 1.05 * ndtri(np.clip(1.0 - fraction, 1e-4, 1 - 1e-4)).astype(np.float32)
    sel = np.flatnonzero(abdomen.any(axis=(1, 2)))
    if sel.size == 0:
        return
    k0, k1 = int(sel[0]), int(sel[-1]) + 1
    field = noise.sample(depth[k0:k1], ys, xs)
    field += body.p.vat_periphery * (xn[k0:k1] ** 2 + yn[k0:k1] ** 2 - 0.5)
    sub = abdomen[k0:k1]
    vat = sub & (field > threshold[k0:k1, None, None])
    gas = sub & (field < np.minimum(threshold[k0:k1, None, None] - 2.6, -2.2 + 0.3 * body.p.bowel_gas))
    view[k0:k1][vat] = Tissue.VAT
    view[k0:k1][gas] = Tissue.AIR


def _paint_organs(canvas: _Canvas, body: _Body, mid, cy_cav, a_cav, b_cav, dome: float) -> None:
    p = body.p
    depth = canvas.grid.depth_mm
    inside = (Tissue.VISCERA, Tissue.VAT, Tissue.AIR)
    ref_a = max(float(np.interp(dome + 60.0, depth, a_cav)), 60.0)
    ref_b = max(float(np.interp(dome + 60.0, depth, b_cav)), 50.0)
    ref_mid = float(np.interp(dome + 60.0, depth, mid))
    ref_cy = float(np.interp(dome + 60.0, depth, cy_cav))

    def blob(centre_x, centre_y, centre_depth, half_length, a, b, tissue, only=inside):
        ea, eb = _ellipsoid(depth, centre_depth, half_length, a, b)
        canvas.paint(canvas.ellipses(np.full_like(depth, centre_x), np.full_like(depth, centre_y), ea, eb), tissue, only=only)

    # Heart in the mediastinum, anterior and to the left.
    heart = 52.0 * body.core_scale
    blob(ref_mid + 0.2 * ref_a, ref_cy - 0.25 * ref_b, dome - 0.9 * heart, heart, 1.15 * heart, 0.9 * heart, Tissue.VISCERA, only=(Tissue.LUNG, Tissue.VISCERA))
    # Liver: right lobe under the right dome, left lobe crossing the midline anteriorly.
    right = p.liver_volume_l * (1 - p.liver_left_lobe) * 1.15e6
    rc = (right * 3 / (4 * np.pi) / (1.0 * 0.85)) ** (1 / 3) * p.liver_elongation ** (2 / 3)
    ra, rb, rl = rc / p.liver_elongation, 0.85 * rc / p.liver_elongation, rc * p.liver_elongation ** (1 / 3)
    ra, rb = ra * p.liver_elongation ** (1 / 6), rb * p.liver_elongation ** (1 / 6)
    liver_top = dome - 12.0
    blob(ref_mid - ref_a + 0.85 * ra + p.liver_shift_mm, ref_cy - 0.05 * ref_b, liver_top + rl, rl, ra, rb, Tissue.LIVER)
    left = p.liver_volume_l * p.liver_left_lobe * 1.15e6
    lc = (left * 3 / (4 * np.pi) / (1.6 * 0.45)) ** (1 / 3)
    blob(ref_mid + 0.1 * ref_a + p.liver_shift_mm, ref_cy - 0.45 * ref_b, liver_top + 0.9 * lc, 0.9 * lc, 1.6 * lc, 0.45 * lc, Tissue.LIVER)
    # Spleen: left, posterior, under the left dome.
    sc = (p.spleen_volume_l * 1.1e6 * 3 / (4 * np.pi) / (0.7 * 1.0)) ** (1 / 3)
    sl = sc * p.spleen_elongation
    sa, sb = 0.7 * sc / np.sqrt(p.spleen_elongation), sc / np.sqrt(p.spleen_elongation)
    blob(ref_mid + ref_a - 0.9 * sa, ref_cy + 0.5 * ref_b, dome + 25.0 + sl, sl, sa, sb, Tissue.SPLEEN)
    # Kidneys: either side of the spine, the right one lower; the renal sinus holds fat.
    kidney = p.kidney_volume_l / 2 * 1.12e6
    kc = (kidney * 3 / (4 * np.pi) / (0.5 * 0.45)) ** (1 / 3)
    kidney_depth = body.depth_of(0.355) + p.kidney_drop_mm + 0.5 * p.breath_mm
    for side, drop in ((-1, 18.0), (1, 0.0)):
        kx = ref_mid + side * (0.38 * ref_a + 0.5 * kc)
        ky = ref_cy + ref_b - 0.5 * kc - 22.0 * body.core_scale + float(body.roll_shift(side * 0.38 * ref_a))
        blob(kx, ky, kidney_depth + drop, kc, 0.5 * kc, 0.45 * kc, Tissue.KIDNEY)
        blob(kx - side * 0.22 * kc, ky, kidney_depth + drop, 0.45 * kc, 0.2 * kc, 0.17 * kc, Tissue.VAT, only=(Tissue.KIDNEY,))


def _paint_bones(canvas: _Canvas, body: _Body, u, mid, cy_cav, b_cav, neck_cy, neck_r, leg_x, leg_cy, leg_r, arm_xs, arm_cys, foot) -> None:
    depth = canvas.grid.depth_mm
    s = body.core_scale
    # Spine: vertebral bodies at the back of the cavity, spinous processes in the back muscle.
    vb = _interp(u, (0.13, 0.18, 0.3, 0.42, 0.45), (13, 15, 19, 23, 0)) * s * ((u > 0.13) & (u < 0.45))
    spine_y = np.where(u < 0.185, neck_cy + 0.3 * neck_r, cy_cav + b_cav - 0.5 * vb)
    canvas.paint(canvas.ellipses(mid, spine_y, vb, vb * 0.85), Tissue.BONE)
    spinous = np.where((u > 0.15) & (u < 0.44), 6.0 * s, 0.0)
    canvas.paint(canvas.ellipses(mid, spine_y + vb + 18.0 * s, spinous, 2.5 * spinous), Tissue.BONE)
    # Psoas beside the lumbar spine.
    psoas = _interp(u, (0.34, 0.4, 0.46, 0.47), (0, 18, 24, 0)) * s
    for side in (-1, 1):
        canvas.paint(canvas.ellipses(mid + side * (vb + psoas + 3.0), spine_y - 0.3 * vb, psoas, psoas), Tissue.MUSCLE)
    # Pelvis: iliac wings, sacrum, femoral heads and acetabula, pubis and ischium.
    wing_u = (u > 0.405) & (u < 0.47)
    wing_t = np.clip((u - 0.405) / 0.065, 0, 1)
    for side in (-1, 1):
        wx = mid + side * (62.0 + 30.0 * wing_t) * s
        wy = cy_cav + (0.55 - 0.5 * wing_t) * b_cav
        canvas.paint(canvas.ellipses(wx, wy, np.where(wing_u, 20.0 * s, 0), np.where(wing_u, 42.0 * s * (1 - 0.4 * wing_t), 0)), Tissue.BONE)
    sac = np.where((u > 0.44) & (u < 0.5), 38.0 * s * (1.0 - (u - 0.44) / 0.08), 0.0)
    canvas.paint(canvas.ellipses(mid, cy_cav + b_cav - 8.0, sac, 14.0 * s * (sac > 0)), Tissue.BONE)
    head_depth = body.depth_of(0.486)
    thigh_top_y = float(np.interp(head_depth, depth, leg_cy)) if depth[0] <= head_depth <= depth[-1] else None
    for side in (-1, 1):
        fx = mid + side * (np.interp(head_depth, depth, leg_x) - 12.0 * s)
        hy = cy_cav + 0.1 * b_cav if thigh_top_y is None else np.full_like(depth, thigh_top_y - 10.0)
        ha, hb = _ellipsoid(depth, head_depth, 28.0 * s, 28.0 * s, 28.0 * s)
        canvas.paint(canvas.ellipses(fx, hy, ha, hb), Tissue.BONE)
        pub = np.where((u > 0.495) & (u < 0.515), 22.0 * s, 0.0)
        canvas.paint(canvas.ellipses(mid + side * 32.0 * s, cy_cav - 0.65 * b_cav, pub, 0.5 * pub), Tissue.BONE)
        canvas.paint(canvas.ellipses(mid + side * 48.0 * s, cy_cav + 0.55 * b_cav, pub, 0.8 * pub), Tissue.BONE)
    # Femur, knee and tibia inside the leg core. At the joint line the cross-section is mostly
    # bone: the femoral condyles and the tibial plateau are 70-85 mm wide, the thigh muscles have
    # ended in tendons, and the fatty marrow makes the knee a dark band in the water image and a
    # bright one in the fat image (the landmark that fixes the leg's length).
    bone_r = _interp(u, _LEG_BONE_U, _LEG_BONE_R) * s * (u > 0.49) * ~foot
    bone_r = np.minimum(bone_r, 0.75 * leg_r)
    patella = np.where((u > 0.685) & (u < 0.715), 14.0 * s, 0.0)
    for side in (-1, 1):
        bx = mid + side * (leg_x + 0.08 * leg_r)
        by = leg_cy + body.roll_shift(side * leg_x) - 0.05 * leg_r
        canvas.paint(canvas.ellipses(bx, by, bone_r, bone_r), Tissue.BONE)
        canvas.paint(canvas.ellipses(bx, by - 0.8 * leg_r, 1.3 * patella, 0.6 * patella), Tissue.BONE)
        troch = np.where((u > 0.48) & (u < 0.5), 18.0 * s, 0.0)
        canvas.paint(canvas.ellipses(bx + side * 0.45 * leg_r, by, troch, troch), Tissue.BONE)
    # Arm bones.
    arm_bone = np.where((u > 0.2) & (u < 0.515), _interp(u, (0.2, 0.22, 0.36, 0.38, 0.5), (22, 12, 12, 14, 10)) * body.limb_scale, 0.0)
    for side in (-1, 1):
        arm_x = arm_xs[side]
        cx = mid + side * arm_x
        canvas.paint(canvas.ellipses(cx, arm_cys[side], 0.75 * arm_bone, arm_bone), Tissue.BONE, only=(Tissue.MUSCLE,))
    neck_bone = np.where((u > 0.1) & (u < 0.185), 8.0 * s, 0.0)
    canvas.paint(canvas.ellipses(mid, neck_cy - 0.45 * neck_r, neck_bone, neck_bone), Tissue.AIR, only=(Tissue.MUSCLE,))


def _fat_fraction(canvas: _Canvas, body: _Body, noise: _Field, thigh_top: float, knee: float, dome: float) -> np.ndarray:
    """Per-voxel fat fraction: tissue defaults, marrow, liver fat and muscle infiltration."""
    p = body.p
    table = np.zeros(256, dtype=np.float32)
    table[Tissue.SAT] = p.adipose_fat
    table[Tissue.VAT] = p.adipose_fat + p.vat_fat_offset
    table[Tissue.MUSCLE] = 0.75 * p.muscle_fat
    table[Tissue.LIVER] = p.liver_fat
    table[Tissue.KIDNEY] = 0.01
    table[Tissue.SPLEEN] = 0.01
    table[Tissue.BONE] = p.marrow_fat
    table[Tissue.VISCERA] = p.bowel_fat
    for tissue in (Tissue.THIGH_ANTERIOR_RIGHT, Tissue.THIGH_ANTERIOR_LEFT, Tissue.THIGH_POSTERIOR_RIGHT, Tissue.THIGH_POSTERIOR_LEFT):
        table[tissue] = p.muscle_fat
    labels = canvas.labels
    ff = table[labels]
    grid = canvas.grid
    # Infiltration and liver fat vary smoothly in space.
    for lo, hi, tissues, scale in (
        (thigh_top, knee, (Tissue.THIGH_ANTERIOR_RIGHT, Tissue.THIGH_ANTERIOR_LEFT, Tissue.THIGH_POSTERIOR_RIGHT, Tissue.THIGH_POSTERIOR_LEFT), 0.35),
        (dome - 30.0, dome + 320.0, (Tissue.LIVER,), 0.25),
    ):
        k0 = int(np.searchsorted(grid.depth_mm, lo))
        k1 = int(np.searchsorted(grid.depth_mm, hi))
        if k1 <= k0:
            continue
        sub = labels[k0:k1]
        table = np.zeros(256, dtype=bool)
        table[list(tissues)] = True
        mask = table[sub]
        if not mask.any():
            continue
        rows = np.flatnonzero(mask.any(axis=(0, 2)))
        cols = np.flatnonzero(mask.any(axis=(0, 1)))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        field = noise.sample(grid.depth_mm[k0:k1], grid.y_mm[r0:r1], grid.x_mm[c0:c1])
        box = (slice(k0, k1), slice(r0, r1), slice(c0, c1))
        local = mask[:, r0:r1, c0:c1]
        values = ff[box]
        values[local] = np.clip(values[local] * (1.0 + scale * field[local]), 0.0, 0.95)
    return ff


def build_anatomy(params: SubjectParams, n_slices: int, rng: np.random.Generator) -> Anatomy:
    """The participant on the exam grid (`n_slices` 3 mm slices from about the chin) and whole-body."""
    if n_slices < 2:
        raise ValueError(f"an exam needs at least 2 slices, got {n_slices}")
    body = _make_body(params)
    noise = _Field(rng, body.height)
    grid = exam_grid(params, n_slices)
    exam = _rasterise(body, grid, noise)
    whole = _rasterise(body, whole_body_grid(params), noise)
    return Anatomy(
        labels=exam.labels,
        fat_fraction=exam.fat_fraction,
        region=exam.region,
        grid=grid,
        whole_body=whole,
        landmarks_mm={name: body.depth_of(u) for name, u in LANDMARKS_U.items()},
        height_mm=body.height,
        bone_mineral_g_per_ml=params.bone_mineral,
    )
