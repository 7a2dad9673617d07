"""The end-to-end demo: the whole product on a synthetic cohort, through the public functions.

Generate training and held-out subjects, compress the training exams, read their UK
Biobank-style reference export, cross-validate, train the final network, build a module
with the cross-validation's calibration, predict the held-out zips from scratch, and
evaluate against their complete ground truth with an HTML report. Each stage is the same
code the commands run; a rerun into the same folder resumes where the last one stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

#: Called with (stage, done, total) as work advances; stages are the names in DemoResult.timings.
DemoProgress = Callable[[str, int, int], None]


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
            raise ValueError(f"n_train={self.n_train} is too small for {self.folds} folds (need >= {2 * self.folds})")
        if self.n_test < 1 or self.folds < 2:
            raise ValueError("the demo needs at least one held-out subject and two folds")


@dataclass
class DemoResult:
    out: Path
    predictions: Path
    metrics: Path
    report: Path
    crossval_report: Path | None
    module: Path
    timings: dict[str, float] = field(default_factory=dict)


def demo_training_config(iterations: int | None = None):  # -> TrainConfig (torch import deferred)
    from mimir.learn.config import TrainConfig

    text = resources.files("mimir").joinpath("data/demo.toml").read_text()
    import tomllib

    config = TrainConfig.from_dict(tomllib.loads(text))
    if iterations is not None:
        milestone = max(1, int(iterations * 0.8))
        config = config.replace(
            iterations=iterations, lr_milestones=[milestone], checkpoint_every=max(1, iterations // 3)
        )
    return config


def _stage(timings: dict[str, float], name: str, started: float) -> None:
    timings[name] = round(time.perf_counter() - started, 2)
    logger.info("demo: %s done in %.1f s", name, timings[name])


def run_demo(config: DemoConfig, out: Path, *, progress: DemoProgress | None = None) -> DemoResult:
    """Run every stage into `out` and return where the results are."""
    from mimir.evaluation.evaluate import evaluate_predictions, write_metrics
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs
    from mimir.inference.modules import build_module
    from mimir.inference.predict import predict, write_predictions
    from mimir.learn.crossval import run_crossval
    from mimir.learn.train import train
    from mimir.parallel import default_workers
    from mimir.report.evaluation_report import write_evaluation_report
    from mimir.synth import CohortConfig, generate_cohort
    from mimir.targets.exports import export_to_targets, read_targets_table, write_targets_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = config.workers or default_workers()
    training = demo_training_config(config.iterations)
    timings: dict[str, float] = {}
    report = progress or (lambda stage, done, total: None)

    started = time.perf_counter()
    cohorts = {"train": (config.n_train, config.seed), "test": (config.n_test, config.seed + 1)}
    for part, (n, seed) in cohorts.items():
        folder = out / part
        if not (folder / "cohort.json").is_file():
            counter = iter(range(1, n + 1))
            generate_cohort(
                CohortConfig(n=n, seed=seed), folder, workers=workers,
                progress=lambda _, part=part, n=n, counter=counter: report(f"synth {part}", next(counter), n),
            )
    _stage(timings, "synth", started)

    started = time.perf_counter()
    cache = out / "cache"
    train_zips = sorted((out / "train").glob("*.zip"))
    if train_zips:
        counter = iter(range(1, len(train_zips) + 1))
        summary = compress_exams(
            discover_inputs(train_zips), CompressOptions(cache=cache), workers=workers,
            progress=lambda _: report("compress", next(counter), len(train_zips)),
        )
        if summary.failed:
            logger.warning("demo: %d training exams failed to compress (see %s)", summary.failed, cache / "failures.csv")
        if not config.keep_training_zips:
            for path in train_zips:
                path.unlink()
    _stage(timings, "compress", started)

    started = time.perf_counter()
    targets_path = out / "targets.csv"
    write_targets_table(export_to_targets(out / "train" / "reference.csv", instance=2), targets_path)
    _stage(timings, "targets", started)

    started = time.perf_counter()
    crossval = run_crossval(
        training, cache, targets_path, "demo", out / "crossval", folds=config.folds, device=config.device,
        progress=lambda fold, step: report(f"crossval fold {fold}", step.iteration, step.iterations),
    )
    _stage(timings, "crossval", started)

    started = time.perf_counter()
    run_dir = out / "run"
    if not (run_dir / "weights.safetensors").is_file():
        train(
            training, cache, targets_path, "demo", run_dir, device=config.device, resume=run_dir.exists(),
            progress=lambda step: report("train", step.iteration, step.iterations),
        )
    _stage(timings, "train", started)

    started = time.perf_counter()
    module = build_module(run_dir, out / "crossval", out / "module", name="demo", overwrite=True)
    _stage(timings, "module", started)

    started = time.perf_counter()
    test_zips = sorted((out / "test").glob("*.zip"))
    table = predict(
        test_zips, [module], cache=out / "test_cache", device=config.device, workers=workers,
        progress=lambda stage, done, total: report(f"predict: {stage}", done, total),
    )
    predictions_path = out / "predictions.csv"
    write_predictions(table, predictions_path)
    _stage(timings, "predict", started)

    started = time.perf_counter()
    truth = read_targets_table(out / "test" / "truth.csv")
    metrics = evaluate_predictions(table, truth, _demo_targets(training))
    metrics_path, _ = write_metrics(metrics, out / "evaluation")
    report_path = write_evaluation_report(
        out / "evaluation", table, truth, metrics,
        title="MIMIR demo: held-out synthetic subjects against their ground truth",
        notes={"training subjects": str(config.n_train), "held-out subjects": str(config.n_test)},
    )
    _stage(timings, "evaluate", started)

    result = DemoResult(
        out=out, predictions=predictions_path, metrics=metrics_path, report=report_path,
        crossval_report=crossval.report, module=module, timings=timings,
    )
    record = {"config": asdict(config), "timings_s": timings, "training": asdict(training)}
    from mimir.atomic import atomic_write_text

    atomic_write_text(out / "demo.json", json.dumps(record, indent=2, default=str) + "\n")
    return result


def _demo_targets(training) -> list:
    from mimir.targets.catalog import get_target

    return [get_target(name) for name in training.modules["demo"]]
