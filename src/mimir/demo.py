"""The end-to-end demo: the whole product on a synthetic cohort, through the public functions.

Generate training and held-out subjects, compress the training exams, read their UK
Biobank-style reference export, cross-validate, train the final network, build a module
with the cross-validation's calibration, predict the held-out zips from scratch, and
evaluate against their complete ground truth with an HTML report. Each stage is the same
code the commands run; a rerun into the same folder resumes where the last one stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from mimir.atomic import atomic_write_text
from mimir.errors import MimirError

if TYPE_CHECKING:
    from mimir.runs.config import TrainConfig
    from mimir.targets.catalog import Target

logger = logging.getLogger(__name__)

#: The demo's module, defined in the packaged demo.toml.
DEMO_MODULE = "demo"

#: Called with (stage, done, total) as work advances; stages are the names in DemoResult.timings.
DemoProgress = Callable[[str, int, int], None]


class DemoConfigError(MimirError, ValueError):
    """Demo sizes that cannot make a cross-validation and a held-out set."""


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the training settings live in the packaged demo.toml."""

    n_train: int = 60
    n_test: int = 20
    seed: int = 2026
    folds: int = 3
    iterations: int | None = None  # None: as in demo.toml
    workers: int | None = None  # None: all cores
    device: str = "auto"
    keep_training_zips: bool = False

    def __post_init__(self) -> None:
        if self.n_train < 2 * self.folds:
            raise DemoConfigError(f"n_train={self.n_train} is too small for {self.folds} folds (need >= {2 * self.folds})")
        if self.n_test < 1 or self.folds < 2:
            raise DemoConfigError("the demo needs at least one held-out subject and two folds")


@dataclass
class DemoResult:
    out: Path
    predictions: Path
    metrics: Path
    report: Path
    crossval_report: Path | None
    module: Path
    timings: dict[str, float] = field(default_factory=dict)


def demo_training_config(iterations: int | None = None) -> TrainConfig:
    """The packaged demo.toml, optionally with fewer or more iterations (schedule scaled)."""
    from mimir.runs.config import TrainConfig

    text = resources.files("mimir").joinpath("data/demo.toml").read_text()
    config = TrainConfig.from_dict(tomllib.loads(text))
    if iterations is not None:
        config = config.replace(
            iterations=iterations,
            lr_milestones=[max(1, int(iterations * 0.8))],
            checkpoint_every=max(1, iterations // 3),
        )
    return config


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - started, 2)
    logger.info("demo: %s done in %.1f s", stage, timings[stage])


def _counting(progress: DemoProgress, stage: str, total: int) -> Callable[[object], None]:
    """A per-item callback that reports (stage, items done, total)."""
    done = iter(range(1, total + 1))
    return lambda _: progress(stage, next(done), total)


def _synthesize(config: DemoConfig, out: Path, workers: int, progress: DemoProgress) -> None:
    from mimir.synth import CohortConfig, generate_cohort

    for part, n, seed in (("train", config.n_train, config.seed), ("test", config.n_test, config.seed + 1)):
        if not (out / part / "cohort.json").is_file():
            callback = _counting(progress, f"synth {part}", n)
            generate_cohort(CohortConfig(n=n, seed=seed), out / part, workers=workers, progress=callback)


def _compress_training(config: DemoConfig, out: Path, cache: Path, workers: int, progress: DemoProgress) -> None:
    from mimir.imaging.cache import failures_path
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs

    zips = sorted((out / "train").glob("*.zip"))
    if not zips:
        return
    callback = _counting(progress, "compress", len(zips))
    summary = compress_exams(discover_inputs(zips), CompressOptions(cache=cache), workers=workers, progress=callback)
    if summary.failed:
        logger.warning("demo: %d training exams failed to compress (see %s)", summary.failed, failures_path(cache))
    if not config.keep_training_zips:
        for path in zips:
            path.unlink()


def _train_final(training: TrainConfig, cache: Path, targets: Path, run_dir: Path, device: str, progress: DemoProgress) -> None:
    from mimir.learn.train import train
    from mimir.runs.layout import RunFolder

    if not RunFolder(run_dir).weights.is_file():
        train(
            training, cache, targets, DEMO_MODULE, run_dir, device=device, resume=run_dir.exists(),
            progress=lambda step: progress("train", step.iteration, step.iterations),
        )


def run_demo(config: DemoConfig, out: Path, *, progress: DemoProgress | None = None) -> DemoResult:
    """Run every stage into `out` and return where the results are."""
    from mimir.atomic import check_can_create_folder
    from mimir.evaluation.evaluate import evaluate_predictions, write_metrics
    from mimir.inference.module_build import build_module
    from mimir.inference.modules import read_spec
    from mimir.inference.predict import PredictOptions, predict
    from mimir.inference.table import write_predictions
    from mimir.learn.crossval import run_crossval
    from mimir.parallel import default_workers
    from mimir.report.crossval_report import write_crossval_report
    from mimir.report.evaluation_report import write_evaluation_report
    from mimir.report.provenance import from_module_spec
    from mimir.targets.exports import export_to_targets, read_targets_table, write_targets_table

    out = Path(out)
    check_can_create_folder(out)  # before minutes of work, not at the first write
    out.mkdir(parents=True, exist_ok=True)
    workers = config.workers or default_workers()
    training = demo_training_config(config.iterations)
    report = progress or (lambda stage, done, total: None)
    cache, targets_path, run_dir = out / "cache", out / "targets.csv", out / "run"
    timings: dict[str, float] = {}

    with _timed(timings, "synth"):
        _synthesize(config, out, workers, report)
    with _timed(timings, "compress"):
        _compress_training(config, out, cache, workers, report)
    with _timed(timings, "targets"):
        write_targets_table(export_to_targets(out / "train" / "reference.csv", instance=2), targets_path)
    with _timed(timings, "crossval"):
        crossval = run_crossval(
            training, cache, targets_path, DEMO_MODULE, out / "crossval", folds=config.folds, device=config.device,
            progress=lambda fold, step: report(f"crossval fold {fold}", step.iteration, step.iterations),
        )
        crossval_report = write_crossval_report(crossval.out) if crossval.merged else None
    with _timed(timings, "train"):
        _train_final(training, cache, targets_path, run_dir, config.device, report)
    with _timed(timings, "module"):
        module = build_module(run_dir, out / "crossval", out / "module", name=DEMO_MODULE, overwrite=True)
    with _timed(timings, "predict"):
        table = predict(
            sorted((out / "test").glob("*.zip")), [module],
            PredictOptions(cache=out / "test_cache", device=config.device, workers=workers),
            progress=lambda stage, done, total: report(f"predict: {stage}", done, total),
        )
        predictions_path = out / "predictions.csv"
        write_predictions(table, predictions_path)
    with _timed(timings, "evaluate"):
        truth = read_targets_table(out / "test" / "truth.csv")
        metrics = evaluate_predictions(table, truth, _demo_targets(training))
        metrics_path, _ = write_metrics(metrics, out / "evaluation")
        report_path = write_evaluation_report(
            out / "evaluation", table, truth, metrics,
            title="MIMIR demo: held-out synthetic subjects against their ground truth",
            notes={"training subjects": str(config.n_train), "held-out subjects": str(config.n_test)},
            modules=[from_module_spec(read_spec(module))],
        )

    record = {"config": asdict(config), "timings_s": timings, "training": asdict(training)}
    atomic_write_text(out / "demo.json", json.dumps(record, indent=2, default=str) + "\n")
    return DemoResult(
        out=out, predictions=predictions_path, metrics=metrics_path, report=report_path,
        crossval_report=crossval_report, module=module, timings=timings,
    )


def _demo_targets(training: TrainConfig) -> list[Target]:
    from mimir.targets.catalog import get_target

    return [get_target(name) for name in training.modules[DEMO_MODULE]]
