"""`mimir module`: build a module from a training run, import a published one, describe one."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "module",
        help="build, import and describe inference modules (module.json + weights.safetensors)",
        description=(
            "A MIMIR module is a folder (or .zip) holding module.json and weights.safetensors: one "
            "network with its targets, units, standardisation, calibration and cross-validation metrics."
        ),
    )
    actions = parser.add_subparsers(dest="module_action", metavar="ACTION", required=True)

    build = actions.add_parser(
        "build",
        help="a module from a training run (and its cross-validation folder for calibration)",
        description="Package a finished training run as a module; calibration factors, metrics and "
        "the sd percentile for the uncertainty flag come from the cross-validation folder.",
    )
    build.add_argument("--run", required=True, help="training run folder (weights.safetensors, standardization.json, config.toml)")
    build.add_argument("--crossval", help="cross-validation folder (calibration.csv, metrics.csv, oof_predictions.csv)")
    build.add_argument("--out", required=True, help="module folder to write (or a path ending in .zip)")
    build.add_argument("--name", help="module name (default: the run's module)")
    build.add_argument(
        "--images", metavar="CACHE",
        help="the image cache the run was trained on: adds the out-of-distribution description "
        "(ood.safetensors) that gives predictions ood_score and ood_flag (docs/ood.md); the run's "
        "validation exams set the flag's threshold. A run folder does not record its cache, so it is named here",
    )
    build.add_argument(
        "--ood-features", metavar="KIND",
        help="feature space of the OOD description: penultimate, stages, stages_full, image, or several "
        "joined by '+' (default stages+image, the choice docs/ood.md measures)",
    )
    common_flags.add_force(build, "the module at --out", overwrite_alias=True)
    build.set_defaults(handler=run_build)

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

    from mimir.inference.modules import build_module

    common_flags.check_replaceable([Path(args.out)], args.force)
    out = build_module(
        args.run, args.crossval, args.out, args.name, overwrite=args.force, images=args.images, ood_features=args.ood_features
    )
    print(f"module written to {out}")
    return 0


def run_import_legacy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.inference.legacy import import_legacy

    common_flags.check_replaceable([Path(args.out)], args.force)
    out = import_legacy(args.folder, args.out, args.name, overwrite=args.force)
    print(f"module written to {out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from mimir.inference.modules import inspect_module

    text, weights_ok = inspect_module(args.module)
    print(text)
    return 0 if weights_ok else 1
