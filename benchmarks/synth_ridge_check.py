"""Is the synthetic cohort too easy? Ridge regression on 32x32 projection thumbnails.

Generates N participants and predicts key targets from 32x32 thumbnails with 5-fold ridge
regression. ICC(2,1) well below 0.99 means nuisance factors keep the problem honest.

Two representations of each participant:
- `sums` (default, fast): anatomy + noiseless signal, then per-station receiver gain and a
  smooth coil field in the spirit of the zip writer; water and fat projected (coronal and
  sagittal sums side by side, bed cropped) and resized to 32x32 each.
- `representation`: the real pipeline: the exam is written as a field-20201 zip (gain, coil
  field, Rician noise, off-grid stations), read back, fused and projected to the (3, 256, 256)
  image, which is average-pooled to (3, 32, 32). The zip is deleted after reading.

Usage: python benchmarks/synth_ridge_check.py --n 200 --seed 0 [--representation] [--features F.npz]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mimir import protocol
from mimir.imaging.fusion import fuse_stations
from mimir.imaging.projection import build_representation
from mimir.imaging.read import read_exam
from mimir.learn.baseline import pool_image
from mimir.synth.anatomy import build_anatomy
from mimir.synth.measure import measure
from mimir.synth.signal import render_signal
from mimir.synth.subject import sample_subject
from mimir.synth.ukb_writer import plan_exam, write_exam_zip

TARGETS = ("AtlasVatVolume", "AtlasAsatVolume", "liverVolume", "AtlasTotalThighMuscleVolume", "weight", "height")
THUMB = 32


def icc_2_1(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Two-way random, single measures, absolute agreement."""
    data = np.stack([truth, prediction], axis=1)
    n, k = data.shape
    grand = data.mean()
    ms_rows = k * ((data.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    ms_cols = n * ((data.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    residual = data - data.mean(axis=1, keepdims=True) - data.mean(axis=0, keepdims=True) + grand
    ms_error = (residual**2).sum() / ((n - 1) * (k - 1))
    return float((ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n))


def thumbnail(volume: np.ndarray) -> np.ndarray:
    cropped = volume[:, : protocol.GRID_ROWS - protocol.BED_ROWS, :]
    views = []
    for axis in (1, 2):
        view = cropped.sum(axis=axis)
        view = (view - view.min()) / max(float(view.max() - view.min()), 1e-6)
        views.append(view)
    side_by_side = np.concatenate(views, axis=1).astype(np.float32)
    return np.asarray(Image.fromarray(side_by_side).resize((THUMB, THUMB), Image.BILINEAR))


def station_gain(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Six head-to-foot bands with their own gain and smooth polynomial coil field."""
    n, rows, columns = shape
    field = np.empty(shape, dtype=np.float32)
    edges = np.linspace(0, n, 7).astype(int)
    x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        cx, cy, cxx, cyy, cxy = np.clip(rng.normal(0.0, 0.08, 5), -0.2, 0.2)
        plane = np.exp(cx * x + cy * y + cxx * x * x + cyy * y * y + cxy * x * y)
        field[start:stop] = rng.uniform(0.8, 1.25) * plane[None]
    return field


def ridge_cv(features: np.ndarray, target: np.ndarray, folds: int, alphas: tuple[float, ...], seed: int) -> np.ndarray:
    """Out-of-fold predictions; the penalty is chosen by inner leave-one-out (closed form)."""
    order = np.random.default_rng(seed).permutation(len(target))
    prediction = np.empty_like(target)
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        # Pixels share one scale (0..1), so centring is enough; per-pixel scaling would blow up
        # pixels that are constant in the training folds.
        mean = features[train].mean(axis=0)
        x = features[train] - mean
        y_mean = target[train].mean()
        y = target[train] - y_mean
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        best, best_error = alphas[0], np.inf
        for alpha in alphas:
            shrink = s**2 / (s**2 + alpha)
            hat_diag = ((u**2) * shrink).sum(axis=1)
            fitted = u @ (shrink * (u.T @ y))
            error = np.mean(((y - fitted) / (1 - hat_diag)) ** 2)
            if error < best_error:
                best, best_error = alpha, error
        coef = vt.T @ ((s / (s**2 + best)) * (u.T @ y))
        prediction[test] = (features[test] - mean) @ coef + y_mean
    return prediction


def sums_features(index: int, seed: int, slices: int) -> tuple[np.ndarray, dict[str, float]]:
    rng = np.random.default_rng([seed, index])
    params = sample_subject(rng, 1_000_000 + index)
    n_slices = slices + int(rng.integers(-20, 21))
    anatomy = build_anatomy(params, n_slices, rng)
    water, fat = render_signal(anatomy, params, rng)
    values = measure(anatomy, params, rng)
    gain = station_gain(water.shape, rng)
    features = np.concatenate([thumbnail(water * gain).ravel(), thumbnail(fat * gain).ravel()])
    return features, values


def representation_features(index: int, seed: int, folder: Path) -> tuple[np.ndarray, dict[str, float]]:
    """The cohort's own path: plan, anatomy, signal, zip, read, fuse, project, pool."""
    rng = np.random.default_rng([seed, index])
    eid = 1_000_000 + index
    params = sample_subject(rng, eid)
    plan = plan_exam(rng)
    anatomy = build_anatomy(params, plan.grid_slices, rng)
    water, fat = render_signal(anatomy, params, rng)
    values = measure(anatomy, params, rng)
    path = folder / f"{eid}_20201_2_0.zip"
    write_exam_zip(path, water, fat, plan, eid=eid, instance=2, rng=rng)
    try:
        image = build_representation(fuse_stations(read_exam(path).stations))
    finally:
        path.unlink(missing_ok=True)
    return pool_image(image, THUMB).ravel() / 255.0, values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slices", type=int, default=400, help="3 mm slices per exam (sums mode)")
    parser.add_argument("--representation", action="store_true", help="zip -> read -> fuse -> 2D image")
    parser.add_argument("--features", type=Path, help="cache of features and targets (.npz): reused if present")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.features is not None and args.features.exists():
        cached = np.load(args.features)
        x, y = cached["x"], cached["y"]
        print(f"features of {len(y)} subjects from {args.features}")
    else:
        features, truths, diabetes = [], [], []
        with tempfile.TemporaryDirectory(prefix="synth_ridge_") as folder:
            for index in range(args.n):
                if args.representation:
                    row, values = representation_features(index, args.seed, Path(folder))
                else:
                    row, values = sums_features(index, args.seed, args.slices)
                features.append(row)
                truths.append([values[name] for name in TARGETS])
                diabetes.append(values["diabetesType2Probable"])
        seconds = time.perf_counter() - started
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(truths, dtype=np.float64)
        steps = "anatomy+signal+measure+zip+read+fuse+project" if args.representation else "anatomy+signal+measure"
        print(f"{args.n} subjects in {seconds:.0f} s ({seconds / args.n:.2f} s each, {steps})")
        print(f"probable type 2 diabetes: {100 * np.mean(diabetes):.1f} %")
        if args.features is not None:
            np.savez_compressed(args.features, x=x, y=y)
    mode = "representation (3x32x32)" if args.representation else "sums (2x32x32)"
    print(f"{'target':32s} {'ICC(2,1)':>9s} {'R2':>6s}   {mode}")
    for j, name in enumerate(TARGETS):
        prediction = ridge_cv(x, y[:, j], folds=5, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0, 1e4), seed=args.seed)
        r2 = 1 - np.sum((y[:, j] - prediction) ** 2) / np.sum((y[:, j] - y[:, j].mean()) ** 2)
        print(f"{name:32s} {icc_2_1(y[:, j], prediction):9.3f} {r2:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
