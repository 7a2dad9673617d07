"""Saliency of a trained ensemble against the anatomy: the members' mean map vs one member's (issue 16).

Takes a finished `ensemble_synthetic.py --members-from seeds` folder (its ensemble module and
seed runs, its held-out cache) and scores, on held-out exams of the first chunk of the held-out
cohort (seed 900, up to 50 exams), the share of saliency inside the projected liver and thigh
muscles against their share of the body's area (explain_anatomy.py's scoring), for the
ensemble module (`mimir explain` averages its members' maps) and for members packed alone
(--single-members K: members 0..K-1).

    python benchmarks/explain_ensemble.py --out /tmp/ens_bn --exams 32 --single-members 5

The chunk's zips are generated again into OUT/explain_zips (the benchmark deleted them after
compressing; the generator reproduces them), the maps land in OUT/explain/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from explain_anatomy import anatomy_on_fused_grid, anatomy_scores, projected_masks
from synthetic_cohorts import chunk_finished, generate_complete_cohort

TARGETS = ("liverVolume", "AtlasTotalThighMuscleVolume")
HELD_OUT_SEED = 900  # ensemble_synthetic.py's held-out cohort; its first chunk of 50


def anatomy_shares(result, masks: dict[str, dict[str, np.ndarray]], target: str) -> dict[str, float]:
    """explain_anatomy's scores of the maps of one target: organ (and, for thigh muscle, legs and thighs) ratios."""
    rows = result.index[result.index["target"] == target]
    scores = anatomy_scores([(np.load(result.folder / row.map), masks[row.exam]) for row in rows.itertuples()], target)
    return {key: scores[key] for key in ("exams", "inside_share", "area_share", "ratio", "ratio_per_exam_median",
                                         "region_ratio", "thighs_ratio") if key in scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a finished ensemble_synthetic.py --members-from seeds folder")
    parser.add_argument("--exams", type=int, default=32, help="held-out exams scored (at most 50)")
    parser.add_argument("--methods", nargs="+", default=["guided-gradcam", "integrated-gradients"])
    parser.add_argument("--single-members", type=int, default=1, help="score members 0..K-1 alone as well")
    args = parser.parse_args()

    from mimir.explain import ExplainOptions, explain
    from mimir.imaging.cache import image_path
    from mimir.inference.module_build import build_ensemble
    from mimir.synth import CohortConfig

    zips = args.out / "explain_zips"
    if not chunk_finished(zips):
        generate_complete_cohort(CohortConfig(n=50, seed=HELD_OUT_SEED), zips, 2)
    eids = sorted(int(eid) for eid in pd.read_csv(zips / "truth.csv")["eid"].unique())[: args.exams]
    stems = [f"{eid}_20201_2_0" for eid in eids]
    masks = {stem: projected_masks(*anatomy_on_fused_grid(zips / f"{stem}.zip", HELD_OUT_SEED, eid))
             for stem, eid in zip(stems, eids, strict=True)}
    modules = {"ensemble": args.out / "ensemble_module"}
    for member in range(args.single_members):
        single = args.out / f"member{member}_module"
        if not single.exists():
            build_ensemble([args.out / "seeds" / f"seed_{member}"], None, single)
        modules[f"member {member} alone"] = single
    rows = []
    for name, module in modules.items():
        for method in args.methods:
            started = time.perf_counter()
            result = explain([image_path(args.out / "test" / "cache", stem) for stem in stems], [module],
                             args.out / "explain" / name.replace(" ", "_") / method,
                             ExplainOptions(method=method, targets=TARGETS, device="cpu", figures=False))
            seconds = time.perf_counter() - started
            for target in TARGETS:
                rows.append({"module": name, "method": method, "target": target, **anatomy_shares(result, masks, target),
                             "seconds (both targets)": round(seconds, 1)})
                print(rows[-1], flush=True)
    (args.out / "explain_ensemble.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
