"""Tissue and body-region codes of the synthetic label volume.

Tissues say what a voxel is made of (and so what signal it gives); regions say which body
segment it belongs to, which DXA-style and atlas-style measurements need in addition.
"""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """One label per voxel of the synthetic anatomy."""

    BACKGROUND = 0
    SAT = 1  # subcutaneous adipose tissue (breasts included)
    VAT = 2  # visceral adipose tissue (abdominal and pelvic cavity, renal sinus)
    MUSCLE = 3  # skeletal muscle outside the thigh compartments
    THIGH_ANTERIOR_RIGHT = 4
    THIGH_ANTERIOR_LEFT = 5
    THIGH_POSTERIOR_RIGHT = 6
    THIGH_POSTERIOR_LEFT = 7
    LIVER = 8
    KIDNEY = 9
    SPLEEN = 10
    BONE = 11  # cortical bone with marrow (fat fraction = marrow fat)
    LUNG = 12
    AIR = 13  # trachea and bowel gas
    BED = 14
    VISCERA = 15  # other lean soft tissue: bowel, heart, vessels, bladder, brain


#: The four thigh muscle compartments of the atlas-based measurements.
THIGH_MUSCLES = (
    Tissue.THIGH_ANTERIOR_RIGHT,
    Tissue.THIGH_ANTERIOR_LEFT,
    Tissue.THIGH_POSTERIOR_RIGHT,
    Tissue.THIGH_POSTERIOR_LEFT,
)
#: Every skeletal muscle label.
MUSCLES = (Tissue.MUSCLE, *THIGH_MUSCLES)
#: Adipose tissue labels.
ADIPOSE = (Tissue.SAT, Tissue.VAT)


class Region(IntEnum):
    """Body segment of a voxel (DXA-style regions)."""

    OUTSIDE = 0
    HEAD = 1
    TRUNK = 2  # neck included
    ARM_RIGHT = 3
    ARM_LEFT = 4
    LEG_RIGHT = 5
    LEG_LEFT = 6
