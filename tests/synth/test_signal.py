"""Water and fat signal from the labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mimir.synth.anatomy import build_anatomy
from mimir.synth.labels import THIGH_MUSCLES, Tissue
from mimir.synth.signal import partial_volume, render_signal, tissue_signal
from mimir.synth.subject import sample_subject


def test_signal_follows_tissue_and_fat_fraction() -> None:
    rng = np.random.default_rng([3, 3])
    params = sample_subject(rng, 7)
    anatomy = build_anatomy(params, 200, rng)
    water, fat = render_signal(anatomy, params, rng)
    assert water.shape == anatomy.labels.shape and water.dtype == np.float32
    assert fat.dtype == np.float32 and water.min() >= 0 and fat.min() >= 0
    labels = anatomy.labels
    sat = labels == Tissue.SAT
    muscle = labels == Tissue.MUSCLE
    lung = labels == Tissue.LUNG
    assert np.median(fat[sat]) > 0.8 and np.median(water[sat]) < 0.3
    assert np.median(water[muscle]) > 0.8 and np.median(fat[muscle]) < 0.2
    assert np.median(water[lung] + fat[lung]) < 0.2
    assert (water[labels == Tissue.BACKGROUND] + fat[labels == Tissue.BACKGROUND]).mean() < 0.05


def test_partial_volume_softens_an_edge_and_keeps_the_total() -> None:
    volume = np.zeros((6, 8, 10), dtype=np.float32)
    volume[:, :, 5:] = 1.0
    soft = partial_volume(volume)
    row = soft[3, 4]
    assert row[3] == 0.0 and 0.0 < row[4] < 0.5 < row[5] < 1.0 and row[7] == 1.0
    assert np.isclose(soft.sum(), volume.sum(), rtol=0.01)


def _average_tissues(params):
    return replace(
        params,
        signal_muscle=1.0,
        signal_liver=1.0,
        signal_viscera=1.0,
        signal_kidney=1.0,
        signal_adipose=1.0,
        signal_marrow=1.0,
    )


def test_tissue_brightness_varies_per_participant() -> None:
    params = _average_tissues(sample_subject(np.random.default_rng([3, 4]), 8))
    base = tissue_signal(params)
    brighter = tissue_signal(replace(params, signal_muscle=1.2, signal_viscera=0.7))
    for tissue in (Tissue.MUSCLE, *THIGH_MUSCLES):
        assert brighter[tissue] == pytest.approx(1.2 * base[tissue])
    assert brighter[Tissue.VISCERA] == pytest.approx(0.7 * base[Tissue.VISCERA])
    assert brighter[Tissue.LIVER] == base[Tissue.LIVER] and brighter[Tissue.SAT] == base[Tissue.SAT]


def test_liver_stands_out_from_the_bowel_in_water() -> None:
    """The liver must stay learnable: brighter than the viscera around it in the water image."""
    rng = np.random.default_rng([3, 5])
    params = _average_tissues(replace(sample_subject(rng, 9), liver_fat=0.05))
    anatomy = build_anatomy(params, 400, rng)
    water, _ = render_signal(anatomy, params, rng)
    liver = anatomy.labels == Tissue.LIVER
    bowel = anatomy.labels == Tissue.VISCERA
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    assert np.median(water[k][liver[k]]) > 1.25 * np.median(water[k][bowel[k]])
