"""The flags several commands share, defined once so that a name always means one thing.

Every command adds a shared flag through the function here, never with its own
`add_argument`, and `tests/test_cli_flags.py` walks every subcommand's parser to check it:

| flag | meaning |
|---|---|
| `--cache DIR` | the image cache (`{exam}.npy`, QC tables) that `mimir compress` writes |
| `--device` | where networks run: auto, cpu, cuda, cuda:N (`mimir.devices` checks the name) |
| `--precision` | the networks' arithmetic (`mimir.devices.PRECISIONS`) |
| `--workers N` | processes that compress or generate exams in parallel |
| `--batch-size N` | images per network batch (predict, explain, module calibrate) |
| `--scheduler ADDRESS` | a running Dask scheduler that runs the batch instead (`mimir.cluster`) |
| `--cluster KIND`, `--jobs N` | a Dask cluster started on a batch system (dask-jobqueue), N jobs |
| `--cores`, `--memory`, `--walltime`, `--queue`, `--account`, `--job-extra` | that cluster's jobs, over Dask's configuration |
| `--loader-workers N` | DataLoader processes that read cached images for training |
| `--force` | replace outputs that exist already (refused without it) |
| `--config` | a training configuration: a shipped name (`mimir config list`) or a TOML file |
| `--exclude FILE` | eids to leave out (the list of known imaging artefacts) |
| `--method` | the saliency method of a map (`mimir.explain.METHOD_NAMES`) |
| `--layer` | the residual stage of a Grad-CAM map (`mimir.explain.GRADCAM_LAYERS`) |
| `-q`, `-v` | quiet, verbose: before or after the subcommand |

Renamed flags keep their old spelling for one release as hidden aliases (not in `--help`);
using one logs a warning naming the new flag (`warn_renamed_flags`, called by `mimir.cli.main`).
Nothing here imports numpy or torch: `mimir --help` builds every parser.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from mimir.cluster import CLUSTER_KINDS, ClusterRequest, DaskExecutor, WhereToRun, open_executor
from mimir.devices import DEVICE_CHOICES, PRECISIONS
from mimir.errors import MimirError
from mimir.explain import DEFAULT_LAYER, GRADCAM_LAYERS, METHOD_NAMES
from mimir.parallel import Executor, Part

logger = logging.getLogger(__name__)

#: Where a parse records the old spellings it met, as (old, new) pairs.
RENAMED_DEST = "renamed_flags"

#: The first words of each shared flag's help: the meaning a test holds every command to.
MEANINGS = {
    "--cache": "image cache folder ({exam}.npy and QC tables, as `mimir compress` writes)",
    "--device": "where the networks run: auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N",
    "--precision": "network arithmetic",
    "--workers": "processes that compress or generate exams in parallel",
    "--batch-size": "images per network batch",
    "--loader-workers": "DataLoader processes that read cached images for training",
    "--force": "replace outputs that exist already",
    "--config": "training configuration: a shipped name (see `mimir config list`) or a TOML file",
    "--exclude": "eids to leave out, e.g. UK Biobank's list of exams with imaging artefacts",
    "--method": (
        "saliency method: gradcam (Grad-CAM on the last residual stage: regions), guided-gradcam "
        "(guided backpropagation times Grad-CAM: pixel detail) or integrated-gradients (from a black "
        "image: attributions that add up to the prediction but follow the image more than the module; "
        "docs/explain.md)"
    ),
    "--layer": "residual stage of gradcam and guided-gradcam",
    "--init": "initial weights, overriding the config's init: imagenet, scratch, a weights file, or a MIMIR module to fine-tune from",
    "--freeze": "parts of the initial network kept fixed, overriding the config's freeze",
    "--scheduler": "run on the Dask scheduler at this address (e.g. tcp://10.0.0.5:8786) instead of local processes",
    "--cluster": "start a Dask cluster on this batch system (dask-jobqueue) or on this machine (local), and run there",
    "--jobs": "batch jobs (workers for local) of --cluster",
    "--cores": "cores per job of --cluster",
    "--memory": "memory per job of --cluster, e.g. 16GB",
    "--walltime": "time limit per job of --cluster, e.g. 04:00:00",
    "--queue": "queue (SLURM partition) for the jobs of --cluster",
    "--account": "account charged for the jobs of --cluster",
    "--job-extra": "one more directive in the job script of --cluster, e.g. '--gres=gpu:1' (repeatable)",
    "--part": "process only part K of N of the inputs (K/N, 0-based: 0/4 ... 3/4), chosen by exam id",
    "--verbose": "log progress details (-vv: debug)",
    "--quiet": "no progress bars; only warnings and errors",
}

#: What `--exclude` reads, said once for every command's help and the README.
EXCLUDE_FORMATS = (
    "a text file with one eid per line (blank lines and lines starting with # ignored), or a "
    "CSV/TSV table with a column named eid (and optionally instance, to leave out that visit only)"
)


class _RenamedFlag(argparse.Action):
    """An old spelling of a renamed flag: parsed as the new flag is, hidden from `--help`, and
    recorded so that the command warns (the one place with logging configured is `main`)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, target: argparse.Action, **_: object) -> None:
        super().__init__(
            option_strings, target.dest, nargs=target.nargs, const=target.const, type=target.type,
            choices=target.choices, default=argparse.SUPPRESS, help=argparse.SUPPRESS, metavar=target.metavar,
        )
        self.target = target

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, option_string: str | None = None
    ) -> None:
        new = self.target.option_strings[-1]
        renamed = [*getattr(namespace, RENAMED_DEST, ()), (option_string, new)]
        setattr(namespace, RENAMED_DEST, renamed)
        self.target(parser, namespace, values, new)


def add_renamed(container: argparse._ActionsContainer, old: str, target: argparse.Action) -> argparse.Action:
    """`old` as a hidden second spelling of the flag `target` (kept one release after a rename)."""
    return container.add_argument(old, action=_RenamedFlag, target=target)


def warn_renamed_flags(args: argparse.Namespace) -> None:
    """One warning per old spelling used, naming the flag that replaces it."""
    for old, new in dict.fromkeys(getattr(args, RENAMED_DEST, ())):
        logger.warning("%s is now called %s; the old name will be removed in the next release", old, new)


def _help(flag: str, detail: str | None) -> str:
    return MEANINGS[flag] + (f"; {detail}" if detail else "")


def add_cache(parser: argparse.ArgumentParser, *, required: bool = False, detail: str | None = None, images_alias: bool = False) -> None:
    """`--cache DIR`; `images_alias` keeps train's and crossval's former `--images` working."""
    if not images_alias:
        parser.add_argument("--cache", required=required, metavar="DIR", help=_help("--cache", detail))
        return
    group = parser.add_mutually_exclusive_group(required=required)
    cache = group.add_argument("--cache", metavar="DIR", help=_help("--cache", detail))
    add_renamed(group, "--images", cache)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", choices=DEVICE_CHOICES, metavar="{auto,cpu,cuda,cuda:N}", help=_help("--device", None)
    )


def add_precision(parser: argparse.ArgumentParser, *, detail: str | None = None) -> None:
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=_help("--precision", detail))


def count(text: str) -> int:
    """The argparse type of a number of things (processes, images, members): at least 1, refused
    while parsing, before any work."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_workers(parser: argparse.ArgumentParser, *, default: int | None = None) -> None:
    """`--workers N`: processes over exams. The parsed value stays None when the flag is not
    given (so a cluster can refuse it only when given); the command applies `default` (shown in
    the help; None: every core)."""
    shown = "all cores" if default is None else str(default)
    parser.add_argument("--workers", type=count, metavar="N", help=_help("--workers", f"default: {shown}"))


def add_batch_size(parser: argparse.ArgumentParser, *, default: str) -> None:
    """`--batch-size N`: images per network batch; None when not given (the device's default,
    described by `default`)."""
    parser.add_argument("--batch-size", type=count, metavar="N", help=_help("--batch-size", f"default: {default}"))


#: Where the options of --cluster come from when not given, said once for every command's help.
CLUSTER_DEFAULTS = "unset options keep the values of Dask's configuration (~/.config/dask/jobqueue.yaml)"

#: The flags of add_where_to_run that only mean something with --cluster.
_CLUSTER_OPTIONS = ("jobs", "cores", "memory", "walltime", "queue", "account", "job_extra")


def add_where_to_run(parser: argparse.ArgumentParser) -> None:
    """--scheduler, or --cluster with its jobs' resources: where a batch runs instead of this
    machine's processes (`mimir.cluster`; needs the dask extra)."""
    group = parser.add_argument_group(
        "Dask cluster",
        "Run the batch on a Dask cluster instead of local processes (needs pip install -e '.[dask]'). "
        f"Inputs and outputs must be on storage every worker sees; {CLUSTER_DEFAULTS}.",
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help=_help("--scheduler", None))
    where.add_argument("--cluster", choices=CLUSTER_KINDS, help=_help("--cluster", None))
    group.add_argument("--jobs", type=int, metavar="N", help=_help("--jobs", "default: 1"))
    group.add_argument("--cores", type=int, metavar="N", help=_help("--cores", None))
    group.add_argument("--memory", metavar="SIZE", help=_help("--memory", None))
    group.add_argument("--walltime", metavar="HH:MM:SS", help=_help("--walltime", None))
    group.add_argument("--queue", metavar="NAME", help=_help("--queue", None))
    group.add_argument("--account", metavar="NAME", help=_help("--account", None))
    group.add_argument("--job-extra", action="append", metavar="DIRECTIVE", help=_help("--job-extra", None))


class ClusterFlagError(MimirError, ValueError):
    """Options of --cluster given without --cluster."""


def where_to_run(args: argparse.Namespace, workers: int) -> WhereToRun:
    """The WhereToRun the flags of add_where_to_run ask for; cluster options without --cluster
    are misuse (they would be silently ignored)."""
    given = [f"--{name.replace('_', '-')}" for name in _CLUSTER_OPTIONS if getattr(args, name) is not None]
    if given and args.cluster is None:
        raise ClusterFlagError(f"{', '.join(given)} only apply with --cluster")
    if getattr(args, "workers", None) is not None and (args.scheduler or args.cluster):
        raise ClusterFlagError(
            "--workers counts local processes; on a Dask cluster its workers run the batch "
            "(their number: --jobs and --cores of --cluster, or the workers started for --scheduler)"
        )
    cluster = None
    if args.cluster is not None:
        cluster = ClusterRequest(
            kind=args.cluster, jobs=args.jobs if args.jobs is not None else 1, cores=args.cores, memory=args.memory,
            walltime=args.walltime, queue=args.queue, account=args.account, job_extra=tuple(args.job_extra or ()),
        )
    return WhereToRun(workers=workers, scheduler=args.scheduler, cluster=cluster)


#: The environment variable Dask reads the level of its `distributed` loggers from.
_DASK_LOG_LEVEL = "DASK_LOGGING__DISTRIBUTED"


@contextlib.contextmanager
def executor_for(args: argparse.Namespace, where: WhereToRun) -> Iterator[int | Executor]:
    """Local workers or a Dask executor, as `where` says; prints where a cluster runs and its
    dashboard link. Dask's own INFO lines (workers starting and retiring) show only with -vv:
    Dask reads its logging level from the environment when imported, here and in the worker
    processes a local cluster starts (a level the user set is kept; ours is unset on return)."""
    quiet_dask = getattr(args, "verbose", 0) < 2 and _DASK_LOG_LEVEL not in os.environ
    if quiet_dask:
        os.environ[_DASK_LOG_LEVEL] = "warning"
    try:
        with open_executor(where) as executor:
            if isinstance(executor, DaskExecutor):
                print(f"running on the Dask scheduler at {executor.client.scheduler.address}")
                if executor.dashboard:
                    print(f"dashboard: {executor.dashboard}")
            yield executor
    finally:
        if quiet_dask:
            os.environ.pop(_DASK_LOG_LEVEL, None)


def _part(text: str) -> Part:
    try:
        return Part.parse(text)
    except MimirError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


class _OldPartFlag(argparse.Action):
    """`--num-parts N` / `--part-id K`, the spelling of `--part K/N` before parts went by exam id:
    hidden, recorded as renamed, and combined into `--part` by `part_of`."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, target: argparse.Action, **_: object) -> None:
        super().__init__(option_strings, dest, type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS, metavar="N")
        self.target = target

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, option_string: str | None = None
    ) -> None:
        setattr(namespace, RENAMED_DEST, [*getattr(namespace, RENAMED_DEST, ()), (option_string, "--part")])
        setattr(namespace, self.dest, values)


def add_part(parser: argparse.ArgumentParser, *, old_spellings: bool = False) -> None:
    """`--part K/N`: a deterministic split of the inputs by exam id, for job arrays. With
    `old_spellings`, compress's former `--num-parts N --part-id K` parse into it (hidden)."""
    part = parser.add_argument(
        "--part", type=_part, metavar="K/N",
        help=_help("--part", "an exam keeps its part when inputs are added (a hash of its id)"),
    )
    if old_spellings:
        parser.add_argument("--num-parts", dest="old_num_parts", action=_OldPartFlag, target=part)
        parser.add_argument("--part-id", dest="old_part_id", action=_OldPartFlag, target=part)


def part_of(args: argparse.Namespace) -> Part | None:
    """The part the flags name: --part, or the old --num-parts/--part-id pair (0-based id)."""
    count, index = getattr(args, "old_num_parts", None), getattr(args, "old_part_id", None)
    if count is None and index is None:
        return args.part
    if args.part is not None:
        raise PartFlagError("give --part K/N alone (--num-parts and --part-id are its old spelling)")
    try:
        return Part(index or 0, count if count is not None else 1)
    except MimirError as error:
        raise PartFlagError(str(error)) from error


class PartFlagError(MimirError, ValueError):
    """--part given twice, in its new and its old spelling, or an old spelling naming no part."""


def add_loader_workers(parser: argparse.ArgumentParser) -> None:
    """`--loader-workers N`, and `--workers` in its former meaning here (train, crossval) as a
    hidden alias: in these commands it has always meant DataLoader processes."""
    loader = parser.add_argument(
        "--loader-workers", type=int, dest="loader_workers", metavar="N",
        help=_help("--loader-workers", "overrides the config's workers"),
    )
    add_renamed(parser, "--workers", loader)


def add_force(parser: argparse.ArgumentParser, what: str, *, overwrite_alias: bool = False) -> None:
    """`--force`: replace `what` when it exists; `overwrite_alias` keeps the former `--overwrite`."""
    force = parser.add_argument("--force", action="store_true", help=_help("--force", what))
    if overwrite_alias:
        add_renamed(parser, "--overwrite", force)


def add_config(parser: argparse.ArgumentParser, *, detail: str | None = None) -> None:
    parser.add_argument("--config", metavar="NAME|FILE", help=_help("--config", detail))


def add_method(parser: argparse.ArgumentParser, *, detail: str | None = None) -> None:
    """`--method`: which saliency method draws a map (default gradcam)."""
    parser.add_argument("--method", default="gradcam", choices=METHOD_NAMES, help=_help("--method", detail or "default: gradcam"))


def add_layer(parser: argparse.ArgumentParser) -> None:
    """`--layer`: the residual stage of the Grad-CAM methods (default the last)."""
    parser.add_argument(
        "--layer", default=DEFAULT_LAYER, choices=GRADCAM_LAYERS,
        help=_help("--layer", f"default: {DEFAULT_LAYER}, the last and coarsest; layer3 doubles the map's resolution; "
                   "docs/explain.md measures both"),
    )


def add_exclude(parser: argparse.ArgumentParser, *, detail: str) -> None:
    parser.add_argument("--exclude", metavar="FILE", help=_help("--exclude", f"{EXCLUDE_FORMATS}; {detail}"))


def add_init(parser: argparse.ArgumentParser) -> None:
    """`--init` and `--freeze` of train and crossval (docs/finetune.md)."""
    from mimir.runs.config import FREEZE_MODES

    parser.add_argument(
        "--init", metavar="INIT",
        help=_help("--init", "a module (folder or archive) gives its backbone and the final-layer rows of the targets both share"),
    )
    parser.add_argument(
        "--freeze", choices=FREEZE_MODES,
        help=_help("--freeze", "none: nothing; stem: conv1 and bn1; backbone: all but the final layer (batch norms keep their statistics)"),
    )


def config_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The TrainConfig fields that --init, --freeze and --loader-workers set, when given."""
    overrides: dict[str, object] = {}
    if getattr(args, "init", None):
        overrides["init"] = args.init
    if getattr(args, "freeze", None):
        overrides["freeze"] = args.freeze
    if getattr(args, "loader_workers", None) is not None:
        overrides["workers"] = args.loader_workers
    return overrides


def add_verbosity(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v/-q. On a subcommand their defaults are SUPPRESS, so `mimir -q predict ...` keeps the
    top-level value and `mimir predict ... -q` sets it: both positions work."""
    verbose_default, quiet_default = (0, False) if top else (argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="count", default=verbose_default, help=_help("--verbose", None))
    parser.add_argument("-q", "--quiet", action="store_true", default=quiet_default, help=_help("--quiet", None))


def subparsers_of(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below `parser` (subcommands and their actions), each once."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from subparsers_of(child)


def add_verbosity_everywhere(parser: argparse.ArgumentParser) -> None:
    """-v/-q on the top-level parser and on every subcommand parser, however deep."""
    add_verbosity(parser, top=True)
    for child in subparsers_of(parser):
        add_verbosity(child, top=False)


class OutputExistsError(MimirError, FileExistsError):
    """An output that exists already, to be replaced only with --force."""


def check_replaceable(outputs: Sequence[Path], force: bool, flag: str = "--out") -> None:
    """Refuse, before any work, to write over an existing output unless --force says so: a rerun
    into the same path must not silently replace hours of results."""
    existing = next((path for path in outputs if path.exists() or path.is_symlink()), None)
    if existing is not None and not force:
        raise OutputExistsError(f"{existing} exists already; pass --force to replace it, or choose another {flag}")


def add_series_patterns(parser: argparse.ArgumentParser) -> None:
    """--water-pattern and --fat-pattern, for exams whose series neither UK Biobank's
    descriptions nor ImageType mark (imaging/dixon_series.py decides with them)."""
    group = parser.add_argument_group(
        "DICOM series",
        "Water and fat series are found by UK Biobank descriptions ending _W/_F, else by ImageType "
        "values WATER/FAT or W/F (never in-phase, opposed-phase or fat-fraction images). For other exams name them here.",
    )
    group.add_argument(
        "--water-pattern", metavar="REGEX",
        help="regular expression searched in SeriesDescription that marks the water series, e.g. 'Dixon.*_W$' "
        "or '(?i)water'; replaces the built-in rules for water",
    )
    group.add_argument(
        "--fat-pattern", metavar="REGEX",
        help="the same for the fat series; replaces the built-in rules for fat",
    )


def series_patterns(args: argparse.Namespace) -> dict[str, str | None]:
    """The patterns as keyword arguments of CompressOptions and PredictOptions."""
    return {"water_pattern": args.water_pattern, "fat_pattern": args.fat_pattern}
