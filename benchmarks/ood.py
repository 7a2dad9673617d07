"""The out-of-distribution flag of issue 15 (item 5), measured on synthetic cohorts.

    python benchmarks/ood.py --out /tmp/ood_bench            # everything (resumes)
    python benchmarks/ood.py --out /tmp/ood_bench --stage data
    python benchmarks/ood.py --out OUT --n-train 200 --n-held 100 --n-test 120 --n-shift 40   # docs/ood.md

Stages, each resumable (finished work is found in --out and skipped):

1. data: synthetic participants through the real pipeline (anatomy -> signal -> field-20201
   zip with gain, coil field, noise and off-grid stations -> read -> fuse -> project), into one
   image cache per cohort:
   - `train` (seed 11): the module's training exams; a share of them (`--held-out`) is the
     training run's validation set, never trained on, which sets the flag's threshold. Once
     a run exists this cohort is frozen (its split would change otherwise);
   - `held` (seed 11, `--n-held`, ids drawn apart from train's): more exams of the training
     cohort's generator that no network trains on; with the validation set they set the
     module's threshold (`build_module(..., held_out_images=...)`);
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
3. module: `build_module` with the OOD description computed from the training cache, the
   held cohort joining the validation exams (features `--features`, default mimir's).
4. score: `run_prediction` on every cohort; the share of exams flagged per cohort (and per
   zero-filled station); then the feature comparison: each feature space of COMPARED fitted
   on the same exams (features of every kind kept in OUT/features.npz), its flag rates per
   cohort; and the module's features with the threshold from each set of held-out exams.
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
COHORTS = {"train": 11, "held": 11, "test": 12, "protocol": 13, "phantom": 14}
#: The `held` cohort draws its ids from this stream (its subjects are seed 11's, like `train`).
HELD_EID_STREAM = 111
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


def _cohort_eids(out: Path, cohort: str, size: int) -> list[int]:
    """The ids a cohort of `size` subjects should hold.

    The train cohort is frozen once a run was trained on it (its split would change otherwise):
    then it is what truth_train.csv lists. The held cohort is seed 11's like train, its ids drawn
    from another stream and never any of train's."""
    from mimir.synth.cohort import draw_eids

    if cohort == "train" and (out / "run" / "weights.safetensors").is_file():
        return sorted(_truth_rows(out, "train"))
    if cohort == "held":
        train = set(_truth_rows(out, "train")) | set(draw_eids(max(size, 1), COHORTS["train"]))
        return [eid for eid in draw_eids(size + len(train), HELD_EID_STREAM) if eid not in train][:size]
    return draw_eids(size, COHORTS[cohort])


def build_data(out: Path, sizes: dict[str, int], workers: int) -> None:
    """Every cohort's cache under out/caches, truth.csv per cohort; subjects already cached are skipped."""
    from mimir.imaging.cache import image_path, write_image

    caches = out / "caches"
    queues = []
    for cohort, seed in COHORTS.items():
        done = _truth_rows(out, cohort)
        queues.append([(cohort, seed, eid) for eid in _cohort_eids(out, cohort, sizes[cohort]) if eid not in done])
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


# training and the module -------------------------------------------------------------------------
def _split(out: Path, held_out: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The train cohort's targets, its training and its held-out (validation) exams.

    Once a run exists its validation exams (val_predictions.csv) are the held-out ones, whatever
    `held_out` says now, so that a rerun never scores the run against exams it trained on."""
    truth = pd.read_csv(_truth_path(out, "train")).drop_duplicates("eid").sort_values("eid").reset_index(drop=True)
    truth = truth[[(out / "caches" / "train" / f"{eid}_20201_{INSTANCE}_0.npy").is_file() for eid in truth["eid"]]]
    validation = out / "run" / "val_predictions.csv"
    if validation.is_file():
        held_eids = set(pd.read_csv(validation, usecols=["eid"])["eid"].astype(int))
        is_held = truth["eid"].astype(int).isin(held_eids)
        return truth[["eid", "instance", *TARGETS]], truth[~is_held][["eid", "instance"]], truth[is_held][["eid", "instance"]]
    n_held = max(1, round(held_out * len(truth)))
    order = np.random.default_rng(0).permutation(len(truth))
    held = truth.iloc[np.sort(order[:n_held])]
    train = truth.iloc[np.sort(order[n_held:])]
    return truth[["eid", "instance", *TARGETS]], train[["eid", "instance"]], held[["eid", "instance"]]


def train_module(args: argparse.Namespace) -> None:
    from mimir.learn.train import train
    from mimir.runs.config import TrainConfig

    run = args.out / "run"
    if (run / "weights.safetensors").is_file():
        logger.info("train: %s is finished", run)
        return
    targets, train_ids, val_ids = _split(args.out, args.held_out)
    config = TrainConfig.load(args.config).replace(
        modules={MODULE: TARGETS}, iterations=args.iterations, lr_milestones=[int(0.8 * args.iterations)],
        checkpoint_every=max(1, args.iterations // 3), input_pool=args.input_pool, autocast="float32",
        batch_size=args.batch_size, channels_last=False, workers=0,
    )
    logger.info("train: %d training, %d held-out exams, %d iterations", len(train_ids), len(val_ids), args.iterations)
    started = time.perf_counter()
    train(config, args.out / "caches" / "train", targets, MODULE, run, train_ids=train_ids, val_ids=val_ids,
          device="cpu", resume=run.is_dir())
    logger.info("train: %.0f s", time.perf_counter() - started)


def build_ood_module(args: argparse.Namespace) -> None:
    from mimir.inference.module_build import build_module

    module = args.out / "module"
    if module.is_dir():
        logger.info("module: %s exists", module)
        return
    started = time.perf_counter()
    held = args.out / "caches" / "held"
    build_module(args.out / "run", None, module, images=args.out / "caches" / "train", ood_features=args.features,
                 held_out_images=held if held.is_dir() else None)
    logger.info("module: built with its OOD description in %.0f s", time.perf_counter() - started)


# scoring ------------------------------------------------------------------------------------------
SCORED = ("test", "test_swap", "test_station", "test_flip", "protocol", "phantom")
LABELS = {
    "test": "same generator, another seed (in distribution)",
    "test_swap": "water and fat swapped",
    "test_station": "one station zero-filled",
    "test_flip": "flipped head to foot",
    "protocol": "other protocol (noise x4, coil field x3, 3 mm slices)",
    "phantom": "other phantom (tissue signals)",
}
#: The feature spaces compared (each a description fitted on the same training and held-out exams).
COMPARED = (
    "penultimate", "stages", "stages_full", "image", "stages+image", "stages_full+image",
    "intensity", "noise", "background", "contrast", "profile",
    "image+intensity+noise+contrast", "image,intensity,noise,background",
    "image,intensity,noise,contrast", "image,intensity,noise,background,contrast",
    "stages+image,noise,contrast", "stages+image,intensity,noise,contrast",
    "stages,image,intensity,noise,background,contrast",
)
BASE_KINDS = ("penultimate", "stages", "stages_full", "image", "intensity", "noise", "background", "contrast", "profile")


def score(args: argparse.Namespace) -> None:
    from mimir.inference.predict import PredictOptions, run_prediction

    caches = args.out / "caches"
    module = args.out / "module"
    results: dict[str, dict] = {}
    for name in SCORED:
        started = time.perf_counter()
        table = run_prediction([caches / name], [module], PredictOptions(device="cpu", workers=1)).table
        flagged = table["ood_flag"].astype(str) != ""
        results[name] = {
            "n": int(len(table)), "flagged": int(flagged.sum()), "rate": float(flagged.mean()),
            "median_score": float(table["ood_score"].median()), "seconds": time.perf_counter() - started,
        }
        if name == "test_station":
            truth = pd.read_csv(_truth_path(args.out, "test")).drop_duplicates("eid")
            station = dict(zip(truth["eid"].astype(int), truth["station"].astype(int), strict=True))
            by_station = pd.DataFrame({"station": [station[int(eid)] for eid in table["eid"]], "flagged": flagged})
            results[name]["by_station"] = {
                int(key): [int(group["flagged"].sum()), int(len(group))] for key, group in by_station.groupby("station")
            }
    from mimir.inference.modules import read_spec

    comparison = compare_features(args)
    ood = read_spec(module).ood or {}
    record = {
        "module": str(module), "features": ood.get("features"), "threshold": ood.get("threshold"),
        "threshold_source": ood.get("threshold_source"), "n_held_out": ood.get("n_held_out"), "n_train": ood.get("n_train"),
        "prediction": results, "comparison": comparison,
        "threshold_sources": threshold_sources(args, str(ood.get("features"))),
    }
    (args.out / "results.json").write_text(json.dumps(record, indent=1))
    print(markdown(record))


def _features_of(network, folder: Path, kinds: list[str], stems: list[str] | None = None) -> dict[str, np.ndarray]:
    """The base feature kinds `kinds` of the images in `folder` (or of `stems` there), in stem order."""
    import torch

    from mimir.imaging.cache import load_image
    from mimir.inference.ood import extract_features
    from mimir.network import images_to_input

    paths = sorted(folder.glob("*.npy"))
    if stems is not None:
        wanted = set(stems)
        paths = [path for path in paths if path.stem in wanted]
    parts: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    for start in range(0, len(paths), 16):
        images = torch.from_numpy(np.stack([load_image(path) for path in paths[start : start + 16]]))
        network_in = images_to_input(images)
        for kind in kinds:
            parts[kind].append(extract_features(network, network_in, kind))
    return {kind: np.concatenate(values) for kind, values in parts.items()}


def _combined(parts: dict[str, np.ndarray], features: str) -> np.ndarray:
    return np.concatenate([parts[kind] for block in features.split(",") for kind in block.split("+")], axis=1)


def _block_sizes(parts: dict[str, np.ndarray], features: str) -> list[int]:
    return [sum(parts[kind].shape[1] for kind in block.split("+")) for block in features.split(",")]


#: Exam groups whose features are kept: the run's training and validation exams, the extra
#: held-out cohort, and every scored cohort.
GROUPS = ("train", "val", "held", *SCORED)


def all_features(args: argparse.Namespace) -> dict[str, dict[str, np.ndarray]]:
    """Every base feature kind of every group (kept in features.npz; kinds missing there are computed)."""
    from mimir.inference.modules import load_module

    saved = args.out / "features.npz"
    arrays = dict(np.load(saved)) if saved.is_file() else {}
    have = {key.split("/", 1)[1] for key in arrays}
    missing = [kind for kind in BASE_KINDS if kind not in have]
    if missing:
        logger.info("features: computing %s", ", ".join(missing))
        network = load_module(args.out / "module", "cpu").network
        _, train_ids, val_ids = _split(args.out, args.held_out)
        stem = "{}_20201_%d_0" % INSTANCE
        folders = {
            "train": (args.out / "caches" / "train", [stem.format(eid) for eid in train_ids["eid"]]),
            "val": (args.out / "caches" / "train", [stem.format(eid) for eid in val_ids["eid"]]),
            "held": (args.out / "caches" / "held", None),
            **{name: (args.out / "caches" / name, None) for name in SCORED},
        }
        for group, (folder, stems) in folders.items():
            if folder.is_dir():
                for kind, values in _features_of(network, folder, missing, stems).items():
                    arrays[f"{group}/{kind}"] = values
        np.savez(saved, **arrays)
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        group, kind = key.split("/", 1)
        groups.setdefault(group, {})[kind] = value
    return groups


def _rates(described, groups: dict[str, dict[str, np.ndarray]], features: str) -> dict[str, float]:
    return {
        name: float(np.mean(described.flagged(described.distances(_combined(groups[name], features)))))
        for name in SCORED
    }


def compare_features(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per compared feature space: the flag rate of each scored cohort, description fitted here on
    the run's training exams, the threshold from the held-out exams (validation and held cohort)."""
    from mimir.inference.ood import fit_description

    groups = all_features(args)
    comparison: dict[str, dict[str, float]] = {}
    for features in COMPARED:
        train = groups["train"]
        held = _combined(groups["val"], features)
        if "held" in groups:
            held = np.concatenate([held, _combined(groups["held"], features)])
        described = fit_description(
            _combined(train, features), held, features, block_sizes=_block_sizes(train, features)
        )
        comparison[features] = {**_rates(described, groups, features), "dimension": float(_combined(train, features).shape[1])}
        logger.info("features %s: %s", features, comparison[features])
    return comparison


def threshold_sources(args: argparse.Namespace, features: str) -> dict[str, dict[str, float]]:
    """The flag rates of `features` with the threshold from: the run's validation exams only, the
    held cohort only, both (the module's choice), the cross-fitted training distances."""
    from mimir.inference.ood import fit_description

    groups = all_features(args)
    train = _combined(groups["train"], features)
    sizes = _block_sizes(groups["train"], features)
    val = _combined(groups["val"], features)
    held = _combined(groups["held"], features) if "held" in groups else val[:0]
    sources = {"validation": val, "held cohort": held, "validation and held cohort": np.concatenate([val, held]), "cross-fitted training": None}
    out: dict[str, dict[str, float]] = {}
    for name, held_out in sources.items():
        if held_out is not None and not len(held_out):
            continue
        described = fit_description(train, held_out, features, block_sizes=sizes)
        out[name] = {**_rates(described, groups, features), "n": float(described.n_held_out or described.n_train)}
    return out


def markdown(record: dict) -> str:
    lines = ["| input | exams | flagged | rate | median ood_score |", "|---|---|---|---|---|"]
    for name, result in record["prediction"].items():
        lines.append(f"| {LABELS[name]} | {result['n']} | {result['flagged']} | {100 * result['rate']:.1f} % | {result['median_score']:.1f} |")
    by_station = record["prediction"].get("test_station", {}).get("by_station", {})
    if by_station:
        lines += ["", "zero-filled station: " + ", ".join(f"station {k}: {v[0]}/{v[1]}" for k, v in sorted(by_station.items()))]
    lines += ["", "| features | dims | " + " | ".join(LABELS[name] for name in SCORED) + " |", "|---|---|" + "---|" * len(SCORED)]
    for features, rates in record["comparison"].items():
        lines.append(f"| {features} | {int(rates['dimension'])} | " + " | ".join(f"{100 * rates[name]:.1f} %" for name in SCORED) + " |")
    lines += ["", f"threshold of {record['features']} from:", "", "| exams | n | " + " | ".join(LABELS[name] for name in SCORED) + " |",
              "|---|---|" + "---|" * len(SCORED)]
    for source, rates in record.get("threshold_sources", {}).items():
        lines.append(f"| {source} | {int(rates['n'])} | " + " | ".join(f"{100 * rates[name]:.1f} %" for name in SCORED) + " |")
    return "\n".join(lines)


# main ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", choices=("data", "train", "module", "score", "all"), default="all")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=120)
    parser.add_argument("--n-shift", type=int, default=80, help="subjects of the protocol and phantom cohorts")
    parser.add_argument("--n-held", type=int, default=100, help="extra held-out exams of the training cohort's generator (threshold)")
    parser.add_argument("--held-out", type=float, default=0.25, help="share of the train cohort held out (validation)")
    parser.add_argument("--config", default="cpu-small")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-pool", type=int, default=4, help="input pooling of the trained network (64 x 64 input)")
    parser.add_argument("--features", default=None, help="OOD features of the module (default: mimir's default)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)  # on a shared, busy CPU one thread wastes no time waiting on others
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": args.n_train, "held": args.n_held, "test": args.n_test, "protocol": args.n_shift, "phantom": args.n_shift}
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
