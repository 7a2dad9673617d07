"""The out-of-distribution flag of issue 15 (item 5), measured on synthetic cohorts.

    python benchmarks/ood.py --out /tmp/ood_bench            # everything (resumes)
    python benchmarks/ood.py --out /tmp/ood_bench --stage data

Stages, each resumable (finished work is found in --out and skipped):

1. data: synthetic participants through the real pipeline (anatomy -> signal -> field-20201
   zip with gain, coil field, noise and off-grid stations -> read -> fuse -> project), into one
   image cache per cohort:
   - `train` (seed 11): the module's training exams; a share of them (`--held-out`) is the
     training run's validation set, never trained on, which sets the flag's threshold;
   - `test` (seed 12): in-distribution exams from another seed (how often are they flagged?),
     and from the same fused volumes, before projection:
       `test_swap`     water and fat volumes exchanged (a water-fat swap of the whole exam),
       `test_station`  one station's slices (its fused slice range, one of the six drawn per
                       subject) set to zero, as if it were missing and zero-filled,
       `test_flip`     the volume flipped head to foot;
   - `protocol` (seed 13): another acquisition protocol: complex noise 4x the cohort's (sd
     32-64 counts), a coil field 3x stronger (coefficients sd 0.24, clipped at +-0.6) and
     stations acquired on 3 mm slices;
   - `phantom` (seed 14): another phantom: tissue signals far outside the cohort's spread
     (adipose x0.6, muscle and liver x1.6, marrow x0.5), so fat fractions and water/fat
     contrasts differ while anatomy and protocol are the cohort's.
2. train: a ResNet18 (`--config`, default the shipped cpu-small with `--iterations`) on the
   train cohort's six reference targets, its validation set held out.
3. module: `build_module` with the OOD description computed from the training cache.
4. score: `run_prediction` on every cohort; the share of exams flagged per cohort (and per
   zero-filled station); then the feature comparison: each feature kind's description fitted
   on the same exams, its flag rates per cohort.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

TARGETS = ["AtlasVatVolume", "AtlasAsatVolume", "liverVolume", "AtlasTotalThighMuscleVolume", "weight", "height"]
MODULE = "oodbench"
COHORTS = {"train": 11, "test": 12, "protocol": 13, "phantom": 14}
PERTURBATIONS = ("swap", "station", "flip")
INSTANCE = 2

logger = logging.getLogger("ood-benchmark")


# data ----------------------------------------------------------------------------------------------
def _protocol_plan(plan, rng: np.random.Generator):
    """The cohort's exam plan under the other protocol: noisier, stronger coil field."""
    stations = tuple(
        dataclasses.replace(station, bias=tuple(float(c) for c in np.clip(rng.normal(0.0, 0.24, 7), -0.6, 0.6)))
        for station in plan.stations
    )
    return dataclasses.replace(plan, stations=stations, noise_sigma=float(rng.uniform(32.0, 64.0)))


def _phantom_params(params):
    return dataclasses.replace(
        params,
        signal_adipose=params.signal_adipose * 0.6,
        signal_muscle=params.signal_muscle * 1.6,
        signal_liver=params.signal_liver * 1.6,
        signal_marrow=params.signal_marrow * 0.5,
    )


def _project_variants(volume, station: int) -> dict[str, np.ndarray]:
    """The exam's image and its three perturbations, each made on the fused volume before projection."""
    from mimir.imaging.projection import build_representation

    images = {"": build_representation(volume)}
    images["swap"] = build_representation(dataclasses.replace(volume, water=volume.fat, fat=volume.water))
    start, stop = volume.station_ranges[station]
    water, fat = volume.water.copy(), volume.fat.copy()
    water[start:stop] = 0.0
    fat[start:stop] = 0.0
    images["station"] = build_representation(dataclasses.replace(volume, water=water, fat=fat))
    images["flip"] = build_representation(
        dataclasses.replace(volume, water=np.ascontiguousarray(volume.water[::-1]), fat=np.ascontiguousarray(volume.fat[::-1]))
    )
    return images


def make_subject(cohort: str, seed: int, eid: int) -> dict:
    """One participant of `cohort` through the real pipeline; its image(s) and true targets."""
    from mimir.imaging.fusion import fuse_stations
    from mimir.imaging.projection import build_representation
    from mimir.imaging.read import read_exam
    from mimir.synth.anatomy import build_anatomy
    from mimir.synth.cohort import subject_rng
    from mimir.synth.measure import measure
    from mimir.synth.signal import render_signal
    from mimir.synth.subject import sample_subject
    from mimir.synth.ukb_writer import plan_exam, write_exam_zip

    rng = subject_rng(seed, eid)
    params = sample_subject(rng, eid)
    plan = plan_exam(rng, on_grid=cohort == "protocol")
    anatomy = build_anatomy(params, plan.grid_slices, rng)
    if cohort == "protocol":
        plan = _protocol_plan(plan, rng)
    signal_params = _phantom_params(params) if cohort == "phantom" else params
    water, fat = render_signal(anatomy, signal_params, rng)
    truth = measure(anatomy, params, rng)
    with tempfile.TemporaryDirectory(prefix="ood-bench-") as folder:
        path = Path(folder) / f"{eid}_20201_{INSTANCE}_0.zip"
        write_exam_zip(path, water, fat, plan, eid=eid, instance=INSTANCE, rng=rng, quirks=())
        exam = read_exam(path)
    volume = fuse_stations(exam.stations)
    if cohort == "test":
        station = int(rng.integers(0, len(volume.station_ranges)))
        images = _project_variants(volume, station)
    else:
        station = -1
        images = {"": build_representation(volume)}
    return {"eid": eid, "truth": {name: truth.get(name) for name in TARGETS}, "images": images, "station": station + 1}


def _cache_name(cohort: str, variant: str) -> str:
    return cohort if not variant else f"{cohort}_{variant}"


def build_data(out: Path, sizes: dict[str, int], workers: int) -> None:
    """Every cohort's cache under out/caches, truth.csv per cohort; subjects already cached are skipped."""
    from mimir.imaging.cache import image_path, write_image
    from mimir.synth.cohort import draw_eids

    caches = out / "caches"
    queues = []
    for cohort, seed in COHORTS.items():
        done = _truth_rows(out, cohort)
        queues.append([(cohort, seed, eid) for eid in draw_eids(sizes[cohort], seed) if eid not in done])
    # Round-robin over the cohorts (the training cohort twice as often), so that every cohort
    # grows together and a benchmark stopped early still has some of each.
    jobs = []
    while any(queues):
        for index, queue in enumerate(queues):
            for _ in range(2 if index == 0 else 1):
                if queue:
                    jobs.append(queue.pop(0))
    logger.info("data: %d subjects to generate", len(jobs))
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(make_subject, *job) for job in jobs]
        for number, (future, (cohort, _, eid)) in enumerate(zip(futures, jobs, strict=True), start=1):
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 - one subject must not stop the benchmark
                logger.warning("%s subject %d failed: %s", cohort, eid, error)
                continue
            stem = f"{eid}_20201_{INSTANCE}_0"
            for variant, image in result["images"].items():
                folder = caches / _cache_name(cohort, variant)
                folder.mkdir(parents=True, exist_ok=True)
                write_image(folder, stem, image)
            _append_truth(out, cohort, {"eid": eid, "instance": INSTANCE, "station": result["station"], **result["truth"]})
            assert image_path(caches / cohort, stem).is_file()
            if number % 20 == 0:
                elapsed = time.perf_counter() - started
                logger.info("data: %d/%d subjects, %.1f s each", number, len(jobs), elapsed / number)


def _truth_path(out: Path, cohort: str) -> Path:
    return out / f"truth_{cohort}.csv"


def _truth_rows(out: Path, cohort: str) -> set[int]:
    path = _truth_path(out, cohort)
    if not path.is_file():
        return set()
    return set(pd.read_csv(path)["eid"].astype(int))


def _append_truth(out: Path, cohort: str, row: dict) -> None:
    path = _truth_path(out, cohort)
    frame = pd.DataFrame([row])
    frame.to_csv(path, mode="a", header=not path.is_file(), index=False)


# main ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", choices=("data", "train", "module", "score", "all"), default="all")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=120)
    parser.add_argument("--n-shift", type=int, default=80, help="subjects of the protocol and phantom cohorts")
    parser.add_argument("--held-out", type=float, default=0.25, help="share of the train cohort held out (validation)")
    parser.add_argument("--config", default="cpu-small")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.n_train, "test": args.n_test, "protocol": args.n_shift, "phantom": args.n_shift}
    if args.stage in ("data", "all"):
        build_data(args.out, sizes, args.workers)
    if args.stage in ("train", "all"):
        train_module(args)
    if args.stage in ("module", "all"):
        build_ood_module(args)
    if args.stage in ("score", "all"):
        score(args)


if __name__ == "__main__":
    main()
