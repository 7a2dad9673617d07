"""Where does a change of thigh muscle show in the image, and where does a trained module read it?

The anatomy benchmark (explain_anatomy.py) asks saliency maps to put at least twice the thigh
muscle's area share of their weight on the thigh muscle. This benchmark measures what a map
faithful to the image and to the module could put there. For held-out subjects of a synthetic
cohort (the anatomy benchmark's: same seed and thigh muscle sd, its first --held-out eids), each
subject's counterfactual twin is generated: one body parameter (--parameter, by default the
thigh muscle radius factor) scaled by 1 + --delta, every other draw the same
(`SubjectJob.parameter_scales`; `--parameter lean_index` changes lean mass, which grows the trunk's
core and the limbs: thigh muscle's body-size part). `--target liverVolume --parameter
liver_volume_l` does the same for the liver, whose maps pass the bar: a control of the method.
Then

1. the image: |twin - subject| per channel and view (coronal left, sagittal right), its share
   inside the projected organ mask (--target's) against the mask's share of the body area (the ratio
   a map proportional to the change would score), and the body segments the rest falls on; and
   two reasons a change inside the thighs shows outside them: the fat-fraction channel's slices
   lie through the body's centre (`slice_positions`), which larger thighs move, and each view of
   the water and fat channels is min-max scaled, so a view whose maximum lies in the thighs
   changes brightness everywhere;
2. with --module (the anatomy benchmark's trained module), the module's response: the predicted
   target for the twin minus the subject's, and the same for hybrid images, the subject's image
   with the twin's pixels in one region only (thigh muscle, the rest of the legs, the trunk, the
   rest; exclusive, as explain_anatomy.exclusive_regions) or in one channel or one view only.
   Each response as a share of the whole (hybrids need not add up: the network is not linear);
   and an additive split of the same response: integrated gradients along the straight path from
   the subject's image to the twin's (Captum's, the twin's image as input and the subject's as
   baseline), whose signed attributions add up to the change of the target's standardised mean
   (completeness), summed per region and per channel.
3. with --other-attributions (and --cache), attributions that `mimir explain` does not offer,
   scored against the anatomy as explain_anatomy scores its maps, to tell whether the maps'
   weight on the trunk belongs to one method: integrated gradients from a blurred copy of the
   image (Gaussian, sd 8 pixels), Captum's Occlusion (32-pixel patches, stride 16, zero
   baseline), expected gradients (integrated gradients from 16 training images of the cache,
   averaged; or from the 16 nearest), and the gradient projected onto directions real exams
   vary in (Anders et al., ICML 2020): the exam's local tangent space (the first singular
   vectors of its nearest training images' differences from it) or the training images' first
   principal components.

    python benchmarks/explain_anatomy.py --n 200 --held-out 40 --iterations 1200 \\
        --targets AtlasTotalThighMuscleVolume --thigh-muscle-sd 0.3 --out /tmp/ea_sd03
    python benchmarks/explain_counterfactual.py --n 200 --held-out 40 --thigh-muscle-sd 0.3 \\
        --cache /tmp/ea_sd03/cache --module /tmp/ea_sd03/modules/AtlasTotalThighMuscleVolume --out /tmp/ea_twins_sd03

The twins' zips are deleted once their images and masks are saved (out/pairs/PARAMETER_DELTA/EID.npz),
so a rerun reuses them; results_PARAMETER_DELTA.json and markdown tables are written to --out and
printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from explain_anatomy import (
    REGIONS,
    TARGETS,
    anatomy_on_fused_grid,
    anatomy_scores,
    exclusive_regions,
    markdown,
    organ_level_region,
    projected_masks,
)

if TYPE_CHECKING:
    import torch

    from mimir.inference.modules import LoadedModule

CHANNELS = ("water", "fat", "fat fraction")
VIEWS = {"coronal": slice(0, 128), "sagittal": slice(128, 256)}


def subject_image(zip_path: Path) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """The exam's (3, 256, 256) image, the fat-fraction slices' (row, column), and the maxima of
    the water and fat views' sums (coronal, sagittal), which set their min-max scaling."""
    from mimir.imaging.compress import discover_inputs
    from mimir.imaging.fusion import fuse_stations
    from mimir.imaging.projection import body_mask, build_representation, crop_bed, slice_positions
    from mimir.imaging.read import read_exam

    volume = fuse_stations(read_exam(discover_inputs([zip_path])[0]).stations)
    water, fat = crop_bed(volume.water), crop_bed(volume.fat)
    maxima = np.array([[channel.sum(axis=axis, dtype=np.float64).max() for axis in (1, 2)] for channel in (water, fat)])
    positions = slice_positions(crop_bed(body_mask(volume.water, volume.fat)))
    return build_representation(volume), (int(positions[0]), int(positions[1])), maxima


def generated_exam(out: Path, seed: int, eid: int, thigh_muscle_sd: float, scales: tuple[tuple[str, float], ...],
                   name: str, with_masks: bool = False, shifts: tuple[tuple[str, float], ...] = ()) -> dict[str, np.ndarray]:
    """One generated exam of the subject (its parameters scaled by `scales`, then moved by
    `shifts`): its image, fat-fraction slice positions, view maxima, true targets and,
    `with_masks`, its projected masks, prefixed by `name`; the zip is deleted."""
    from mimir.synth.cohort import SubjectJob, generate_subject

    folder = out / "zips" / f"{name}_{eid}"
    result = generate_subject(SubjectJob(eid, seed, 2, folder, (), False, False, thigh_muscle_sd, scales, shifts))
    zip_path = folder / result.zip_name
    image, positions, maxima = subject_image(zip_path)
    arrays = {f"{name}_image": image, f"{name}_slices": np.array(positions), f"{name}_maxima": maxima,
              **{f"{name}_truth {target}": np.array(result.truth[target]) for target in TARGETS}}
    if with_masks:
        masks = projected_masks(*anatomy_on_fused_grid(zip_path, seed, eid, thigh_muscle_sd))
        arrays |= {f"mask {key}": value for key, value in masks.items()}
    zip_path.unlink()
    folder.rmdir()
    with contextlib.suppress(OSError):  # another worker's exam may still be there
        (out / "zips").rmdir()
    return arrays


def save_arrays(saved: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Written whole or not at all (a rerun regenerates what a killed run left unfinished)."""
    saved.parent.mkdir(parents=True, exist_ok=True)
    partial = saved.with_suffix(".partial.npz")
    np.savez_compressed(partial, **arrays)
    partial.replace(saved)
    return saved


def make_pair(out: Path, seed: int, eid: int, thigh_muscle_sd: float, parameter: str, delta: float) -> Path:
    """The subject and its twin (`parameter` x (1 + delta)): images, fat-fraction slice positions,
    view maxima, the subject's projected masks (out/pairs/PARAMETER_DELTA/EID.npz); the zips are
    deleted."""
    saved = out / "pairs" / f"{parameter}_{delta:g}" / f"{eid}.npz"
    if saved.is_file():
        return saved
    arrays = generated_exam(out, seed, eid, thigh_muscle_sd, ((parameter, 1.0),), "subject", with_masks=True)
    arrays |= generated_exam(out, seed, eid, thigh_muscle_sd, ((parameter, 1.0 + delta),), "twin")
    return save_arrays(saved, arrays)


def load_pair(path: Path) -> dict:
    with np.load(path) as data:
        pair = {key: data[key] for key in data.files}
    pair["masks"] = {key.removeprefix("mask "): pair.pop(key) for key in list(pair) if key.startswith("mask ")}
    return pair


def image_change(pair: dict, target: str) -> dict[str, float]:
    """Where |twin - subject| lies: shares inside the thigh muscle, per channel and view, against
    its area; segment shares; whether the slices moved and the views' scaling changed."""
    from mimir.explain.sanity import mask_share

    change = np.abs(pair["twin_image"].astype(np.float64) - pair["subject_image"].astype(np.float64))
    masks = pair["masks"]
    organ, body = masks[target], masks["body"]
    area = organ.sum() / body.sum()
    row = {"area share": area, "all channels": mask_share(change.sum(axis=0), organ) / area}
    for index, channel in enumerate(CHANNELS):
        row[channel] = mask_share(change[index], organ) / area
        for view, columns in VIEWS.items():
            view_area = organ[:, columns].sum() / body[:, columns].sum()
            row[f"{channel}, {view}"] = mask_share(change[index][:, columns], organ[:, columns]) / view_area
    for name, region in exclusive_regions(masks, target).items():
        row[f"change on {name}"] = mask_share(change.sum(axis=0), region)
    if target in REGIONS:
        thighs = organ_level_region(masks, target)
        row["thighs' area share"] = thighs.sum() / body.sum()
        row["change on the thighs (muscle, fat, bone)"] = mask_share(change.sum(axis=0), thighs)
    row["fat-fraction slices moved (rows, columns)"] = tuple(int(v) for v in pair["twin_slices"] - pair["subject_slices"])
    relative = pair["twin_maxima"] / pair["subject_maxima"] - 1.0
    for channel_index, channel in enumerate(CHANNELS[:2]):
        for view_index, view in enumerate(VIEWS):
            row[f"{channel} {view} maximum change"] = float(relative[channel_index, view_index])
    row["true change of the target"] = float(pair[f"twin_truth {target}"] - pair[f"subject_truth {target}"])
    return row


def hybrids(pair: dict, target: str) -> dict[str, np.ndarray]:
    """The subject's image with the twin's pixels in one region, channel or view only."""
    subject, twin = pair["subject_image"], pair["twin_image"]
    images = {"subject": subject, "twin": twin}
    for name, region in exclusive_regions(pair["masks"], target).items():
        images[f"region: {name}"] = np.where(region[None], twin, subject)
    if target in REGIONS:
        images["thighs (muscle, fat, bone)"] = np.where(organ_level_region(pair["masks"], target)[None], twin, subject)
    for index, channel in enumerate(CHANNELS):
        image = subject.copy()
        image[index] = twin[index]
        images[f"channel: {channel}"] = image
    for view, columns in VIEWS.items():
        image = subject.copy()
        image[:, :, columns] = twin[:, :, columns]
        images[f"view: {view}"] = image
    return images


def module_response(module: LoadedModule, pairs: list[dict], target: str) -> pd.DataFrame:
    """Per hybrid: the mean predicted change (L) and its share of the twin's, over the pairs."""
    column = module.spec.target_names.index(target)
    responses: dict[str, list[float]] = {}
    for pair in pairs:
        images = hybrids(pair, target)
        means, _ = module.predict_arrays(np.stack(list(images.values())))
        for name, mean in zip(images, means[:, column], strict=True):
            responses.setdefault(name, []).append(float(mean - means[0, column]))
    total = float(np.mean(responses["twin"]))
    return pd.DataFrame([
        {"twin's pixels in": name, "predicted change": float(np.mean(values)), "share of the twin's": float(np.mean(values)) / total,
         "sd over pairs": float(np.std(values))}
        for name, values in responses.items() if name != "subject"
    ])


#: Integration steps of the subject-to-twin path (the completeness gap is printed; the images differ little).
PATH_STEPS = 64


def path_pixels(explainer, target_mean, pair: dict, device: str) -> tuple[np.ndarray, float, float]:
    """Integrated gradients from the subject's image to its twin's, per pixel and channel
    (standardised units), the change of the target's standardised mean and the completeness gap."""
    import torch

    from mimir.forward import network_input

    subject, twin = (network_input(torch.as_tensor(pair[name][None]), device, channels_last=False)
                     for name in ("subject_image", "twin_image"))
    attributions, gap = explainer.attribute(twin, baselines=subject, n_steps=PATH_STEPS, return_convergence_delta=True)
    with torch.no_grad():
        change = float(target_mean(twin) - target_mean(subject))
    return attributions[0].detach().cpu().double().numpy(), change, abs(float(gap[0]))


def path_split(explainer, target_mean, pair: dict, target: str, device: str) -> dict[str, float]:
    """`path_pixels` summed per region, channel and view (they add up to the change up to the
    integration error)."""
    return split_by_region(*path_pixels(explainer, target_mean, pair, device), pair, target)


def split_by_region(per_pixel: np.ndarray, change: float, gap: float, pair: dict, target: str) -> dict[str, float]:
    rows = {"change of the standardised mean": change, "completeness gap (absolute)": gap}
    rows |= {f"region: {name}": float(per_pixel.sum(axis=0)[region].sum())
             for name, region in exclusive_regions(pair["masks"], target).items()}
    if target in REGIONS:
        rows["thighs (muscle, fat, bone)"] = float(per_pixel.sum(axis=0)[organ_level_region(pair["masks"], target)].sum())
    rows |= {f"channel: {channel}": float(per_pixel[index].sum()) for index, channel in enumerate(CHANNELS)}
    rows |= {f"view: {view}": float(per_pixel[:, :, columns].sum()) for view, columns in VIEWS.items()}
    return rows


def path_explainer(module: LoadedModule, target: str):
    """The target's standardised mean and Captum's IntegratedGradients over it."""
    from captum.attr import IntegratedGradients

    from mimir.explain.maps import TargetMean

    target_mean = TargetMean(module.network, module.spec.target_names.index(target))
    return IntegratedGradients(target_mean), target_mean


def path_attribution(module: LoadedModule, pairs: list[dict], target: str, device: str) -> pd.DataFrame:
    """The share of the change of the target's standardised mean attributed to each region and
    channel by `path_split` (signed; they add up to 1 up to the integration error), averaged over
    the pairs as a ratio of means."""
    explainer, target_mean = path_explainer(module, target)
    sums: dict[str, list[float]] = {}
    for pair in pairs:
        for name, value in path_split(explainer, target_mean, pair, target, device).items():
            sums.setdefault(name, []).append(value)
    total = float(np.mean(sums["change of the standardised mean"]))
    return pd.DataFrame([
        {"attributed to": name, "mean": float(np.mean(values)),
         "share of the change": float("nan") if name in ("change of the standardised mean", "completeness gap (absolute)")
         else float(np.mean(values)) / total}
        for name, values in sums.items()
    ])


#: The local tangent space of an exam (Anders et al., ICML 2020, "Fairwashing explanations with
#: off-manifold detergent"): spanned by the first singular vectors of its nearest training images'
#: differences from it. A gradient projected onto it keeps only the sensitivity to changes that
#: real exams differ by near this one.
TANGENT_NEIGHBOURS, TANGENT_DIRECTIONS, GLOBAL_COMPONENTS = 32, 16, 64


def nearest_training_images(image: torch.Tensor, training_images: np.ndarray, count: int) -> np.ndarray:
    """The `count` training images (flattened rows) nearest the exam, Euclidean over the whole image."""
    flat = image[0].detach().cpu().double().numpy().reshape(-1)
    return training_images[np.argsort(np.linalg.norm(training_images - flat, axis=1))[:count]]


def local_tangent_space(image: torch.Tensor, training_images: np.ndarray) -> np.ndarray:
    """Orthonormal rows spanning the differences of the exam's nearest training images from it."""
    flat = image[0].detach().cpu().double().numpy().reshape(-1)
    nearest = nearest_training_images(image, training_images, TANGENT_NEIGHBOURS) - flat
    return np.linalg.svd(nearest, full_matrices=False)[2][:TANGENT_DIRECTIONS]


def principal_directions(training_images: np.ndarray) -> np.ndarray:
    """The training images' first principal directions (orthonormal rows)."""
    return np.linalg.svd(training_images - training_images.mean(0), full_matrices=False)[2][:GLOBAL_COMPONENTS]


def projected_gradient(target_mean: torch.nn.Module, image: torch.Tensor, directions: np.ndarray) -> torch.Tensor:
    """The gradient of the target's mean at the exam, projected onto the span of `directions`."""
    import torch

    inputs = image.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(target_mean(inputs).sum(), inputs)
    flat = gradient[0].detach().cpu().double().numpy().reshape(-1)
    projected = directions.T @ (directions @ flat)
    return torch.as_tensor(projected.reshape(image.shape))


def other_attributions(module: LoadedModule, pairs: list[dict], target: str, cache: Path, held_out: set[int], device: str,
                       only: str | None = None) -> pd.DataFrame:
    """Maps of the subjects' predicted target by attributions outside `mimir explain`, scored by
    explain_anatomy.anatomy_scores (|.| summed over the channels, as mimir's maps)."""
    import torch
    import torchvision.transforms.functional as TF
    from captum.attr import IntegratedGradients, Occlusion

    from mimir.explain.maps import TargetMean
    from mimir.forward import network_input
    from mimir.imaging.cache import load_image

    target_mean = TargetMean(module.network, module.spec.target_names.index(target))
    training = sorted(path for path in cache.glob("*.npy") if int(path.stem.split("_")[0]) not in held_out)
    training_images = np.stack([load_image(path) for path in training]).reshape(len(training), -1).astype(np.float64)
    image_shape = pairs[0]["subject_image"].shape

    def as_inputs(rows: np.ndarray) -> torch.Tensor:
        """Flattened training images as a batch of network inputs (float32, exact for the cache's values)."""
        return network_input(torch.as_tensor(rows.reshape(len(rows), *image_shape).astype(np.float32)), device, channels_last=False)

    references = as_inputs(training_images[np.random.default_rng(0).choice(len(training), 16, replace=False)])
    nearest_count = TANGENT_NEIGHBOURS // 2
    methods = {
        "integrated gradients from a blurred copy": lambda x: IntegratedGradients(target_mean).attribute(
            x, baselines=TF.gaussian_blur(x, [33, 33], [8.0, 8.0]), n_steps=32),
        "occlusion, 32-pixel patches": lambda x: Occlusion(target_mean).attribute(
            x, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16), baselines=0, perturbations_per_eval=64),
        "expected gradients, 16 training images": lambda x: IntegratedGradients(target_mean).attribute(
            x.expand(len(references), -1, -1, -1), baselines=references, n_steps=16, internal_batch_size=64).mean(0, keepdim=True),
    }
    components = principal_directions(training_images)
    methods |= {
        f"expected gradients, {nearest_count} nearest training images": lambda x: IntegratedGradients(target_mean).attribute(
            x.expand(nearest_count, -1, -1, -1), baselines=as_inputs(nearest_training_images(x, training_images, nearest_count)),
            n_steps=16, internal_batch_size=64).mean(0, keepdim=True),
        f"gradient on the tangent space: {TANGENT_NEIGHBOURS} nearest training images, {TANGENT_DIRECTIONS} directions":
            lambda x: projected_gradient(target_mean, x, local_tangent_space(x, training_images)),
        f"gradient on the training images' first {GLOBAL_COMPONENTS} principal components":
            lambda x: projected_gradient(target_mean, x, components),
    }
    images = [network_input(torch.as_tensor(pair["subject_image"][None]), device, channels_last=False) for pair in pairs]
    rows = []
    for name, attribute in methods.items():
        if only is not None and only not in name:
            continue
        maps = [(attribute(image)[0].abs().sum(0).detach().cpu().numpy(), pair["masks"]) for image, pair in zip(images, pairs, strict=True)]
        scores = anatomy_scores(maps, target)
        rows.append({"attribution": name, **{key: scores[key] for key in
                     ("ratio", "thighs_ratio", "inside_share", "on legs", "on trunk", "on arms", "on outside body") if key in scores}})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="the anatomy benchmark's cohort size (its eids)")
    parser.add_argument("--held-out", type=int, default=40, help="how many of its held-out subjects (the first eids in order)")
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--thigh-muscle-sd", type=float, default=0.3)
    parser.add_argument("--target", default="AtlasTotalThighMuscleVolume", choices=list(TARGETS),
                        help="the module's target whose response is measured, and whose organ mask scores it")
    parser.add_argument("--parameter", default="thigh_muscle",
                        help="the body parameter (a SubjectParams field) the twin changes: thigh_muscle (the thigh muscle "
                        "radius factor, the default), lean_index (lean mass: trunk core and limbs), limb_muscle, ...")
    parser.add_argument("--delta", type=float, default=0.1, help="the twin's parameter is (1 + delta) times the subject's")
    parser.add_argument("--module", type=Path, help="a module trained for --target on the cohort's other subjects")
    parser.add_argument("--cache", type=Path, help="the anatomy benchmark's image cache (OUT/cache): checks that each "
                        "subject's image is the one it explained")
    parser.add_argument("--other-attributions", action="store_true",
                        help="also score attributions mimir explain does not offer (needs --module and --cache)")
    parser.add_argument("--only", metavar="TEXT", help="with --other-attributions: only the methods whose name contains TEXT")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.other_attributions and (args.module is None or args.cache is None):
        parser.error("--other-attributions scores the --module's maps and takes its reference images from --cache")

    from mimir.synth.cohort import draw_eids

    started = time.perf_counter()
    eids = sorted(draw_eids(args.n, args.seed))[: args.held_out]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        paths = list(pool.map(partial(make_pair, args.out, args.seed, thigh_muscle_sd=args.thigh_muscle_sd,
                                      parameter=args.parameter, delta=args.delta), eids))
    pairs = [load_pair(path) for path in paths]
    timings = {"twins": time.perf_counter() - started}

    if args.cache is not None:
        from mimir.imaging.cache import image_path, load_image

        same = sum(np.array_equal(pair["subject_image"], load_image(image_path(args.cache, f"{eid}_20201_2_0")))
                   for eid, pair in zip(eids, pairs, strict=True))
        summary_check = f"{same} of {len(pairs)} subject images identical to {args.cache}'s"
        print(summary_check)
        if same != len(pairs):
            raise SystemExit(f"the twins' subjects are not the cohort's: {summary_check}")
    change = pd.DataFrame([image_change(pair, args.target) for pair in pairs])
    numeric = change.drop(columns=["fat-fraction slices moved (rows, columns)"])
    moved = np.array(change["fat-fraction slices moved (rows, columns)"].tolist())
    summary = {
        "n": args.n, "held_out": args.held_out, "seed": args.seed, "thigh_muscle_sd": args.thigh_muscle_sd,
        "target": args.target, "parameter": args.parameter, "delta": args.delta,
        "image_change_mean": numeric.mean().to_dict(),
        "image_change_median": numeric.median().to_dict(),
        "slices_moved_share": {"rows": float((moved[:, 0] != 0).mean()), "columns": float((moved[:, 1] != 0).mean())},
    }
    print(f"{len(pairs)} pairs; where |twin - subject| lies (ratios: share inside the {args.target} mask / its area share):")
    print(markdown(pd.DataFrame({"measure": numeric.columns, "mean": numeric.mean().values, "median": numeric.median().values})))
    print(f"fat-fraction slices moved: coronal slice (row) in {summary['slices_moved_share']['rows']:.0%} of pairs, "
          f"sagittal (column) in {summary['slices_moved_share']['columns']:.0%}")
    if args.module is not None:
        from mimir.inference.modules import load_module

        started = time.perf_counter()
        module = load_module(args.module, args.device)
        response = module_response(module, pairs, args.target)
        timings["module"] = time.perf_counter() - started
        summary["module"] = str(args.module)
        summary["response"] = response.to_dict(orient="records")
        print(markdown(response))
        started = time.perf_counter()
        attribution = path_attribution(module, pairs, args.target, args.device)
        timings["path attribution"] = time.perf_counter() - started
        summary["path_attribution"] = attribution.to_dict(orient="records")
        print(markdown(attribution))
        if args.other_attributions:
            started = time.perf_counter()
            others = other_attributions(module, pairs, args.target, args.cache, set(eids), args.device, args.only)
            timings["other attributions"] = time.perf_counter() - started
            summary["other_attributions"] = others.to_dict(orient="records")
            print(markdown(others))
    summary["timings_s"] = {key: round(value, 1) for key, value in timings.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{args.target}_{args.parameter}_{args.delta:g}.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
