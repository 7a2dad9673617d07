"""`mimir crossval`: k-fold cross-validation of one module, calibration, metrics and report.

`mimir crossval run` trains the folds (all, or a subset with --fold-ids for several machines
sharing one folder) and merges once every fold is complete; `mimir crossval merge CV` combines
whatever folds are complete (all must be, unless --allow-partial). With --explain, either also
explains the out-of-fold exams with their folds' networks (`mimir.explain.crossval`) and adds the
cohort saliency maps to the report (`mimir.report.crossval_report.cohort_maps_section`): the
command composes the two, since training code never imports the report.
"""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "crossval",
        help="k-fold cross-validation: fold networks, out-of-fold predictions, calibration, metrics, report",
        description=(
            "Cross-validate one module. `run` splits subjects into stratified folds once "
            "(CV/splits.json), trains one network per fold into CV/fold_K/ (complete folds are "
            "skipped, interrupted ones resume) and fits a ridge baseline on the same folds; "
            "`merge` writes oof_predictions.csv, calibration.csv, metrics.csv, curves.csv, "
            "summary.csv and report.html. See docs/crossval.md."
        ),
    )
    actions = parser.add_subparsers(dest="crossval_action", metavar="ACTION", required=True)

    run_parser = actions.add_parser("run", help="train folds (all, or --fold-ids) and merge when all are done")
    common_flags.add_cache(run_parser, required=True, images_alias=True)
    run_parser.add_argument("--targets", required=True, help="targets CSV: eid, instance, target columns")
    run_parser.add_argument("--module", required=True, help="bodycomp, organs, experimental, age, or a module of the config")
    common_flags.add_config(run_parser, detail="default: the folder's recorded config.toml")
    run_parser.add_argument("--out", required=True, help="cross-validation folder (created, or continued)")
    run_parser.add_argument("--folds", type=int, help="number of folds (default: as recorded, 10 for a new folder)")
    run_parser.add_argument("--fold-ids", help="comma-separated folds to train here, e.g. 0,1,2 (default: all)")
    common_flags.add_device(run_parser)
    common_flags.add_loader_workers(run_parser)
    common_flags.add_init(run_parser)
    run_parser.add_argument("--baseline-size", type=int, default=16, help="ridge baseline: pooled image side, 3*size^2 features (default 16)")
    run_parser.add_argument("--no-baseline", action="store_true", help="skip the ridge-regression baseline")
    run_parser.add_argument("--no-report", action="store_true", help="merge without writing report.html")
    _add_explain(run_parser)
    common_flags.add_exclude(
        run_parser, detail="the cached exams it names are left out of every fold and counted; a folder keeps the list it was started with"
    )
    common_flags.add_where_to_run(run_parser)
    run_parser.set_defaults(handler=run)

    merge_parser = actions.add_parser("merge", help="combine the complete folds of a cross-validation folder")
    merge_parser.add_argument("folder", help="cross-validation folder")
    merge_parser.add_argument("--allow-partial", action="store_true", help="merge even if some folds are missing")
    merge_parser.add_argument("--no-report", action="store_true", help="do not write report.html")
    _add_explain(merge_parser)
    common_flags.add_cache(
        merge_parser, detail="with --explain: the images of the exams (default: the cache the cross-validation ran on, "
        "as data_summary.json records it)",
    )
    common_flags.add_device(merge_parser)
    merge_parser.set_defaults(handler=run)


def _add_explain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--explain", action="store_true",
        help="add to the report each target's cohort saliency map over the out-of-fold exams, every exam "
        "explained by its own fold's network (maps in CV/explain/METHOD/, METHOD-LAYER/ for --layer below "
        "layer4; with gradcam measured 2.5 s per exam and 2 targets on a loaded 2-core CPU, see docs/explain.md)",
    )
    common_flags.add_method(parser, detail="the maps of --explain; default: gradcam")
    common_flags.add_layer(parser)


def _parse_fold_ids(text: str | None) -> list[int] | None:
    from mimir.cli import UsageError

    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise UsageError(f"--fold-ids must be comma-separated integers, got {text!r}") from error


def run(args: argparse.Namespace) -> int:
    from mimir.cli import UsageError

    if args.explain and args.no_report:
        raise UsageError("--explain adds a section to the report: drop --no-report")
    if args.explain:  # before any fold trains: integrated-gradients has no --layer
        from mimir.explain.pipeline import check_method

        check_method(args.method, args.layer)
    if args.crossval_action == "merge":
        return _merge(args)
    return _run(args)


def _merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.learn.crossval import merge_crossval

    if args.explain and args.cache is not None and not Path(args.cache).is_dir():
        raise UsageError(f"--cache {args.cache} does not exist")
    result = merge_crossval(Path(args.folder), allow_partial=args.allow_partial)
    _print_result(result, _report(result, args))
    return 0


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.cli.progress import Stages
    from mimir.learn.baseline import BaselineConfig
    from mimir.learn.crossval import run_crossval
    from mimir.learn.train import TrainProgress
    from mimir.runs.config import TrainConfig
    from mimir.runs.layout import CrossvalFolder

    out = Path(args.out)
    recorded = CrossvalFolder(out).config
    if not args.config and not recorded.is_file():
        raise UsageError(f"config file not found: {recorded} (pass --config)")
    config = TrainConfig.load(args.config or recorded)
    for flag, path in (("--cache", Path(args.cache)), ("--targets", Path(args.targets))):
        if not path.exists():
            raise UsageError(f"{flag} {path} does not exist")
    config = config.replace(**common_flags.config_overrides(args))
    baseline = None if args.no_baseline else BaselineConfig(size=args.baseline_size)
    where = common_flags.where_to_run(args, workers=1)
    with common_flags.executor_for(args, where) as executor, Stages("it", quiet=args.quiet) as stages:

        def show(fold: int, event: TrainProgress) -> None:
            loss = None if event.train_loss is None else {"loss": f"{event.train_loss:.3f}"}
            stages(f"fold {fold}", event.iteration, event.iterations, loss)

        result = run_crossval(
            config, Path(args.cache), Path(args.targets), args.module, out,
            folds=args.folds, fold_ids=_parse_fold_ids(args.fold_ids), device=args.device, progress=show,
            baseline=baseline, exclude=args.exclude,
            executor=None if where.local else executor,
        )
    if args.exclude is not None:
        print(f"{result.excluded} cached exams left out: on the exclusion list {args.exclude}")
    _print_result(result, _report(result, args))
    return 0


def _report(result, args: argparse.Namespace):  # noqa: ANN001, ANN202 - CrossvalResult and Path, imported lazily
    """The report page of a merged cross-validation (None when not merged or not wanted), with
    the cohort saliency maps when --explain asks for them."""
    if args.no_report or not result.merged:
        return None
    from mimir.report.crossval_report import cohort_maps_section, write_crossval_report

    sections = []
    if args.explain:
        from mimir.cli.progress import Stages
        from mimir.explain.crossval import explain_crossval

        with Stages("exam", quiet=args.quiet) as progress:
            maps = explain_crossval(
                result.out, method=args.method, layer=args.layer, cache=args.cache, device=args.device, progress=progress,
            )
        if maps.figure is None:
            print("no cohort maps: no validation exam could be explained (see explanations.csv)")
        else:
            print(f"cohort maps ({maps.method}) of {_exam_counts(maps.exams)} in {maps.seconds:.0f} s: {maps.figure}")
            sections.append(cohort_maps_section(maps.figure, method=maps.method, exams=maps.exams, folds=maps.folds,
                                                aligned=maps.aligned))
    return write_crossval_report(result.out, extra_sections=sections)


def _exam_counts(exams: dict[str, int]) -> str:
    counts = sorted(set(exams.values()))
    return f"{counts[0]} exams" if len(counts) == 1 else ", ".join(f"{target} {count}" for target, count in exams.items())


def _print_result(result, report) -> None:  # noqa: ANN001 - CrossvalResult and Path | None, imported lazily
    done = ", ".join(map(str, result.completed)) or "none"
    if not result.merged:
        missing = ",".join(map(str, result.missing))
        print(f"folds complete: {done}; still missing: {missing}. Run them (--fold-ids {missing}), then `mimir crossval merge {result.out}`")
        return
    print(f"merged folds {done} of {result.folds} into {result.out}")
    for path in (result.oof_predictions, result.calibration, result.metrics_path, result.summary, report):
        if path is not None:
            print(f"  {path}")
