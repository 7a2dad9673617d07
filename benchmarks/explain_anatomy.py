"""Do the saliency maps point at the right anatomy? The synthetic cohort knows where every organ is.

Generates a synthetic cohort, compresses it, trains one small module per target (liver volume;
thigh muscle volume) on all but the held-out subjects, explains the held-out exams with every
method through `mimir.explain.explain`, and scores each map against the true anatomy:

- inside share: the share of the map's saliency inside the organ's projected mask;
- area share: the organ's share of the projected body area;
- ratio = inside share / area share (1: no better than saliency spread evenly over the body);
- for thigh muscle also the region ratio: the same with the legs as a whole (the leg segments
  in the field of view, muscle, fat and bone, plus the thigh muscles' own labels, whose top lies
  in the trunk segment) in place of the muscle labels; and the thighs ratio: the same with the
  thighs (that region in the image rows of the thigh muscles, femoral heads to knees; the issue's
  "inside the thighs").

The organ masks come from the subject's label volume, drawn again from its seed
(`mimir.synth.cohort.subject_anatomy`), sampled onto the fused grid of its zip (the fused
volume's origin and spacing) and projected as the image is built (`mimir.imaging.projection.
project_mask`). The benchmark checks that geometry itself: the projected body labels must
overlap the image's own body outline (Dice printed).

It also runs the model-randomisation cascade (Adebayo et al. 2018) on the held-out exams: the
rank correlation between the trained module's maps and those with the top 1..6 blocks
re-initialised, inside the body and over the whole image.

    python benchmarks/explain_anatomy.py --n 200 --held-out 40 --out /tmp/explain_anatomy

Everything lands in --out (a rerun reuses the cohort, cache, runs and maps); results.json and a
markdown table are written there and printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from synthetic_cohorts import chunk_finished, generate_complete_cohort

#: target -> the labels whose projection is its anatomy.
TARGETS = {"liverVolume": ("LIVER",), "AtlasTotalThighMuscleVolume": (
    "THIGH_ANTERIOR_RIGHT", "THIGH_ANTERIOR_LEFT", "THIGH_POSTERIOR_RIGHT", "THIGH_POSTERIOR_LEFT")}
#: target -> the body segment it lies in, scored as well: the thigh muscle's outer boundary lies in
#: the thighs' subcutaneous fat, outside the muscle labels but inside the thighs.
REGIONS = {"AtlasTotalThighMuscleVolume": ("LEG_RIGHT", "LEG_LEFT")}
METHODS = ("gradcam", "guided-gradcam", "integrated-gradients")
#: Body segments that divide up the rest of the image, each pixel counted once, in this order after
#: the organ itself: where the saliency outside the organ goes.
SEGMENTS = {"legs": ("LEG_RIGHT", "LEG_LEFT"), "trunk": ("TRUNK",), "arms": ("ARM_RIGHT", "ARM_LEFT"), "head": ("HEAD",)}


def build_cohort(out: Path, n: int, seed: int, workers: int, thigh_muscle_sd: float = 0.0) -> tuple[Path, pd.DataFrame]:
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs
    from mimir.synth import CohortConfig

    folder, cache = out / "cohort", out / "cache"
    if not chunk_finished(folder):
        generate_complete_cohort(CohortConfig(n=n, seed=seed, thigh_muscle_sd=thigh_muscle_sd), folder, workers)
    compress_exams(discover_inputs(sorted(folder.glob("*.zip"))), CompressOptions(cache=cache), workers=workers)
    return cache, pd.read_csv(folder / "truth.csv")


def train_module(out: Path, cache: Path, truth: pd.DataFrame, target: str, train_eids: list[int], config_path: str | Path,
                 iterations: int, device: str, **overrides: int | str) -> Path:
    from mimir.inference.module_build import build_module
    from mimir.learn.train import train
    from mimir.runs.config import TrainConfig

    module = out / "modules" / target
    if (module / "module.json").is_file():
        return module
    config = TrainConfig.load(config_path).replace(
        modules={target: [target]}, iterations=iterations, lr_milestones=[int(iterations * 0.8)],
        checkpoint_every=iterations, **overrides,
    )
    rows = truth[truth["eid"].isin(train_eids)][["eid", "instance", target]]
    train(config, cache, rows, target, out / "runs" / target, device=device)
    return build_module(out / "runs" / target, None, module, overwrite=True)


def anatomy_on_fused_grid(zip_path: Path, seed: int, eid: int, thigh_muscle_sd: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The subject's tissue labels and body regions sampled (nearest) onto the fused grid its zip gives."""
    from mimir.imaging.fusion import fuse_stations
    from mimir.imaging.read import read_exam
    from mimir.protocol import COLUMNS, GRID_ROWS, GRID_SLICE_SPACING_MM, PIXEL_SPACING_MM
    from mimir.synth.cohort import subject_anatomy

    _, plan, anatomy = subject_anatomy(seed, eid, thigh_muscle_sd=thigh_muscle_sd)
    volume = fuse_stations(read_exam(zip_path).stations)
    (x0, y0, z0), (slice_step, row_step, column_step) = volume.origin, volume.spacing
    slices, rows, columns = volume.shape
    j = np.rint((plan.grid_z_top_mm - (z0 - np.arange(slices) * slice_step)) / GRID_SLICE_SPACING_MM).astype(int)
    r = np.rint((y0 + np.arange(rows) * row_step) / PIXEL_SPACING_MM + (GRID_ROWS - 1) / 2).astype(int)
    c = np.rint((x0 + np.arange(columns) * column_step) / PIXEL_SPACING_MM + (COLUMNS - 1) / 2).astype(int)
    keep_j, keep_r, keep_c = (j >= 0) & (j < anatomy.labels.shape[0]), (r >= 0) & (r < GRID_ROWS), (c >= 0) & (c < COLUMNS)
    sampled = []
    for source in (anatomy.labels, anatomy.region):
        target = np.zeros(volume.shape, dtype=np.uint8)
        target[np.ix_(keep_j, keep_r, keep_c)] = source[np.ix_(j[keep_j], r[keep_r], c[keep_c])]
        sampled.append(target)
    return sampled[0], sampled[1]


def projected_masks(labels: np.ndarray, region: np.ndarray) -> dict[str, np.ndarray]:
    """The body, each target's organ and each target's body segment (REGIONS), projected."""
    from mimir.imaging.projection import project_mask
    from mimir.synth.labels import Region, Tissue

    body = (labels != Tissue.BACKGROUND) & (labels != Tissue.BED)
    masks = {"body": project_mask(body)}
    organs = {target: np.isin(labels, [Tissue[name] for name in names]) for target, names in TARGETS.items()}
    for target, organ in organs.items():
        masks[target] = project_mask(organ)
    for target, names in REGIONS.items():  # the organ's own labels too: the top of the thigh muscles lies in the trunk segment
        masks[f"{target} region"] = project_mask(organs[target] | (body & np.isin(region, [Region[name] for name in names])))
    for name, names in SEGMENTS.items():
        masks[f"segment {name}"] = project_mask(body & np.isin(region, [Region[segment] for segment in names]))
    return masks


def organ_level_region(masks: dict[str, np.ndarray], target: str) -> np.ndarray:
    """The target's region (REGIONS) in the image rows of the organ only, with the organ: for thigh
    muscle, the thighs from the femoral heads to the knees (muscle, fat and bone), without the
    legs below the knees that the region also holds."""
    organ = masks[target]
    rows = np.flatnonzero(organ.any(axis=1))
    level = np.zeros_like(organ)
    if rows.size:
        level[rows[0]: rows[-1] + 1] = True
    return organ | (masks[f"{target} region"] & level)


def exclusive_regions(masks: dict[str, np.ndarray], target: str) -> dict[str, np.ndarray]:
    """The organ, then each body segment (SEGMENTS) without the pixels named before it, the rest
    of the body and outside it: every pixel in exactly one."""
    taken = masks[target].copy()
    regions = {"organ": taken.copy()}
    for name in [*(f"segment {segment}" for segment in SEGMENTS), "body"]:
        own = masks[name] & ~taken
        regions[name.removeprefix("segment ") if name != "body" else "rest of body"] = own
        taken |= own
    regions["outside body"] = ~taken
    return regions


def saliency_by_segment(saliency_map: np.ndarray, masks: dict[str, np.ndarray], target: str) -> dict[str, float]:
    """Shares of the map's saliency on the organ, then on each body segment (SEGMENTS, pixels not
    counted before), the rest of the body and outside it: they add up to 1. The body mask as the
    map gives each segment's share of the body's area."""
    from mimir.explain.sanity import mask_share

    return {name: mask_share(saliency_map, region) for name, region in exclusive_regions(masks, target).items()}


#: Rows of the 256-row image above the organ's top that count as "just above it": one Grad-CAM cell
#: of a module on input pooled 2x (its last stage is 4 x 4).
NEAR_ROWS = 64


def trunk_just_above(saliency_map: np.ndarray, masks: dict[str, np.ndarray], target: str) -> tuple[float, float]:
    """Saliency share and body-area share of the trunk pixels (not organ, not legs) in the NEAR_ROWS
    rows above the organ's topmost row: is the trunk's saliency the hip next to the thighs?"""
    from mimir.explain.sanity import mask_share

    organ = masks[target]
    trunk = masks["segment trunk"] & ~organ & ~masks["segment legs"]
    rows = np.flatnonzero(organ.any(axis=1))
    if rows.size == 0:
        return float("nan"), float("nan")
    band = np.zeros_like(organ)
    band[max(0, rows[0] - NEAR_ROWS): rows[0]] = True
    near = trunk & band
    return mask_share(saliency_map, near), float(near.sum() / masks["body"].sum())


def anatomy_scores(maps: list[tuple[np.ndarray, dict[str, np.ndarray]]], target: str) -> dict[str, float]:
    """Maps of held-out exams (each with its exam's projected masks) against the anatomy: mean
    shares inside the organ and the body, the ratio to the organ's area share (mean over exams
    of each, then their ratio) and its median per exam; where the rest lies (segments, the trunk
    just above the organ); for thigh muscle the same ratio on the legs (region) and the thighs."""
    from mimir.explain.sanity import mask_share

    inside, area, body_share, by_segment, segment_area, near_trunk = ([] for _ in range(6))
    regions: dict[str, tuple[list[float], list[float]]] = {"region": ([], []), "thighs": ([], [])}
    for saliency_map, exam_masks in maps:
        organ, body = exam_masks[target], exam_masks["body"]
        inside.append(mask_share(saliency_map, organ))
        body_share.append(mask_share(saliency_map, body))
        area.append(organ.sum() / body.sum())
        by_segment.append(saliency_by_segment(saliency_map, exam_masks, target))
        segment_area.append(saliency_by_segment(body.astype(np.float64), exam_masks, target))
        near_trunk.append(trunk_just_above(saliency_map, exam_masks, target))
        if target in REGIONS:
            for name, region in (("region", exam_masks[f"{target} region"]), ("thighs", organ_level_region(exam_masks, target))):
                regions[name][0].append(mask_share(saliency_map, region))
                regions[name][1].append(region.sum() / body.sum())
    scores = {
        "exams": len(inside), "inside_share": float(np.nanmean(inside)), "area_share": float(np.mean(area)),
        "ratio": float(np.nanmean(inside) / np.mean(area)),
        "ratio_per_exam_median": float(np.nanmedian(np.array(inside) / np.array(area))),
        "body_share": float(np.nanmean(body_share)),
        **{f"on {name}": value for name, value in pd.DataFrame(by_segment).mean().items() if name != "organ"},
        **{f"area {name}": value for name, value in pd.DataFrame(segment_area).mean().items() if name not in ("organ", "outside body")},
        f"on trunk {NEAR_ROWS} rows above": float(np.nanmean([share for share, _ in near_trunk])),
        f"area trunk {NEAR_ROWS} rows above": float(np.nanmean([area for _, area in near_trunk])),
    }
    for name, (region_inside, region_area) in regions.items():
        if region_inside:
            scores |= {f"{name}_inside_share": float(np.nanmean(region_inside)), f"{name}_area_share": float(np.mean(region_area)),
                       f"{name}_ratio": float(np.nanmean(region_inside) / np.mean(region_area))}
    return scores


def held_out_accuracy(index: pd.DataFrame, truth: pd.DataFrame, target: str) -> dict:
    """How good the explained module is: a map of a module that learnt nothing says nothing."""
    rows = index.dropna(subset=["mean"])
    true = truth.set_index(truth["eid"].astype(str) + "_20201_2_0")[target].reindex(rows["exam"]).to_numpy(dtype=float)
    mean, low, high = (rows[column].to_numpy(dtype=float) for column in ("mean", "low", "high"))
    return {
        "exams": len(rows), "pearson_r": round(float(np.corrcoef(mean, true)[0, 1]), 3),
        "mae": round(float(np.mean(np.abs(mean - true))), 4), "true_sd": round(float(np.std(true)), 4),
        "inside_95": int(np.sum((true >= low) & (true <= high))),
    }


def markdown(table: pd.DataFrame) -> str:
    """A markdown table (pandas' own needs the optional tabulate package)."""
    cells = [[f"{value:.3f}" if isinstance(value, float) else str(value) for value in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def dice(first: np.ndarray, second: np.ndarray) -> float:
    return float(2 * (first & second).sum() / max(first.sum() + second.sum(), 1))


def method_layers(layers: list[str]) -> list[tuple[str, str]]:
    """(method, layer) pairs to measure: each Grad-CAM method at every layer asked for."""
    from mimir.explain import DEFAULT_LAYER
    from mimir.explain.maps import LAYER_METHODS

    return [(method, layer) for method in METHODS for layer in (layers if method in LAYER_METHODS else [DEFAULT_LAYER])]


def randomisation_cascade(module: Path, images: np.ndarray, bodies: list[np.ndarray], device: str,
                          pairs: list[tuple[str, str]]) -> list[dict]:
    import torch

    from mimir.explain.maps import saliency
    from mimir.explain.pipeline import method_label
    from mimir.explain.sanity import CASCADE, randomised, rank_correlation
    from mimir.inference.modules import load_module

    network = load_module(module, device).network
    network_input = torch.from_numpy(images).float().to(device)
    rows = []
    for method, layer in pairs:
        trained = saliency(network, 0, network_input, method, layer=layer).numpy()
        for depth in range(1, len(CASCADE) + 1):
            random_maps = saliency(randomised(network, depth), 0, network_input, method, layer=layer).numpy()
            rows.append({
                "method": method_label(method, layer), "randomised": "+".join(CASCADE[:depth]),
                "rho_body": float(np.mean([rank_correlation(a[m], b[m]) for a, b, m in zip(trained, random_maps, bodies, strict=True)])),
                "rho_image": float(np.mean([rank_correlation(a, b) for a, b in zip(trained, random_maps, strict=True)])),
            })
    return rows


def main() -> None:
    from mimir.explain import DEFAULT_LAYER, GRADCAM_LAYERS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--cascade-exams", type=int, default=8, help="held-out exams of the randomisation cascade")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--thigh-muscle-sd", type=float, default=0.0,
                        help="generate the cohort with thigh muscle varying independently of body size (mimir synth --thigh-muscle-sd)")
    parser.add_argument("--config", default="cpu-small", help="a shipped configuration name or a TOML file")
    parser.add_argument("--input-pool", type=int, help="the configuration's input_pool replaced (1: full 256 x 256 input, 8 x 8 last stage)")
    parser.add_argument("--batch-size", type=int, help="the configuration's batch_size replaced")
    parser.add_argument("--autocast", choices=["float32", "bfloat16", "auto"],
                        help="the configuration's autocast replaced (float32 on a CPU without native bfloat16: emulated it "
                        "ran 14x slower here)")
    parser.add_argument("--layers", nargs="+", default=[DEFAULT_LAYER], choices=GRADCAM_LAYERS,
                        help="residual stages of the Grad-CAM methods to measure (mimir explain --layer)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    overrides = {name: value for name, value in (("input_pool", args.input_pool), ("batch_size", args.batch_size),
                                                  ("autocast", args.autocast)) if value is not None}

    from mimir.devices import resolve_device
    from mimir.explain import ExplainOptions, explain
    from mimir.explain.aggregate import image_body_mask
    from mimir.explain.pipeline import method_label
    from mimir.imaging.cache import image_path, load_image

    device = resolve_device(args.device)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    cache, truth = build_cohort(args.out, args.n, args.seed, args.workers, args.thigh_muscle_sd)
    timings["cohort and compression"] = time.perf_counter() - started
    eids = sorted(int(eid) for eid in truth["eid"])
    held_out, train_eids = eids[: args.held_out], eids[args.held_out:]
    stems = [f"{eid}_20201_2_0" for eid in held_out]
    for eid in train_eids:  # compressed already; only the held-out exams' zips are read again (~125 MB each)
        (args.out / "cohort" / f"{eid}_20201_2_0.zip").unlink(missing_ok=True)

    started = time.perf_counter()
    masks = {stem: projected_masks(*anatomy_on_fused_grid(args.out / "cohort" / f"{stem}.zip", args.seed, eid, args.thigh_muscle_sd))
             for stem, eid in zip(stems, held_out, strict=True)}
    images = {stem: load_image(image_path(cache, stem)) for stem in stems}
    geometry_dice = [dice(masks[stem]["body"], image_body_mask(images[stem])) for stem in stems]
    timings["label projection"] = time.perf_counter() - started
    print(f"projected body labels vs image body outline: Dice mean {np.mean(geometry_dice):.3f}, min {min(geometry_dice):.3f}", flush=True)

    results: list[dict] = []
    accuracy: dict[str, dict] = {}
    cascade: dict[str, list[dict]] = {}
    for target in args.targets:
        started = time.perf_counter()
        module = train_module(args.out, cache, truth, target, train_eids, args.config, args.iterations, device, **overrides)
        timings[f"train {target}"] = time.perf_counter() - started
        print(f"trained {target} in {timings[f'train {target}']:.0f} s", flush=True)
        for method, layer in method_layers(args.layers):
            label = method_label(method, layer)
            started = time.perf_counter()
            result = explain([image_path(cache, stem) for stem in stems], [module], args.out / "explain" / target,
                             ExplainOptions(method=method, layer=layer, device=device, aggregate=True))
            timings[f"explain {target} {label}"] = time.perf_counter() - started
            accuracy[target] = held_out_accuracy(result.index, truth, target)
            maps = [(np.load(result.folder / row.map), masks[row.exam]) for row in result.index.itertuples()]
            results.append({"target": target, "method": label, **anatomy_scores(maps, target)})
        chosen = stems[: args.cascade_exams]
        started = time.perf_counter()
        cascade[target] = randomisation_cascade(
            module, np.stack([images[stem] for stem in chosen]), [image_body_mask(images[stem]) for stem in chosen], device,
            method_layers(args.layers))
        timings[f"cascade {target}"] = time.perf_counter() - started
        summary = {
            "n": args.n, "held_out": args.held_out, "seed": args.seed, "config_overrides": overrides, "thigh_muscle_sd": args.thigh_muscle_sd, "iterations": args.iterations, "device": device,
            "geometry_dice_min": min(geometry_dice), "geometry_dice_mean": float(np.mean(geometry_dice)),
            "results": results, "accuracy": accuracy, "cascade": cascade, "timings_s": {key: round(value, 1) for key, value in timings.items()},
        }
        (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")  # after each target: a cut-short run keeps what it measured
        print(f"{target} on the held-out exams: {accuracy[target]}", flush=True)
        print(markdown(pd.DataFrame([row for row in results if row["target"] == target])), flush=True)
        print(f"randomisation cascade, {target}:\n{markdown(pd.DataFrame(cascade[target]))}", flush=True)

    print(f"device {device}; projected body labels vs image body outline: Dice mean {np.mean(geometry_dice):.3f}, min {min(geometry_dice):.3f}")
    print(markdown(pd.DataFrame(results)))
    print("\n".join(f"{key}: {value:.0f} s" for key, value in timings.items()))


if __name__ == "__main__":
    main()
