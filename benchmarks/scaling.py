"""Benchmark where compression runs: the local process pool against a local Dask cluster, with
1 and 2 workers, over the same exams, in one run (issue 14).

Each configuration compresses every exam into a fresh cache and reports wall seconds, exams per
second and core-seconds per exam (wall x workers / exams), and the Dask overhead per exam
against the local pool with the same number of workers, split by Dask's task stream into the
time its tasks computed and the rest (scheduling, transfer, workers waiting). The Dask workers
are started (and have imported MIMIR) before the clock starts, as on a cluster that serves many
batches; the local pool's start is inside its time, as in every `mimir compress` (with 1 worker
the local run is in-process, no pool). Needs the dask extra.

With --predict it times `mimir predict` instead, zips to table (compression and the paper's four
modules, ResNet50s with random weights as in benchmarks/predict_speed.py, float32 on the CPU):
`run_prediction` here (local pool, networks in this process) against the same through a local
Dask cluster (compression tasks per exam, inference tasks per batch; the workers' imports done
before the clock, each worker's module loading inside it, as the local run's).

    python benchmarks/scaling.py --n 8              # synthetic cohort in a temp folder
    python benchmarks/scaling.py --zips DIR         # your own field-20201 zips
    python benchmarks/scaling.py --n 8 --predict    # prediction, local against Dask
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mimir.parallel import SINGLE_THREAD_VARIABLES
from synthetic_cohorts import generate_complete_cohort

# One BLAS thread here too, as in the local pool's workers and Dask's (its nannies set the same
# variables): the in-process 1-worker run would otherwise compete with its own BLAS threads.
for _name in SINGLE_THREAD_VARIABLES:
    os.environ.setdefault(_name, "1")


#: What compress_exam imports on first use: imported here before any clock starts, as the Dask
#: workers have, so that the in-process 1-worker run does not pay it inside its time.
COMPRESS_MODULES = ("mimir.imaging.compress", "mimir.imaging.fusion", "mimir.imaging.projection", "mimir.imaging.quality", "mimir.imaging.read")


#: What a prediction's tasks import besides: torch, the networks, the table.
PREDICT_MODULES = ("mimir.inference.cluster_prediction",)


def _warm(predict: bool = False) -> None:
    import importlib

    for module in COMPRESS_MODULES + (PREDICT_MODULES if predict else ()):
        importlib.import_module(module)


def _timed_prediction(inputs: list, modules: list[Path], cache: Path, workers: object) -> float:
    from mimir.inference.predict import PredictOptions, run_prediction

    local = isinstance(workers, int)
    options = PredictOptions(cache=cache, device="cpu", precision="float32", workers=workers if local else None)
    started = time.perf_counter()
    paths = [source.path for source in inputs]
    result = run_prediction(paths, modules, options, executor=None if local else workers)
    seconds = time.perf_counter() - started
    if result.failed:
        raise SystemExit(f"{result.failed} exams failed in {cache}: see the failure column")
    return seconds


def _timed(inputs: list, cache: Path, workers: object) -> float:
    from mimir.imaging.compress import CompressOptions, compress_exams

    started = time.perf_counter()
    summary = compress_exams(inputs, CompressOptions(cache=cache), workers=workers)
    seconds = time.perf_counter() - started
    if summary.done != len(inputs):
        raise SystemExit(f"{summary.failed} exams failed in {cache}: see failures.csv")
    return seconds


def _one_run(inputs: list, cache: Path, workers: object, modules: list[Path] | None) -> float:
    """Seconds of one prediction (with modules) or compression into `cache`."""
    if modules is not None:
        return _timed_prediction(inputs, modules, cache, workers)
    return _timed(inputs, cache, workers)


def _best(inputs: list, caches: Path, workers: object, repeat: int, modules: list[Path] | None = None) -> float:
    """The fastest of `repeat` runs, each into a fresh cache: the least disturbed by other jobs."""
    return min(_one_run(inputs, caches / str(attempt), workers, modules) for attempt in range(repeat))


def _dask_seconds(inputs: list, caches: Path, workers: int, repeat: int, modules: list[Path] | None = None) -> tuple[float, float]:
    """The best wall seconds, and the seconds its tasks computed on the workers (Dask's task
    stream): wall x workers minus that is what scheduling, transfer and idle workers cost."""
    from distributed import Client, LocalCluster, get_task_stream

    from mimir.cluster import DaskExecutor

    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        client.run(_warm, modules is not None)
        runs = []
        for attempt in range(repeat):
            with get_task_stream(client) as stream:
                seconds = _one_run(inputs, caches / str(attempt), DaskExecutor(client), modules)
            computing = sum(
                part["stop"] - part["start"] for task in stream.data for part in task["startstops"] if part["action"] == "compute"
            )
            runs.append((seconds, computing))
        return min(runs)


def _benchmark_modules(zips: list[Path], folder: Path) -> list[Path]:
    """The paper's four modules as ResNet50s with random weights (benchmarks/predict_speed.py)."""
    from predict_speed import calibration_images, synthetic_modules

    return synthetic_modules(folder / "modules", calibration_images(zips, folder / "calibration", 4), "resnet50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="synthetic exams to generate")
    parser.add_argument("--zips", type=Path, help="a folder of field-20201 zips instead")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="time each configuration this many times; the best is kept")
    parser.add_argument("--predict", action="store_true", help="time mimir predict (zips to table) instead of compression")
    args = parser.parse_args()

    from mimir.imaging.compress import discover_inputs
    from mimir.synth import CohortConfig

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.zips
        if folder is None:
            folder = Path(scratch) / "cohort"
            generate_complete_cohort(CohortConfig(n=args.n, seed=3), folder, max(args.workers))
        inputs = discover_inputs([folder])
        modules = _benchmark_modules(sorted(Path(folder).glob("*.zip")), Path(scratch)) if args.predict else None
        _warm(args.predict)
        rows = []
        for workers in args.workers:
            local = _best(inputs, Path(scratch) / f"local{workers}", workers, args.repeat, modules)
            dask, computing = _dask_seconds(inputs, Path(scratch) / f"dask{workers}", workers, args.repeat, modules)
            for where, seconds in (("local pool", local), ("dask", dask)):
                rows.append((where, workers, seconds, len(inputs) / seconds, seconds * workers / len(inputs)))
            overhead = (dask - local) * workers / len(inputs)
            machinery = (dask * workers - computing) / len(inputs)
            print(f"{workers} workers: Dask overhead {overhead:+.3f} core-s per exam ({(dask - local) / local:+.1%} of the local pool); "
                  f"of the Dask run, {computing / len(inputs):.3f} core-s per exam computing in tasks and "
                  f"{machinery:.3f} outside them ({machinery * len(inputs) / (dask * workers):.1%}: scheduling, transfer, idle workers)")
    print(f"\n{'predict' if args.predict else 'compress'}: {len(inputs)} exams, best of {args.repeat}")
    print("| where | workers | wall s | exams/s | core-s per exam |")
    print("|---|---|---|---|---|")
    for where, workers, seconds, rate, per_exam in rows:
        print(f"| {where} | {workers} | {seconds:.1f} | {rate:.2f} | {per_exam:.2f} |")


if __name__ == "__main__":
    main()
