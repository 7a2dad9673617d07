"""Which of the body's parameters move a trained module's prediction, and through which pixels?

The counterfactual twins (explain_counterfactual.py) change one parameter and find the thigh
muscle module reading that change in the thighs, while its saliency maps put a quarter to a half
of their weight on the trunk. Real exams differ in every parameter at once. This benchmark asks
whether the module reads the cohort's own variation, all of it, from the trunk: for each numeric
body parameter of the synthetic generator (PARAMETERS) it makes twins of held-out subjects of the
anatomy benchmark's cohort with that parameter one cohort standard deviation higher (relative:
the parameter's sd over mean across the cohort's subjects, every other draw the same), and
measures the true change of the target, the module's predicted change, and where the module reads
it (integrated gradients along the straight path from the subject's image to the twin's, summed
per body region: explain_counterfactual.path_split). With --all-parameters the parameters of
either sign join them (SHIFTED_PARAMETERS: fat pattern, organ shapes and positions, pose, breathing,
field of view, signal), each moved by one cohort sd.

Combined over the parameters, a map faithful to the module's response to the cohort's variation
would put on region r a weight proportional to sqrt(sum over parameters of the squared
attribution to r): a subject's deviation from the cohort is a sum of independent one-sd changes
(z_p a_p,r with z_p standard normal), whose expected magnitude on r is that root sum of squares.
An approximation: parameters drawn independently, responses linear over one sd, region sums
(signed attributions cancel within a region, where a map sums magnitudes pixel by pixel). Its
shares and its ratio on the thigh muscle and on the thighs are printed against the body's area
shares, to set beside the maps' (explain_anatomy.py). The same combination pixel by pixel (the
root sum of squares over the parameters of each pixel's attribution, summed over the channels)
is a map, scored exactly as the maps are (explain_anatomy.anatomy_scores).

    python benchmarks/explain_anatomy.py --n 200 --held-out 40 --iterations 1200 \\
        --targets AtlasTotalThighMuscleVolume --thigh-muscle-sd 0.3 --out /tmp/ea_sd03
    python benchmarks/explain_parameter_sweep.py --n 200 --thigh-muscle-sd 0.3 --subjects 20 \\
        --module /tmp/ea_sd03/modules/AtlasTotalThighMuscleVolume --cache /tmp/ea_sd03/cache --out /tmp/ea_sweep_sd03

Subjects and twins are saved as they are made (out/subjects, out/twins/PARAMETER_DELTA), so a
rerun reuses them; results.json and the tables are written to --out and printed.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd
from explain_anatomy import TARGETS, anatomy_scores, exclusive_regions, markdown, organ_level_region
from explain_counterfactual import generated_exam, load_pair, path_explainer, path_pixels, save_arrays, split_by_region

#: Positive, continuous body parameters of the generator that change the anatomy or the signal
#: (SubjectParams fields; thigh_muscle is the independent thigh factor of --thigh-muscle-sd).
PARAMETERS = (
    "height_cm", "body_fat_fraction", "lean_index", "limb_muscle", "thigh_muscle", "vat_l", "breast_l",
    "liver_volume_l", "liver_fat", "kidney_volume_l", "muscle_fat", "adipose_fat", "bone_mineral",
    "sitting_ratio", "shoulder_scale", "hip_scale", "trunk_depth", "sat_anterior", "sat_posterior",
    "sat_lateral", "signal_muscle",
)


#: The generator's other numeric parameters, of either sign or near zero (fat pattern and spread,
#: organ shapes and positions, pose, breathing, field of view, signal): each is moved by one cohort
#: sd (added), where a factor cannot serve. age and bmi are left out: once drawn they change
#: no pixel (they feed only the tabular targets).
SHIFTED_PARAMETERS = (
    "android", "gynoid", "spleen_volume_l", "marrow_fat", "vat_fat_offset", "arm_fat_share", "bowel_fat",
    "trunk_squareness", "liver_elongation", "liver_left_lobe", "liver_shift_mm", "kidney_drop_mm",
    "spleen_elongation", "thigh_split", "leg_spread_mm", "x_offset_mm", "tilt_deg", "roll_deg", "fov_offset_mm",
    "arm_gap_mm", "arm_asymmetry_mm", "arm_forward_mm", "knee_lift_mm", "head_lift_mm", "lean_mm", "breath_mm",
    "trunk_wave_chest", "trunk_wave_waist", "trunk_wave_hips", "trunk_fat_shift", "vat_periphery", "vat_shift",
    "bowel_gas", "signal_liver", "signal_viscera", "signal_kidney", "signal_adipose", "signal_marrow",
)


def one_sd(n: int, seed: int, thigh_muscle_sd: float, parameters: tuple[str, ...]) -> dict[str, float]:
    """Each parameter's one-sd change over the cohort's subjects, as the generator draws them:
    relative (sd / mean, a factor 1 + it) for PARAMETERS, absolute (added) for SHIFTED_PARAMETERS."""
    from mimir.synth.cohort import draw_eids, subject_rng, thigh_muscle_factor
    from mimir.synth.subject import sample_subject

    drawn = []
    for eid in draw_eids(n, seed):
        params = sample_subject(subject_rng(seed, eid), eid)
        drawn.append({name: getattr(params, name) for name in parameters if name != "thigh_muscle"}
                     | {"thigh_muscle": thigh_muscle_factor(seed, eid, thigh_muscle_sd)})
    table = pd.DataFrame(drawn)
    return {name: float(table[name].std() / (table[name].mean() if name in PARAMETERS else 1.0)) for name in parameters}


def make_subject(out: Path, seed: int, eid: int, thigh_muscle_sd: float) -> Path:
    saved = out / "subjects" / f"{eid}.npz"
    if not saved.is_file():
        save_arrays(saved, generated_exam(out, seed, eid, thigh_muscle_sd, (), "subject", with_masks=True))
    return saved


def make_twin(out: Path, seed: int, eid: int, thigh_muscle_sd: float, parameter: str, delta: float) -> Path:
    """The subject with `parameter` scaled by 1 + delta (PARAMETERS) or moved by delta (the others)."""
    saved = out / "twins" / f"{parameter}_{delta:.4g}" / f"{eid}.npz"
    if not saved.is_file():
        change = ((parameter, delta),)
        scales, shifts = ((), change) if parameter in SHIFTED_PARAMETERS else (((parameter, 1.0 + delta),), ())
        save_arrays(saved, generated_exam(out, seed, eid, thigh_muscle_sd, scales, "twin", shifts=shifts))
    return saved


def region_areas(masks: dict[str, np.ndarray], target: str) -> dict[str, float]:
    """Each exclusive region's, and the thighs', share of the body's area."""
    body = masks["body"].sum()
    areas = {name: float(region.sum() / body) for name, region in exclusive_regions(masks, target).items() if name != "outside body"}
    return areas | {"thighs (muscle, fat, bone)": float(organ_level_region(masks, target).sum() / body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="the anatomy benchmark's cohort size (its eids)")
    parser.add_argument("--subjects", type=int, default=20, help="how many of its held-out subjects (the first eids in order)")
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--thigh-muscle-sd", type=float, default=0.3)
    parser.add_argument("--target", default="AtlasTotalThighMuscleVolume", choices=list(TARGETS))
    parser.add_argument("--parameters", nargs="+", default=list(PARAMETERS), choices=list(PARAMETERS + SHIFTED_PARAMETERS),
                        help="default: the positive ones (PARAMETERS), each scaled by one relative sd")
    parser.add_argument("--all-parameters", action="store_true",
                        help="every numeric body parameter that changes the image: PARAMETERS and SHIFTED_PARAMETERS")
    parser.add_argument("--module", type=Path, required=True, help="a module trained for --target on the cohort's other subjects")
    parser.add_argument("--cache", type=Path, required=True, help="the anatomy benchmark's image cache: the subjects must be its")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from mimir.imaging.cache import image_path, load_image
    from mimir.inference.modules import load_module
    from mimir.synth.cohort import draw_eids

    started = time.perf_counter()
    eids = sorted(draw_eids(args.n, args.seed))[: args.subjects]
    if args.all_parameters:
        args.parameters = list(PARAMETERS + SHIFTED_PARAMETERS)
    spread = one_sd(args.n, args.seed, args.thigh_muscle_sd, tuple(args.parameters))
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        subjects = [load_pair(path) for path in pool.map(partial(make_subject, args.out, args.seed, thigh_muscle_sd=args.thigh_muscle_sd), eids)]
        same = sum(np.array_equal(subject["subject_image"], load_image(image_path(args.cache, f"{eid}_20201_2_0")))
                   for eid, subject in zip(eids, subjects, strict=True))
        if same != len(eids):
            raise SystemExit(f"only {same} of {len(eids)} subjects' images are {args.cache}'s: not the module's held-out cohort")
        jobs = [(parameter, eid) for parameter in args.parameters for eid in eids]
        twin_paths = list(pool.map(partial(make_twin, args.out, args.seed), [eid for _, eid in jobs], repeat(args.thigh_muscle_sd),
                                   [parameter for parameter, _ in jobs], [spread[parameter] for parameter, _ in jobs]))
    timings = {"exams": time.perf_counter() - started}

    started = time.perf_counter()
    module = load_module(args.module, args.device)
    column = module.spec.target_names.index(args.target)
    explainer, target_mean = path_explainer(module, args.target)
    groups = parameter_groups(args.parameters)
    rows = []
    per_subject = {group: {eid: [] for eid in eids} for group in groups}
    squares = {group: {eid: np.zeros(subjects[0]["subject_image"].shape[1:]) for eid in eids} for group in groups}
    twins = dict(zip(jobs, twin_paths, strict=True))
    for parameter in args.parameters:
        splits, true_change, predicted_change = [], [], []
        for eid, subject in zip(eids, subjects, strict=True):
            twin = load_pair(twins[(parameter, eid)])
            pair = {**subject, "twin_image": twin["twin_image"]}
            means, _ = module.predict_arrays(np.stack([pair["subject_image"], pair["twin_image"]]))
            predicted_change.append(float(means[1, column] - means[0, column]))
            true_change.append(float(twin[f"twin_truth {args.target}"] - subject[f"subject_truth {args.target}"]))
            per_pixel, change, gap = path_pixels(explainer, target_mean, pair, args.device)
            split = split_by_region(per_pixel, change, gap, pair, args.target)
            splits.append(split)
            for group, members in groups.items():
                if parameter in members:
                    squares[group][eid] += per_pixel.sum(axis=0) ** 2
                    per_subject[group][eid].append(split)
        mean_split = pd.DataFrame(splits).mean()
        change = mean_split["change of the standardised mean"]
        rows.append({
            "parameter": parameter, "one sd": f"+{spread[parameter]:.4g}" if parameter in SHIFTED_PARAMETERS else f"x{1 + spread[parameter]:.4g}",
            "true change": float(np.mean(true_change)), "predicted change": float(np.mean(predicted_change)),
            "|predicted change|": float(np.mean(np.abs(predicted_change))),
            **{f"share {name.removeprefix('region: ')}": float(mean_split[name] / change) if abs(change) > 1e-9 else float("nan")
               for name in mean_split.index if name.startswith("region: ") or name.startswith("thighs")},
        })
    timings["module"] = time.perf_counter() - started
    table = pd.DataFrame(rows).sort_values("|predicted change|", ascending=False)
    combined = {group: combined_shares(per_subject[group], subjects, args.target) for group in groups}
    pixel_maps = {group: anatomy_scores([(np.sqrt(squares[group][eid]), subject["masks"])
                                         for eid, subject in zip(eids, subjects, strict=True)], args.target)
                  for group in groups}

    summary = {"n": args.n, "subjects": args.subjects, "seed": args.seed, "thigh_muscle_sd": args.thigh_muscle_sd,
               "target": args.target, "module": str(args.module), "parameters": table.to_dict(orient="records"),
               "combined": combined, "combined_pixel_map": pixel_maps, "timings_s": {key: round(value, 1) for key, value in timings.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    print(f"{len(eids)} subjects, a one-sd twin per parameter; predicted and true change of {args.target}, and where "
          "the module reads it (path integrated gradients, shares of the change):")
    print(markdown(table.drop(columns=[column for column in table.columns if column.startswith("share head")
                                       or column.startswith("share rest of body")])))
    for group in groups:
        print(f"combined over {group} (root sum of squares over the parameters, per subject, then shares):")
        print(markdown(pd.DataFrame([{"region": name, **values} for name, values in combined[group].items()])))
        print(f"combined over {group} pixel by pixel (root sum of squares over the parameters of each pixel's attribution, "
              "summed over the channels), scored as explain_anatomy scores the maps:")
        print(markdown(pd.DataFrame([pixel_maps[group]])))


def parameter_groups(parameters: list[str]) -> dict[str, set[str]]:
    """The parameters to combine: all that were swept and, when some were shifted, the scaled
    ones alone too (the default sweep's combination, for the same module)."""
    groups = {"every swept parameter": set(parameters)}
    scaled = set(parameters) & set(PARAMETERS)
    if scaled and scaled != set(parameters):
        groups["the scaled parameters (PARAMETERS) only"] = scaled
    return groups


def combined_shares(per_subject: dict[int, list[dict[str, float]]], subjects: list[dict], target: str) -> dict[str, dict[str, float]]:
    """Per region: the mean over subjects of sqrt(sum over parameters of the attribution squared)
    as a share of the exclusive regions' total, its area share and their ratio."""
    shares: dict[str, list[float]] = {}
    areas: dict[str, list[float]] = {}
    for subject, splits in zip(subjects, per_subject.values(), strict=True):
        table = pd.DataFrame(splits)
        magnitude = {name.removeprefix("region: "): float(np.sqrt((table[name] ** 2).sum()))
                     for name in table.columns if name.startswith("region: ") or name.startswith("thighs")}
        total = sum(value for name, value in magnitude.items() if not name.startswith("thighs"))
        for name, value in magnitude.items():
            shares.setdefault(name, []).append(value / total)
        for name, value in region_areas(subject["masks"], target).items():
            areas.setdefault(name, []).append(value)
    return {name: {"share": float(np.mean(values)), "area share": float(np.mean(areas[name])) if name in areas else float("nan"),
                   "ratio": float(np.mean(values) / np.mean(areas[name])) if name in areas else float("nan")}
            for name, values in shares.items()}


if __name__ == "__main__":
    main()
