"""`mimir explain`: per exam and target, where in the image the predicted mean comes from.

Composition of the prediction code, not a second inference path: the exams go through
`mimir.inference.predict.run_prediction` (the same input listing, compression into the cache,
module loading and calibrated table, in float32), so each figure's title carries exactly the
mean and 95 % interval `mimir predict` gives. The maps are then computed on each module's
`ModuleRunner` network (batch norm folded, as predictions run it) with gradients on, in batches
read by `mimir.inference.batching` from the cache.

Outputs, under `out/{method}/` (`out/{method}-{layer}/` for a Grad-CAM stage other than the
last, `method_label`): `{target}/{exam}.npy`, the float32 (256, 256) map at
the image's resolution, and `{target}/{exam}.png`, the overlay; `explanations.csv` lists every
exam and target with its prediction, files or failure. Every file is written atomically; a rerun
skips the exams whose maps and figures are all there, so an interrupted run resumes.

Ensembles: a module's map is the mean of its member networks' maps. `member_runners` is the one
place that loads a module's runner (its `networks`: one, or every member of an ensemble) and
`members_saliency` averages over every network it holds; `explain`, `image_saliency` (`mimir
show --explain`) and the cross-validation cohort maps (`mimir.explain.crossval`) all go through
both.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mimir.atomic import atomic_path, atomic_write_text, check_can_create_folder
from mimir.errors import MimirError
from mimir.explain import DEFAULT_LAYER

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from mimir.explain.aggregate import CohortMap
    from mimir.inference.modules import ModuleSpec
    from mimir.inference.runner import ModuleRunner
    from mimir.report.figure import PredictionLine

logger = logging.getLogger(__name__)

#: Images per batch of saliency maps: a backward pass holds every activation, so smaller than
#: prediction's batches (integrated gradients run INTEGRATION_STEPS such passes per batch).
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 32}
INDEX_FILE = "explanations.csv"
INDEX_COLUMNS = ("exam", "target", "module", "method", "mean", "low", "high", "unit", "map", "figure", "failure")

#: (stage, done, total) as for prediction; the stage of the maps is "explain".
ProgressCallback = Callable[[str, int, int], None]


class ExplainError(MimirError, ValueError):
    """An explanation that cannot run as asked: an unknown method or target, no exams."""


@dataclass(frozen=True)
class ExplainOptions:
    """How `explain` runs; the maps depend on `method` and `layer` only (and the float rounding of the device)."""

    #: A name of `mimir.explain.maps.METHODS`.
    method: str = "gradcam"
    #: The residual stage of the Grad-CAM methods (`mimir.explain.GRADCAM_LAYERS`); earlier stages
    #: are finer (docs/explain.md). Integrated gradients takes only the default.
    layer: str = DEFAULT_LAYER
    #: Targets to explain; None: every target of every module.
    targets: tuple[str, ...] | None = None
    #: Image cache (raw exams are compressed into it; kept); None: a temporary one, removed afterwards.
    cache: str | Path | None = None
    device: str = "auto"
    #: Images per batch; None: DEFAULT_BATCH_SIZE for the device.
    batch_size: int | None = None
    #: Compression processes; None: all cores.
    workers: int | None = None
    #: Draw each exam's overlay PNG beside its map. Off: maps only (a figure costs more than a
    #: Grad-CAM map on a CPU; cohort maps need only the maps).
    figures: bool = True
    #: Also average the normalised maps per target over the exams (`mimir.explain.aggregate`).
    aggregate: bool = False
    #: Align each exam by its body outline before averaging.
    align: bool = True


@dataclass
class ExplainResult:
    """What was written, and the index table of every exam and target."""

    folder: Path
    index: pd.DataFrame
    device: str
    computed: int = 0  # exams whose maps were computed in this run
    reused: int = 0  # exams whose maps were all there already
    cohort_maps: dict[str, CohortMap] = field(default_factory=dict)  # target -> its cohort map, with --aggregate

    @property
    def failed(self) -> int:
        return int((self.index["failure"] != "").sum()) if len(self.index) else 0


@dataclass(frozen=True)
class ExplainedTarget:
    """One target to explain: the module that predicts it and its output column."""

    module: Path
    spec: ModuleSpec
    index: int

    @property
    def name(self) -> str:
        return self.spec.targets[self.index].name


def method_label(method: str, layer: str = DEFAULT_LAYER) -> str:
    """The method as folders, index rows and figure titles name it: 'gradcam', 'gradcam-layer3'."""
    return method if layer == DEFAULT_LAYER else f"{method}-{layer}"


def check_method(method: str, layer: str = DEFAULT_LAYER) -> None:
    """`mimir.explain.maps.check_method` as an ExplainError, before any exam is touched."""
    from mimir.explain.maps import check_method as check

    try:
        check(method, layer)
    except ValueError as error:
        raise ExplainError(str(error)) from None


def map_path(folder: Path, target: str, exam: str) -> Path:
    """The .npy map of one exam and target under a method's folder."""
    return folder / target / f"{exam}.npy"


def figure_path(folder: Path, target: str, exam: str) -> Path:
    return folder / target / f"{exam}.png"


def select_targets(modules: Sequence[str | Path], targets: Sequence[str] | None) -> list[ExplainedTarget]:
    """Every (module, target) to explain, in module order; an unknown or repeated target is an error."""
    from mimir.inference.modules import read_spec
    from mimir.inference.predict import check_target_conflicts

    if not modules:
        raise ExplainError("no modules given")
    specs = [read_spec(path) for path in modules]
    check_target_conflicts(specs, [str(path) for path in modules])
    available = [
        ExplainedTarget(Path(path), spec, index)
        for path, spec in zip(modules, specs, strict=True)
        for index in range(len(spec.targets))
    ]
    if targets is None:
        return available
    by_name = {target.name: target for target in available}
    unknown = [name for name in targets if name not in by_name]
    if unknown:
        raise ExplainError(
            f"the modules do not predict {', '.join(unknown)}; they predict {', '.join(by_name)}"
        )
    return [by_name[name] for name in dict.fromkeys(targets)]


def explain(
    inputs: Sequence[str | Path],
    modules: Sequence[str | Path],
    out: str | Path,
    options: ExplainOptions | None = None,
    progress: ProgressCallback | None = None,
) -> ExplainResult:
    """Predict the exams, then write a map and an overlay per exam and target (see the module doc).

    Method, target, module and output errors are raised before any exam is compressed. An exam
    that cannot be compressed or loaded gets its failure in the index and no files.
    """
    from mimir.devices import resolve_device
    from mimir.inference.predict import PredictOptions, run_prediction

    options = options or ExplainOptions()
    check_method(options.method, options.layer)
    label = method_label(options.method, options.layer)
    explained = select_targets(modules, options.targets)
    folder = check_can_create_folder(Path(out)) / label
    device = resolve_device(options.device)
    size = options.batch_size or DEFAULT_BATCH_SIZE["cuda" if device.startswith("cuda") else "cpu"]
    if size < 1:
        raise ExplainError(f"batch size must be at least 1, got {size}")
    used_modules = list(dict.fromkeys(target.module for target in explained))
    with _cache(options.cache) as cache:
        predicted = run_prediction(
            inputs, used_modules,
            PredictOptions(cache=cache, device=device, batch_size=options.batch_size, workers=options.workers, precision="float32"),
            progress,
        )
        table = predicted.table
        usable = [exam for exam, failure in zip(table["exam"], table["failure"], strict=True) if not failure and exam in predicted.images]
        todo = [exam for exam in usable if not _all_written(folder, explained, exam, options.figures)]
        failures = _write_maps(
            todo, predicted.images, table, explained, folder, options.method, device, size, progress,
            figures=options.figures, layer=options.layer,
        )
        index = _index(table, explained, folder, label, failures)
        atomic_write_text(folder / INDEX_FILE, index.to_csv(index=False))
        result = ExplainResult(
            folder, index, device, computed=len(todo) - len(failures),
            reused=len(usable) - len(todo),
        )
        if options.aggregate:
            from mimir.explain.aggregate import write_cohort_maps

            result.cohort_maps = write_cohort_maps(index, predicted.images, folder, align=options.align)
    logger.info("explained %d exams (%d reused) with %s on %s", result.computed, result.reused, label, device)
    return result


@contextlib.contextmanager
def _cache(cache: str | Path | None) -> Iterator[Path]:
    """The cache folder, or a temporary one that lives until the maps are drawn."""
    if cache is not None:
        yield Path(cache)
        return
    with tempfile.TemporaryDirectory(prefix="mimir-explain-") as temporary:
        yield Path(temporary)


def _all_written(folder: Path, explained: Sequence[ExplainedTarget], exam: str, figures: bool) -> bool:
    return all(
        map_path(folder, target.name, exam).is_file() and (not figures or figure_path(folder, target.name, exam).is_file())
        for target in explained
    )


def _write_maps(
    exams: Sequence[str],
    images: dict[str, Path],
    table: pd.DataFrame,
    explained: Sequence[ExplainedTarget],
    folder: Path,
    method: str,
    device: str,
    batch_size: int,
    progress: ProgressCallback | None,
    *,
    figures: bool,
    layer: str = DEFAULT_LAYER,
) -> dict[str, str]:
    """Maps and figures of `exams`, module by module and batch by batch; returns exam -> load failure."""
    from mimir.inference.batching import CachedExam, iter_batches
    from mimir.inference.runner import network_input

    failures: dict[str, str] = {}
    rows = table.set_index("exam", drop=False)
    done = 0
    modules = list(dict.fromkeys(target.module for target in explained))
    total = len(exams) * len(modules)
    label = method_label(method, layer)
    for module in modules:
        runners = member_runners(module, device)
        targets = [target for target in explained if target.module == module]
        exams_left = [CachedExam(exam, images[exam]) for exam in exams if exam not in failures]
        for batch in iter_batches(exams_left, batch_size, pin_memory=device.startswith("cuda")):
            failures.update(batch.failures)
            if not batch.stems:
                continue
            network_in = network_input(batch.images, device)
            for target in targets:
                maps = members_saliency(runners, target.index, network_in, method, layer=layer)
                for position, exam in enumerate(batch.stems):
                    _write_exam(folder, target, exam, batch.images[position].numpy(), maps[position], rows.loc[exam],
                                label, figure=figures)
            done += len(batch.stems) + len(batch.failures)
            if progress is not None:
                progress("explain", done, total)
    for exam, reason in failures.items():
        logger.warning("%s could not be loaded: %s", exam, reason)
    return failures


def member_runners(module: Path, device: str) -> list[ModuleRunner]:
    """The runner whose member networks make a module's map, as prediction runs them.

    The one place a module's members are loaded: an ensemble's runner holds every member
    network (`ModuleRunner.networks`), and every map (`explain`, `image_saliency`, the
    cross-validation cohort maps) is the mean over them through `members_saliency`.
    """
    from mimir.inference.modules import load_module
    from mimir.inference.runner import ModuleRunner

    return [ModuleRunner(load_module(module, device))]


def members_saliency(
    runners: Sequence[ModuleRunner], target_index: int, network_in: torch.Tensor, method: str, *, layer: str = DEFAULT_LAYER
) -> np.ndarray:
    """The mean map over every member network of the runners, (N, H, W) float32."""
    from mimir.explain.maps import saliency

    networks = [network for runner in runners for network in runner.networks]
    total = sum(saliency(network, target_index, network_in, method, layer=layer) for network in networks)
    return (total / len(networks)).numpy().astype(np.float32)


def image_saliency(
    image: np.ndarray, modules: Sequence[str | Path], target: str, *, method: str = "gradcam", device: str = "auto",
    layer: str = DEFAULT_LAYER,
) -> np.ndarray:
    """One image's (256, 256) map of `target`'s predicted mean, as `explain` computes it, no files.

    For a figure of one exam that is already predicted (`mimir show --explain`): no second
    prediction, no cache. `image` is a cached (3, 256, 256) uint8 image.
    """
    import torch

    from mimir.devices import resolve_device
    from mimir.imaging.cache import validate_image
    from mimir.inference.runner import network_input

    check_method(method, layer)
    (explained,) = select_targets(modules, [target])
    device = resolve_device(device)
    images = torch.from_numpy(np.ascontiguousarray(validate_image(np.asarray(image))))[None]
    runners = member_runners(explained.module, device)
    return members_saliency(runners, explained.index, network_input(images, device), method, layer=layer)[0]


def _write_exam(
    folder: Path, target: ExplainedTarget, exam: str, image: np.ndarray, saliency_map: np.ndarray, row: pd.Series, method: str,
    *, figure: bool,
) -> None:
    from mimir.explain.overlay import overlay_figure, prediction_title

    with atomic_path(map_path(folder, target.name, exam)) as temporary, open(temporary, "wb") as handle:
        np.save(handle, saliency_map)
    if figure:
        overlay_figure(
            image, saliency_map, title=_exam_title(exam),
            subtitle=prediction_title(_prediction_line(target, row), method),
            path=figure_path(folder, target.name, exam),
        )


def _exam_title(exam: str) -> str:
    from mimir.imaging.cache import ExamId

    exam_id = ExamId.from_stem(exam)
    return exam if exam_id.eid is None else f"Participant {exam_id.eid}, visit {exam_id.instance}"


def _prediction_line(target: ExplainedTarget, row: pd.Series) -> PredictionLine:
    from mimir.inference.table import HIGH_SUFFIX, LOW_SUFFIX
    from mimir.report.figure import PredictionLine

    name = target.name
    return PredictionLine(
        module=target.spec.name, name=name, unit=target.spec.targets[target.index].unit,
        mean=float(row[name]), low=float(row[name + LOW_SUFFIX]), high=float(row[name + HIGH_SUFFIX]),
    )


def _index(
    table: pd.DataFrame, explained: Sequence[ExplainedTarget], folder: Path, method: str, load_failures: dict[str, str]
) -> pd.DataFrame:
    """One row per exam and target: its prediction, its files (relative to `folder`) or its failure."""
    import pandas as pd

    from mimir.inference.table import HIGH_SUFFIX, LOW_SUFFIX

    records = []
    for values in table.to_dict(orient="records"):
        exam = str(values["exam"])
        failure = str(values["failure"]) or (f"load: {load_failures[exam]}" if exam in load_failures else "")
        for target in explained:
            written = not failure and map_path(folder, target.name, exam).is_file()
            drawn = written and figure_path(folder, target.name, exam).is_file()
            records.append({
                "exam": exam, "target": target.name, "module": target.spec.name, "method": method,
                "mean": values[target.name], "low": values[target.name + LOW_SUFFIX], "high": values[target.name + HIGH_SUFFIX],
                "unit": target.spec.targets[target.index].unit,
                "map": str(map_path(folder, target.name, exam).relative_to(folder)) if written else "",
                "figure": str(figure_path(folder, target.name, exam).relative_to(folder)) if drawn else "",
                "failure": failure,
            })
    return pd.DataFrame(records, columns=list(INDEX_COLUMNS))


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "INDEX_FILE",
    "ExplainError",
    "ExplainOptions",
    "ExplainResult",
    "ExplainedTarget",
    "check_method",
    "explain",
    "figure_path",
    "image_saliency",
    "map_path",
    "member_runners",
    "members_saliency",
    "method_label",
    "select_targets",
]
