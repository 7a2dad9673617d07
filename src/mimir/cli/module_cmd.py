"""`mimir module`: build a module from a training run, import a published one, recalibrate or describe one."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "module",
        help="build, import and describe inference modules (module.json + weights.safetensors)",
        description=(
            "A MIMIR module is a folder (or .zip) holding module.json and weights.safetensors: one "
            "network (or, format 2, an ensemble of member networks) with its targets, units, "
            "standardisation, calibration and cross-validation metrics."
        ),
    )
    actions = parser.add_subparsers(dest="module_action", metavar="ACTION", required=True)
    _register_build(actions)
    _register_import_legacy(actions)
    _register_calibrate(actions)
    _register_info(actions)


def _register_build(actions: argparse._SubParsersAction) -> None:
    build = actions.add_parser(
        "build",
        help="a module from a training run, several (an ensemble), or a cross-validation's folds",
        description="Package a finished training run as a module; calibration factors, metrics and "
        "the sd percentile for the uncertainty flag come from the cross-validation folder. Several "
        "--run (e.g. trained with different seeds) make an ensemble module (format 2), as does "
        "--from-crossval CV --ensemble, which packs the K fold networks of CV and calibrates with CV.",
    )
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run", action="append", metavar="RUN",
        help="training run folder (weights.safetensors, standardization.json, config.toml); repeat it to "
        "pack several networks of the same configuration and targets into one ensemble module",
    )
    source.add_argument("--from-crossval", metavar="CV", help="a finished cross-validation folder whose fold networks to pack (needs --ensemble)")
    build.add_argument("--ensemble", action="store_true", help="with --from-crossval: pack every fold network as one member")
    build.add_argument("--crossval", help="cross-validation folder (calibration.csv, metrics.csv, oof_predictions.csv)")
    build.add_argument("--out", required=True, help="module folder to write (or a path ending in .zip)")
    build.add_argument("--name", help="module name (default: the run's module)")
    build.add_argument(
        "--training-cache", metavar="CACHE",
        help="the image cache the run was trained on: adds the out-of-distribution description "
        "(ood.safetensors) that gives predictions ood_score and ood_flag (docs/ood.md); the run's "
        "validation exams set the flag's threshold. A run folder does not record its cache, so it is named here",
    )
    build.add_argument(
        "--held-out-cache", metavar="CACHE",
        help="with --training-cache: a cache of more exams of the same population that the run never "
        "trained on; they join the validation exams in setting the OOD flag's threshold (docs/ood.md)",
    )
    build.add_argument(
        "--ood-features", metavar="KIND",
        help="feature space of the OOD description: penultimate, stages, stages_full (network features), "
        "image (pooled pixels), intensity, noise, background, contrast, profile (image statistics); '+' "
        "joins kinds into one feature space, ',' makes separate blocks combined by their largest "
        "standardised distance (default stages,image,intensity,noise,background,contrast, the choice "
        "docs/ood.md measures)",
    )
    common_flags.add_force(build, "the module at --out", overwrite_alias=True)
    build.set_defaults(handler=run_build)


def _register_import_legacy(actions: argparse._SubParsersAction) -> None:
    legacy = actions.add_parser(
        "import-legacy",
        help="convert a published MIMIR module folder (snapshot.pth.tar + text files)",
        description="Convert a published module folder. The snapshot is loaded with weights_only=True "
        "(no pickle code runs). Divisors are folded into the standardisation, so variances are divided "
        "by divisor squared (the published code divides them by the divisor once).",
    )
    legacy.add_argument("folder", help="published module folder")
    legacy.add_argument("--out", required=True, help="module folder to write (or a path ending in .zip)")
    legacy.add_argument("--name", help="module name (default: the folder's name)")
    common_flags.add_force(legacy, "the module at --out", overwrite_alias=True)
    legacy.set_defaults(handler=run_import_legacy)


def _register_calibrate(actions: argparse._SubParsersAction) -> None:
    calibrate = actions.add_parser(
        "calibrate",
        help="refit a module's calibration factors on labelled exams it never trained on",
        description="Predict labelled exams that none of the module's networks trained on and refit each "
        "target's variance scale (the NLL optimum, as cross-validation does) so that its 95 % intervals "
        "fit them; weights are copied unchanged. For an ensemble built from a cross-validation (whose "
        "single-network factors make the mixture's intervals too wide) or a module used on another "
        "study. Keep these exams out of any later evaluation (docs/ensembles.md).",
    )
    calibrate.add_argument("module", help="module folder or archive")
    calibrate.add_argument("inputs", nargs="+", metavar="INPUT", help="exams, as mimir predict takes them: zips, list files or a cache folder")
    calibrate.add_argument("--reference", required=True, help="their reference values: targets table or UK Biobank export")
    calibrate.add_argument("--out", required=True, help="module folder to write (or a path ending in .zip)")
    calibrate.add_argument("--instance", type=int, default=2, help="imaging visit read from a raw export (default 2)")
    calibrate.add_argument(
        "--min-exams", type=int, default=None, metavar="N",
        help="targets with fewer reference values keep their factor (default: 20)",
    )
    common_flags.add_cache(calibrate, detail="exams not cached yet are compressed into it (default: a temporary cache)")
    common_flags.add_device(calibrate)
    common_flags.add_batch_size(calibrate, default="16 on CPU, 128 on GPU")
    common_flags.add_precision(calibrate)
    common_flags.add_force(calibrate, "the module at --out", overwrite_alias=True)
    calibrate.set_defaults(handler=run_calibrate)


def _register_info(actions: argparse._SubParsersAction) -> None:
    info = actions.add_parser(
        "info",
        help="describe a module: targets, units, calibration, metrics, checksum",
        description="Print a module's summary and check its weights against module.json (no torch "
        "needed); the exit status is 1 when the weights fail the check.",
    )
    info.add_argument("module", help="module folder or archive")
    info.set_defaults(handler=run_info)


def run_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.inference.module_build import build_ensemble, build_module_from_crossval
    from mimir.inference.modules import member_count_line, read_spec

    if args.from_crossval is not None:
        if not args.ensemble:
            raise UsageError(
                "--from-crossval packs the fold networks as an ensemble: add --ensemble (or build from a "
                "training run with --run RUN --crossval CV)"
            )
        if args.crossval is not None:
            raise UsageError("--from-crossval calibrates with that folder itself; leave out --crossval")
    elif args.ensemble:
        raise UsageError("--ensemble goes with --from-crossval CV; several --run make an ensemble by themselves")
    if args.held_out_cache is not None and args.training_cache is None:
        raise UsageError("--held-out-cache sets the OOD threshold of a description: add --training-cache CACHE")
    if args.from_crossval is not None and args.training_cache is not None:
        raise UsageError(
            "--training-cache describes one run's training images; the folds of --from-crossval were each "
            "trained on other exams: build the OOD description from a training run (--run RUN)"
        )
    common_flags.check_replaceable([Path(args.out)], args.force)
    if args.from_crossval is not None:
        out = build_module_from_crossval(args.from_crossval, args.out, args.name, ensemble=True, overwrite=args.force)
    else:
        out = build_ensemble(
            args.run, args.crossval, args.out, args.name, overwrite=args.force,
            images=args.training_cache, ood_features=args.ood_features, held_out_images=args.held_out_cache,
        )
    print(f"module written to {out}")
    print(member_count_line(read_spec(out)))
    return 0


def run_import_legacy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.inference.legacy import import_legacy

    common_flags.check_replaceable([Path(args.out)], args.force)
    out = import_legacy(args.folder, args.out, args.name, overwrite=args.force)
    print(f"module written to {out}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.inference.predict import PredictOptions
    from mimir.inference.recalibration import MIN_EXAMS, recalibrate_module

    min_exams = MIN_EXAMS if args.min_exams is None else args.min_exams
    if min_exams < 2:
        raise UsageError("--min-exams must be at least 2")
    missing = [path for path in [args.module, args.reference, *args.inputs] if not Path(path).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    common_flags.check_replaceable([Path(args.out)], args.force)
    options = PredictOptions(cache=args.cache, device=args.device, batch_size=args.batch_size, precision=args.precision)
    result = recalibrate_module(
        args.module, args.inputs, args.reference, args.out, options=options, min_exams=min_exams,
        instance=args.instance, overwrite=args.force
    )
    for target in result.targets:
        if target.skipped:
            print(f"{target.name}: unchanged ({target.skipped})")
        else:
            print(
                f"{target.name}: {target.exams} exams, calibration {target.calibration_before:.3f} -> "
                f"{target.calibration_after:.3f}; 95 % coverage on them {100 * target.coverage_before:.1f} % -> "
                f"{100 * target.coverage_after:.1f} %"
            )
    print(f"module written to {result.out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from mimir.inference.modules import inspect_module

    text, weights_ok = inspect_module(args.module)
    print(text)
    return 0 if weights_ok else 1
