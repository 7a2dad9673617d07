"""What `mimir crossval ... --explain` costs: the report with and without the cohort saliency maps.

Cross-validates one module on an existing cache (training is not what is measured: a few
iterations per fold are enough, the maps cost the same for a weak network), then times, on the
merged folder, the report alone and `explain_crossval` per method (maps from scratch: the
folder's explain/ is removed before each), and prints seconds per exam.

    python benchmarks/crossval_explain_cost.py --cache /tmp/ea/cache --targets /tmp/ea/cohort/truth.csv \
        --out /tmp/cv_cost --folds 3 --iterations 2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--targets", type=Path, required=True, help="targets table (eid, instance, target columns)")
    parser.add_argument("--target-names", nargs="+", default=["liverVolume", "AtlasTotalThighMuscleVolume"])
    parser.add_argument("--config", default="cpu-small", help="a shipped configuration name or a TOML file")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--autocast", default="float32",
                        help="training precision (float32: a CPU without native bfloat16 emulates it slowly; maps run in float32 anyway)")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "guided-gradcam", "integrated-gradients"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from mimir.explain.crossval import explain_crossval
    from mimir.learn.crossval import run_crossval
    from mimir.report.crossval_report import cohort_maps_section, write_crossval_report
    from mimir.runs.config import TrainConfig
    from mimir.runs.layout import CrossvalFolder

    config = TrainConfig.load(args.config).replace(
        modules={"cost": list(args.target_names)}, iterations=args.iterations,
        lr_milestones=[args.iterations], checkpoint_every=args.iterations, autocast=args.autocast,
    )
    started = time.perf_counter()
    run_crossval(config, args.cache, args.targets, "cost", args.out, folds=args.folds, device=args.device, baseline=None)
    timings = {"crossval (training, few iterations)": time.perf_counter() - started}
    started = time.perf_counter()
    write_crossval_report(args.out)
    timings["report without maps"] = time.perf_counter() - started
    exams = 0
    for method in args.methods:
        shutil.rmtree(CrossvalFolder(args.out).explanations, ignore_errors=True)
        started = time.perf_counter()
        maps = explain_crossval(args.out, method=method, cache=args.cache, device=args.device)
        section = cohort_maps_section(maps.figure, method=method, exams=maps.exams, folds=maps.folds, aligned=maps.aligned)
        write_crossval_report(args.out, extra_sections=[section])
        timings[f"report with {method} cohort maps"] = time.perf_counter() - started
        exams = max(maps.exams.values())
    summary = {
        "exams": exams, "targets": list(args.target_names), "folds": args.folds, "config": str(args.config),
        "device": args.device, "timings_s": {key: round(value, 1) for key, value in timings.items()},
    }
    (args.out / "explain_cost.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{exams} exams, {len(args.target_names)} targets, {args.folds} folds, config {args.config}, device {args.device}")
    for key, value in timings.items():
        per_exam = f" ({value / exams:.2f} s per exam)" if key.startswith("report with") and exams else ""
        print(f"{key}: {value:.1f} s{per_exam}")


if __name__ == "__main__":
    main()
