"""Benchmark `mimir predict` end to end: zips -> cache -> four modules -> table.

Generates N synthetic exams and (unless --modules names real ones) the paper's four modules as
ResNet50s with random weights whose batch-norm statistics are fitted to the synthetic images
(so activations and outputs have realistic scales). Runs the prediction once as configured
(compressing every exam), then from the cache in float32 and in bfloat16 (where supported), and
prints where the time went, subjects per minute, and how far the means of the faster
precisions are from float32, in target sds.
Goals (issue 5): <= 0.08 s per subject per ResNet50 module on CPU; 1,000 subjects in 10 minutes
end to end with four modules; bfloat16 within 0.02 sd of float32.

    nice -n 10 python benchmarks/predict_speed.py --n 8 [--overlap yes|no] [--deflate 6]
    python benchmarks/predict_speed.py --zips DIR --modules body organs experimental age
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mimir.devices import DEVICE_CHOICES, PRECISIONS, cpu_supports_bfloat16
from mimir.inference.modules import ModuleSpec, Provenance, TargetSpec, save_module
from mimir.inference.predict import PredictionResult, PredictOptions, run_prediction
from mimir.network import MeanVarianceResNet
from mimir.targets.catalog import module_names, module_targets
from synthetic_cohorts import generate_complete_cohort


def synthetic_modules(folder: Path, images: np.ndarray, architecture: str) -> list[Path]:
    """The paper's four modules with random weights, batch norm fitted to `images`."""
    paths = []
    for seed, name in enumerate(module_names()):
        targets = tuple(
            TargetSpec(t.name, t.ukb_field, t.unit, t.kind, mean=10.0, sd=2.0) for t in module_targets(name)
        )
        torch.manual_seed(seed)
        network = MeanVarianceResNet(architecture, len(targets))
        for layer in network.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.momentum = None
        network.train()
        with torch.no_grad():
            network(torch.from_numpy(images).float())
        spec = ModuleSpec(name=name, architecture=architecture, targets=targets,
                          provenance=Provenance("training", notes=("benchmark: random weights",)),
                          log_var_range=(-10.0, 10.0))
        paths.append(save_module(spec, network.state_dict(), folder / name))
    return paths


def deflate_zip(job: tuple[Path, int]) -> None:
    """Rewrite a stored synthetic zip with deflate, as UK Biobank delivers them (reading then
    pays for inflating the water and fat members)."""
    import zipfile

    path, level = job
    deflated = path.with_suffix(".deflating")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(deflated, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, data, compresslevel=level)
    deflated.replace(path)


def calibration_images(zips: list[Path], cache: Path, count: int) -> np.ndarray:
    from mimir.imaging.cache import load_image
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs

    inputs = discover_inputs(zips[:count])
    compress_exams(inputs, CompressOptions(cache=cache), workers=1)
    return np.stack([load_image(path) for path in sorted(cache.glob("*.npy"))])


def report(title: str, result: PredictionResult, n: int) -> None:
    print(f"\n{title}: {n} exams on {result.device}, {result.precision}, batch {result.batch_size}, "
          f"{result.compressed} compressed, {result.failed} failed")
    print(f"  {'stage':<28}{'seconds':>9}{'s / exam':>10}")
    for stage, seconds in result.timings.items():
        print(f"  {stage:<28}{seconds:9.2f}{seconds / n:10.3f}")
    total = result.timings["total"]
    print(f"  -> {60.0 * n / total:.1f} subjects per minute "
          f"({1000 * total / n / 60:.1f} min per 1,000 subjects)")


def max_deviation_in_sd(fast: PredictionResult, reference: PredictionResult, specs: list[ModuleSpec]) -> float:
    worst = 0.0
    for spec in specs:
        for target in spec.targets:
            difference = (fast.table[target.name] - reference.table[target.name]).abs().max()
            worst = max(worst, float(difference) / target.sd)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="synthetic exams (default 8)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--zips", type=Path, help="folder of field-20201 zips to use instead")
    parser.add_argument("--modules", nargs="+", type=Path, help="real modules instead of random ResNet50s")
    parser.add_argument("--architecture", default="resnet50")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int, help="compression processes (default: all cores)")
    parser.add_argument("--deflate", type=int, metavar="LEVEL",
                        help="recompress the synthetic zips with deflate at LEVEL (1-9) first, like real ones")
    parser.add_argument("--overlap", choices=("auto", "yes", "no"), default="auto",
                        help="overlap compression with inference (auto: on a GPU only, as `mimir predict`)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        if args.zips:
            zips = sorted(args.zips.glob("*.zip"))
        else:
            from mimir.synth import CohortConfig

            started = time.perf_counter()
            zips = generate_complete_cohort(CohortConfig(n=args.n, seed=args.seed), scratch_path / "cohort").zips
            print(f"generated {len(zips)} synthetic exams in {time.perf_counter() - started:.1f} s")
        if args.deflate:
            from mimir.parallel import default_workers, map_outcomes

            started = time.perf_counter()
            for outcome in map_outcomes(deflate_zip, [(path, args.deflate) for path in zips], default_workers()):
                if not outcome.ok:
                    raise SystemExit(f"could not deflate {outcome.item[0]}: {outcome.error}")
            size = sum(path.stat().st_size for path in zips) / len(zips) / 2**20
            print(f"deflated at level {args.deflate} in {time.perf_counter() - started:.1f} s ({size:.0f} MB per zip)")
        if args.modules:
            modules = args.modules
        else:
            images = calibration_images(zips, scratch_path / "calibration", count=4)
            modules = synthetic_modules(scratch_path / "modules", images, args.architecture)
        from mimir.inference.modules import read_spec

        specs = [read_spec(path) for path in modules]
        common = PredictOptions(
            cache=scratch_path / "cache", device=args.device, batch_size=args.batch_size, workers=args.workers
        )
        overlap = {"auto": None, "yes": True, "no": False}[args.overlap]
        first = run_prediction(zips, modules, replace(common, precision=args.precision, overlap=overlap))
        mode = "compression overlapped with inference" if "compress (overlapped)" in first.timings else "compress, then predict"
        report(f"end to end (zips -> table, {mode})", first, len(zips))
        reference = run_prediction(zips, modules, replace(common, precision="float32"))
        report("from the cache, float32", reference, len(zips))
        faster = [first] if first.precision != "float32" else []
        if first.precision != "bfloat16" and (first.device.startswith("cuda") or cpu_supports_bfloat16()):
            faster.append(run_prediction(zips, modules, replace(common, precision="bfloat16")))
            report("from the cache, bfloat16", faster[-1], len(zips))
        for result in faster:
            print(f"\n{result.precision} vs float32: largest |mean difference| = "
                  f"{max_deviation_in_sd(result, reference, specs):.4f} target sd (goal <= 0.02)")


if __name__ == "__main__":
    main()
