"""`mimir train`: train one module's mean-variance network on the image cache."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a mean-variance ResNet for one module on cached images and a targets table",
        description=(
            "Train one module's network. Every hyperparameter comes from the TOML config "
            "(`mimir config show paper`); the run folder receives config.toml, data_summary.json, "
            "standardization.json, checkpoints/, history.csv, weights.safetensors and run.json. "
            "An interrupted run continues with --resume. --init MODULE fine-tunes a module: its "
            "backbone, and the final-layer rows of the targets both modules share (docs/finetune.md)."
        ),
    )
    common_flags.add_cache(parser, required=True, images_alias=True)
    parser.add_argument("--targets", required=True, help="targets CSV: eid, instance (optional, default 2), target columns")
    parser.add_argument("--module", required=True, help="bodycomp, organs, experimental, age, or a module of the config")
    common_flags.add_config(parser, detail="optional with --resume: the run's own config.toml")
    parser.add_argument("--out", required=True, help="run folder to create (or to continue with --resume)")
    common_flags.add_init(parser)
    common_flags.add_device(parser)
    common_flags.add_loader_workers(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    common_flags.add_exclude(parser, detail="the cached exams it names are left out of training and counted")
    parser.add_argument(
        "--validation", metavar="FILE",
        help="a CSV of exams held out of training and validated on (eid, optional instance, default 2): "
        "val_predictions.csv holds their predictions, and `mimir module build --images` sets the "
        "out-of-distribution flag's threshold on them (docs/ood.md)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.cli.progress import start_progress
    from mimir.learn.train import TrainProgress, train
    from mimir.runs.config import TrainConfig
    from mimir.runs.layout import RunFolder

    out = Path(args.out)
    config_source = args.config or (RunFolder(out).config if args.resume else None)
    if config_source is None:
        raise UsageError("--config is required (e.g. --config paper; `mimir config list` shows the shipped ones)")
    if not args.config and not RunFolder(out).config.is_file():
        raise UsageError(f"config file not found: {config_source}")
    config = TrainConfig.load(config_source)
    for flag, path in (("--cache", Path(args.cache)), ("--targets", Path(args.targets))):
        if not path.exists():
            raise UsageError(f"{flag} {path} does not exist")
    config = config.replace(**common_flags.config_overrides(args))

    with start_progress(f"train {args.module}", config.iterations, "it", quiet=args.quiet) as progress:

        def show(event: TrainProgress) -> None:
            postfix = {"lr": f"{event.learning_rate:.1e}"}
            if event.train_loss is not None:
                postfix["loss"] = f"{event.train_loss:.3f}"
            if event.val_loss is not None:
                postfix["val"] = f"{event.val_loss:.3f}"
            progress.show(event.iteration, postfix)

        train_ids, val_ids = _validation_split(Path(args.targets), args.validation)
        result = train(
            config, Path(args.cache), Path(args.targets), args.module, out, train_ids=train_ids, val_ids=val_ids,
            device=args.device, resume=args.resume, progress=show, exclude=args.exclude,
        )
    final = result.history.iloc[-1] if len(result.history) else None
    loss = f"; final train loss {final.train_loss:.4f}" if final is not None else ""
    print(f"trained {args.module}: {result.iterations} iterations in {result.seconds:.1f} s{loss}; run folder {result.run_dir}")
    if args.exclude is not None:
        print(f"{result.excluded} cached exams left out: on the exclusion list {args.exclude}")
    return 0


def _validation_split(targets: object, validation: str | None) -> tuple[object, object]:
    """(training exams, validation exams) as tables of eid and instance: the targets table's exams
    less those of `validation`; (None, None) without a validation file (every exam trains)."""
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.learn.dataset import read_targets

    if validation is None:
        return None, None
    if not Path(validation).is_file():
        raise UsageError(f"--validation {validation} does not exist")
    held = read_targets(Path(validation))[["eid", "instance"]].drop_duplicates()
    every = read_targets(targets)[["eid", "instance"]]  # type: ignore[arg-type]
    keys = set(zip(held["eid"], held["instance"], strict=True))
    kept = [key not in keys for key in zip(every["eid"], every["instance"], strict=True)]
    return every[kept], held
