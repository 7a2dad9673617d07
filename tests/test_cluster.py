"""Batches on a real Dask cluster (`mimir.cluster`): a `dask scheduler` and two `dask worker`
processes on 127.0.0.1, started here as the issue asks, and dask-jobqueue's job scripts.

Workers die on cue (tests/cluster_preload.py) rather than at a guessed moment, so the fault
tests are not timed. Nothing here listens on, or connects to, any address but 127.0.0.1.
"""

from __future__ import annotations

import copyreg
import csv
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mimir.cli import main
from mimir.cluster import ClusterRequest, DaskExecutor, make_cluster
from mimir.parallel import map_outcomes

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("distributed", "dask_jobqueue")),
    reason="the dask extra is not installed: pip install -e '.[dask,test]'",
)

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
#: The workers' names: the second one declares a GPU resource.
WORKER_NAMES = ("cpu-worker", "gpu-worker")
#: How long the processes get to start (a loaded 2-core CI machine); a wait, never an assertion.
START_S = 120


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True, scope="module")
def _exception_pickling_kept() -> Iterator[None]:
    """Importing distributed makes tblib pickle every exception class there is (copyreg), which
    breaks MIMIR's errors that derive from two builtins; Dask is imported here only, lazily, and
    pickling is put back as it was for the tests that follow (tests/test_errors.py)."""
    saved = dict(copyreg.dispatch_table)
    yield
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(saved)


@dataclass(frozen=True)
class Cluster:
    address: str
    #: Where tests leave cues for the workers (see tests/cluster_preload.py).
    cues: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A `dask scheduler` with two one-thread workers, all on 127.0.0.1. Dask's allowed-failures
    is 1: an exam gets a second worker after a death, not a third. The second worker declares
    a GPU (`--resources GPU=1`; it has none) so that tests can see where such tasks go."""
    import distributed

    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    cues = folder / "cues"
    cues.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
        "DASK_LOGGING__DISTRIBUTED": "warning",
        "MIMIR_TEST_CUES": str(cues),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
            env=env, cwd=folder,
        )
    ]
    try:
        deadline = time.monotonic() + START_S
        while not scheduler_file.exists() and time.monotonic() < deadline and processes[0].poll() is None:
            time.sleep(0.2)
        assert scheduler_file.exists(), "the dask scheduler did not start"
        processes += [
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
                 "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                 "--preload", str(TESTS / "cluster_preload.py"), "--local-directory", str(folder / f"worker{number}"),
                 "--name", WORKER_NAMES[number], *(["--resources", "GPU=1"] if number == 1 else [])],
                env=env, cwd=folder,
            )
            for number in range(2)
        ]
        with distributed.Client(scheduler_file=str(scheduler_file), timeout=START_S) as client:
            client.wait_for_workers(2, timeout=START_S)
            address = client.scheduler.address
        assert address.startswith("tcp://127.0.0.1:")
        yield Cluster(address, cues)
    finally:
        _stop(processes[1:])
        _stop(processes[:1])


@pytest.fixture(scope="module")
def scheduler(cluster: Cluster) -> str:
    return cluster.address


@pytest.fixture
def cues(cluster: Cluster) -> Path:
    return cluster.cues


@pytest.fixture(scope="module")
def cohort(scheduler: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic exams, generated through the scheduler (`mimir synth --scheduler`)."""
    out = tmp_path_factory.mktemp("cluster_cohort")
    assert main(["-q", "synth", "--n", "6", "--seed", "14", "--out", str(out), "--scheduler", scheduler]) == 0
    return out


def _zips(cohort: Path) -> list[Path]:
    return sorted(cohort.glob("*.zip"))


def _files(cache: Path) -> dict[str, bytes]:
    """Every file of a cache by its path inside it, temporaries included."""
    return {str(path.relative_to(cache)): path.read_bytes() for path in sorted(cache.rglob("*")) if path.is_file()}


def _temporaries(cache: Path) -> list[str]:
    return [str(path) for path in cache.rglob(".*") if path.name != "."]


def _failures(cache: Path) -> list[dict[str, str]]:
    with (cache / "failures.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_compress_through_the_scheduler_is_byte_identical_to_a_local_run(scheduler, cohort, tmp_path):
    assert len(_zips(cohort)) == 6
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["-q", "compress", str(cohort), "--cache", str(local), "--workers", "1"]) == 0
    assert main(["-q", "compress", str(cohort), "--cache", str(remote), "--scheduler", scheduler]) == 0
    files = _files(local)
    assert sum(name.endswith(".npy") for name in files) == 6
    assert _files(remote) == files  # images, per-exam QC rows, qc.csv and failures.csv


def test_a_corrupt_zip_is_a_failure_row_and_the_batch_finishes(scheduler, cohort, tmp_path):
    corrupt = tmp_path / "inputs" / "1000016_20201_2_0.zip"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PK\x03\x04 not a zip at all")
    cache = tmp_path / "cache"
    inputs = [str(path) for path in _zips(cohort)[:2]]
    assert main(["-q", "compress", *inputs, str(corrupt), "--cache", str(cache), "--scheduler", scheduler]) == 0
    (failure,) = _failures(cache)
    assert failure["subject"] == "1000016_20201_2_0" and failure["stage"] == "open"
    assert "truncated or corrupt zip archive" in failure["reason"]
    assert sorted(path.stem for path in cache.glob("*.npy")) == [path.stem for path in _zips(cohort)[:2]]


def test_a_worker_killed_mid_write_has_its_exam_rerun_once_and_leaves_nothing_behind(scheduler, cohort, cues, tmp_path):
    cache = tmp_path / "cache"
    (cues / "die-once").touch()
    inputs = [str(path) for path in _zips(cohort)[:4]]
    assert main(["-q", "compress", *inputs, "--cache", str(cache), "--scheduler", scheduler]) == 0
    assert not (cues / "die-once").exists()  # a worker took the cue and died
    assert sorted(path.name for path in cache.glob("*.npy")) == sorted(f"{path.stem}.npy" for path in _zips(cohort)[:4])
    assert _failures(cache) == []
    assert _temporaries(cache) == []
    with (cache / "qc.csv").open(newline="") as handle:
        subjects = [row["subject"] for row in csv.DictReader(handle)]
    assert sorted(subjects) == sorted(path.stem for path in _zips(cohort)[:4])  # each exactly once


def test_an_exam_that_kills_every_worker_is_a_failure_after_the_allowed_failures(scheduler, cohort, cues, tmp_path):
    poison, good = _zips(cohort)[:2]
    (cues / "poison").write_text(poison.stem)
    cache = tmp_path / "cache"
    try:
        assert main(["-q", "compress", str(poison), str(good), "--cache", str(cache), "--scheduler", scheduler]) == 0
    finally:
        (cues / "poison").unlink()
    (failure,) = _failures(cache)
    assert failure["subject"] == poison.stem and failure["stage"] == "worker"
    assert failure["reason"].startswith("WorkerDied: the worker died 2 times while processing this item")
    assert [path.stem for path in cache.glob("*.npy")] == [good.stem]
    assert _temporaries(cache) == []


@pytest.fixture
def helpers(monkeypatch):
    """tests/parallel_helpers.py, importable by name here and on the workers (their PYTHONPATH)."""
    import importlib

    monkeypatch.syspath_prepend(str(TESTS))
    return importlib.import_module("parallel_helpers")


def test_the_executor_keeps_a_bounded_number_in_flight_and_returns_every_item(scheduler, helpers):
    import distributed

    with distributed.Client(scheduler, timeout=START_S) as client:
        outcomes = list(map_outcomes(helpers.square_or_die, range(7), DaskExecutor(client, max_pending=2)))
    assert sorted((outcome.item, outcome.value) for outcome in outcomes) == [(item, item * item) for item in range(7)]
    assert all(outcome.ok for outcome in outcomes)


def test_tasks_that_ask_for_a_gpu_go_only_to_the_worker_that_declares_one(scheduler, helpers):
    import distributed

    with distributed.Client(scheduler, timeout=START_S) as client:
        executor = DaskExecutor(client)
        anywhere = {outcome.value for outcome in executor.map_outcomes(helpers.dask_worker_name, range(8))}
        on_gpu = {outcome.value for outcome in executor.map_outcomes(helpers.dask_worker_name, range(8), resources={"GPU": 1})}
    assert on_gpu == {"gpu-worker"}
    assert anywhere <= set(WORKER_NAMES)


def _crossval_cohort(root: Path) -> tuple[Path, Path]:
    """Nine subjects whose image brightness sets age and height: a cache and a targets table."""
    import numpy as np
    import pandas as pd

    cache = root / "cache"
    cache.mkdir()
    rng = np.random.default_rng(3)
    rows = []
    for subject in range(9):
        brightness = rng.uniform(20, 220)
        eid = 1_000_000 + subject
        np.save(cache / f"{eid}_20201_2_0.npy", np.clip(rng.normal(brightness, 10, (3, 256, 256)), 0, 255).astype(np.uint8))
        rows.append({"eid": eid, "instance": 2, "age": 40 + brightness / 8, "height": 150 + brightness / 4})
    pd.DataFrame(rows).to_csv(root / "targets.csv", index=False)
    return cache, root / "targets.csv"


def test_crossval_through_the_scheduler_trains_each_fold_as_a_task_and_equals_a_local_run(scheduler, tmp_path, capsys, caplog):
    import json
    import logging

    import pandas as pd

    from mimir.runs.config import TrainConfig

    cache, targets = _crossval_cohort(tmp_path)
    config = tmp_path / "tiny.toml"
    TrainConfig(
        architecture="resnet18", init="scratch", input_pool=8, autocast="float32", batch_size=3, iterations=3,
        learning_rate=1e-3, lr_milestones=[2], checkpoint_every=3, log_every=1, eval_batch_size=4,
        deterministic=True, seed=0, max_shift=4, modules={"cvdask": ["age", "height"]},
    ).write_toml(config)
    common = ["--cache", str(cache), "--targets", str(targets), "--module", "cvdask", "--config", str(config),
              "--folds", "3", "--device", "cpu", "--no-baseline", "--no-report"]
    assert main(["-q", "crossval", "run", *common, "--out", str(tmp_path / "local")]) == 0
    with caplog.at_level(logging.INFO, logger="mimir.learn.crossval"):
        assert main(["-q", "crossval", "run", *common, "--out", str(tmp_path / "dask"), "--scheduler", scheduler]) == 0
    assert "running on the Dask scheduler at tcp://127.0.0.1:" in capsys.readouterr().out
    finished = sorted(record.args[0] for record in caplog.records if record.msg == "fold %d finished in %.1f s")
    assert finished == [0, 1, 2]  # each fold came back as a task's outcome
    hosts = {json.loads((tmp_path / "dask" / f"fold_{fold}" / "fold.json").read_text())["host"] for fold in range(3)}
    assert hosts == {socket.gethostname()}  # where each fold trained, for the record
    local = pd.read_csv(tmp_path / "local" / "oof_predictions.csv")
    remote = pd.read_csv(tmp_path / "dask" / "oof_predictions.csv")
    pd.testing.assert_frame_equal(remote, local, check_exact=False, atol=1e-5)


def _load_synthetic_modules():
    """tests/inference/synthetic_modules.py, loaded by path as tests/inference/conftest.py does."""
    spec = importlib.util.spec_from_file_location("synthetic_modules", TESTS / "inference" / "synthetic_modules.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny modules (resnet18, pooled input) with realistic outputs: body (2 targets), and
    organs (1), which carries an OOD description (so tables have ood_score and ood_flag)."""
    import numpy as np
    import torch

    from mimir.inference.modules import load_module, read_spec, save_module
    from mimir.inference.ood import extract_features, fit_description
    from mimir.network import images_to_input

    helpers = _load_synthetic_modules()
    folder = tmp_path_factory.mktemp("cluster_modules")
    organs = helpers.make_module(folder / "organs_plain", "organs", helpers.ORGAN_TARGETS, seed=2)
    network = load_module(organs).network
    images = torch.from_numpy(np.stack([helpers.realistic_image(100 + index) for index in range(24)]))
    features = extract_features(network, images_to_input(images), "penultimate+image")
    described = fit_description(features[:16], features[16:], "penultimate+image", n_components=4)
    return [
        helpers.make_module(folder / "body", "body", helpers.BODY_TARGETS, seed=1),
        save_module(read_spec(organs), network.state_dict(), folder / "organs", ood=described),
    ]


@dataclass(frozen=True)
class Predicted:
    """The same three exams (batches of two: a full one and a partial one) predicted by `mimir
    predict` here and through the scheduler."""

    inputs: list[str]
    local: Path
    remote: Path
    output: str


@pytest.fixture(scope="module")
def predicted(scheduler, cohort, modules, tmp_path_factory) -> Predicted:
    """Through the scheduler from the zips, then here from the same zips with a copy of the
    cache the cluster wrote (so this run only predicts: that compression through the scheduler
    is byte-identical is test_compress_through_the_scheduler_is_byte_identical_to_a_local_run's)."""
    import contextlib
    import io
    import shutil

    folder = tmp_path_factory.mktemp("cluster_predict")
    inputs = [str(path) for path in _zips(cohort)[:3]]
    common = ["--modules", *map(str, modules), "--device", "cpu", "--batch-size", "2"]
    local, remote = folder / "local", folder / "remote"
    remote.mkdir()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        argv = ["-q", "predict", *inputs, *common, "--out", str(remote / "p.csv"), "--cache", str(remote / "cache"), "--scheduler", scheduler]
        assert main(argv) == 0
    shutil.copytree(remote / "cache", local / "cache")
    assert main(["-q", "predict", *inputs, *common, "--out", str(local / "p.csv"), "--cache", str(local / "cache"), "--workers", "1"]) == 0
    return Predicted(inputs, local, remote, printed.getvalue())


@pytest.mark.slow  # about 25 s here, most of it the workers' first import of torch
def test_predict_through_the_scheduler_writes_the_local_table(predicted):
    import json

    import pandas as pd

    assert predicted.output.startswith("running on the Dask scheduler at tcp://127.0.0.1:")
    assert "3 exams (3 compressed, 0 already cached, 0 failed)" in predicted.output
    assert "inference batches by Dask worker:" in predicted.output
    local = pd.read_csv(predicted.local / "p.csv", keep_default_na=False, na_values=[""])
    remote = pd.read_csv(predicted.remote / "p.csv", keep_default_na=False, na_values=[""])
    assert list(remote.columns) == list(local.columns)
    assert list(remote["exam"]) == [Path(path).stem for path in predicted.inputs]
    assert local["height"].notna().all() and local["liverFat_sd"].notna().all()
    pd.testing.assert_frame_equal(remote, local, check_exact=False, rtol=1e-6, atol=1e-6)
    dictionary = "p_dictionary.json"
    assert json.loads((predicted.remote / dictionary).read_text()) == json.loads((predicted.local / dictionary).read_text())
    assert _files(predicted.remote / "cache") == _files(predicted.local / "cache")  # qc.csv and failures.csv alike


def test_gpu_shaped_prediction_runs_every_batch_on_the_gpu_worker_equals_a_local_run_and_resumes(
    scheduler, cohort, modules, tmp_path
):
    """Compression tasks on both workers, inference batches on gpu-worker only (gpu_workers
    with device cpu); the unrounded table equals a local run's to 1e-6; a rerun compresses
    nothing and loads no module again (gpu-worker kept them)."""
    import shutil

    import distributed
    import pandas as pd

    from mimir.cluster import DaskExecutor
    from mimir.inference.predict import PredictOptions, run_prediction

    inputs = _zips(cohort)[:4]
    options = PredictOptions(cache=tmp_path / "cache", device="cpu", batch_size=2, gpu_workers=True)
    with distributed.Client(scheduler, timeout=START_S) as client:
        names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
        with distributed.get_task_stream(client=client) as stream:
            first = run_prediction(inputs, modules, options, executor=DaskExecutor(client))
        again = run_prediction(inputs, modules, options, executor=DaskExecutor(client))
    ran_on: dict[str, set[str]] = {}
    for task in stream.data:
        kind = task["key"].rsplit("-", 1)[0]
        ran_on.setdefault(kind, set()).add(names[task["worker"]])
    assert ran_on == {"compress_exam": set(WORKER_NAMES), "predict_batch": {"gpu-worker"}}
    assert first.batch_workers == again.batch_workers == {"gpu-worker": 2}
    assert (first.compressed, first.reused, first.failed) == (4, 0, 0)
    assert (again.compressed, again.reused, again.failed) == (0, 4, 0)
    assert first.modules_loaded <= len(modules) and again.modules_loaded == 0

    shutil.copytree(tmp_path / "cache", tmp_path / "local_cache")
    local = run_prediction(inputs, modules, PredictOptions(cache=tmp_path / "local_cache", device="cpu", batch_size=2, workers=1))
    assert local.table["height"].notna().all() and local.table["ood_score"].between(0, 100).all()
    pd.testing.assert_frame_equal(first.table, local.table, check_exact=False, rtol=1e-6, atol=1e-6)
    pd.testing.assert_frame_equal(again.table, local.table, check_exact=False, rtol=1e-6, atol=1e-6)


def test_an_input_path_no_worker_sees_is_a_failure_row_and_the_others_are_predicted(scheduler, cohort, modules, tmp_path):
    import csv as csv_module

    import pandas as pd

    good = _zips(cohort)[0]
    missing = tmp_path / "elsewhere" / "1000099_20201_2_0.zip"  # listed, but on no worker's storage
    listing = tmp_path / "exams.txt"
    listing.write_text(f"{good}\n{missing}\n")
    out = tmp_path / "p.csv"
    argv = ["-q", "predict", str(listing), "--modules", *map(str, modules), "--device", "cpu", "--out", str(out), "--scheduler", scheduler]
    assert main(argv) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table["exam"]) == [good.stem, missing.stem]
    assert table.loc[0, "failure"] == "" and table.loc[0, "height"] != ""
    assert table.loc[1, "failure"].startswith("open: ") and table.loc[1, "height"] == ""
    with (tmp_path / "p_cache" / "failures.csv").open(newline="") as handle:
        (failure,) = csv_module.DictReader(handle)
    assert failure["subject"] == missing.stem and failure["input"] == str(missing)


def test_a_batch_that_kills_every_worker_becomes_failure_rows_and_the_table_is_written(scheduler, cues, modules, tmp_path):
    import numpy as np
    import pandas as pd

    helpers = _load_synthetic_modules()
    images = tmp_path / "images"
    images.mkdir()
    for index, stem in enumerate(["1000001_20201_2_0", "1000002_20201_2_0", "1000003_20201_2_0"]):
        np.save(images / f"{stem}.npy", helpers.realistic_image(index))
    (cues / "poison-batch").write_text("1000003_20201_2_0")  # the second batch (batch size 2)
    out = tmp_path / "p.csv"
    try:
        argv = ["-q", "predict", str(images), "--modules", *map(str, modules), "--device", "cpu", "--batch-size", "2",
                "--out", str(out), "--scheduler", scheduler]
        assert main(argv) == 0
    finally:
        (cues / "poison-batch").unlink()
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table["exam"]) == ["1000001_20201_2_0", "1000002_20201_2_0", "1000003_20201_2_0"]
    assert (table.loc[:1, "failure"] == "").all() and (table.loc[:1, "height"] != "").all()
    assert table.loc[2, "failure"].startswith("worker: WorkerDied: the worker died 2 times while processing this item")
    assert table.loc[2, "height"] == ""


def test_a_local_cluster_from_the_command_line(cohort, tmp_path, capsys):
    cache = tmp_path / "cache"
    inputs = [str(path) for path in _zips(cohort)[:2]]
    assert main(["-q", "compress", *inputs, "--cache", str(cache), "--cluster", "local", "--jobs", "2"]) == 0
    assert capsys.readouterr().out.startswith("running on the Dask scheduler at tcp://127.0.0.1:")
    assert sorted(path.stem for path in cache.glob("*.npy")) == [path.stem for path in _zips(cohort)[:2]]


def test_cluster_options_without_a_cluster_are_refused(tmp_path, capsys):
    assert main(["-q", "compress", str(tmp_path), "--cache", str(tmp_path / "c"), "--jobs", "4", "--memory", "8GB"]) == 2
    assert "--jobs, --memory only apply with --cluster" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--jobs", "0"], "a cluster needs at least 1 job"),
    (["--cores", "0"], "a cluster's jobs need at least 1 core each, got --cores 0"),
    (["--cores", "-2"], "at least 1 core each, got --cores -2"),
])
def test_a_cluster_of_no_jobs_or_no_cores_is_refused_before_any_work(flags, message, tmp_path, capsys):
    argv = ["-q", "compress", str(tmp_path), "--cache", str(tmp_path / "c"), "--cluster", "slurm", *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_local_workers_with_a_cluster_are_refused_not_ignored(tmp_path, capsys):
    argv = ["-q", "compress", str(tmp_path), "--cache", str(tmp_path / "c"), "--workers", "4"]
    assert main([*argv, "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert main([*argv, "--cluster", "local"]) == 2
    assert capsys.readouterr().err.count("--workers counts local processes") == 2


def test_gpu_workers_without_a_cluster_are_refused(tmp_path, capsys):
    image = tmp_path / "1000016_20201_2_0.npy"
    image.write_bytes(b"")
    argv = ["-q", "predict", str(image), "--modules", str(tmp_path), "--out", str(tmp_path / "p.csv"), "--gpu-workers"]
    assert main(argv) == 2
    assert "--gpu-workers only applies with --scheduler or --cluster" in capsys.readouterr().err


def test_a_scheduler_that_does_not_answer_is_one_line(tmp_path, capsys):
    import dask

    (tmp_path / "1000016_20201_2_0.zip").write_bytes(b"")
    with socket.socket() as closed:  # a port of 127.0.0.1 that nothing listens on
        closed.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(["-q", "compress", str(tmp_path), "--cache", str(tmp_path / "c"), "--scheduler", address]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"cannot reach the Dask scheduler at {address}" in line


def test_asking_for_a_cluster_without_the_extra_names_the_extra(tmp_path, monkeypatch, capsys):
    (tmp_path / "1000016_20201_2_0.zip").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed: importing it fails
    assert main(["-q", "compress", str(tmp_path), "--cache", str(tmp_path / "c"), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("needs distributed and dask-jobqueue: pip install -e '.[dask]'")


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("slurm", ["#SBATCH -p short", "#SBATCH -A proj-123", "#SBATCH -n 1", "#SBATCH --cpus-per-task=4",
                   "#SBATCH --mem=15G", "#SBATCH -t 02:30:00", "#SBATCH --gres=gpu:1"]),
        ("pbs", ["#PBS -q short", "#PBS -A proj-123", "#PBS -l select=1:ncpus=4:mem=15GB", "#PBS -l walltime=02:30:00",
                 "#PBS --gres=gpu:1"]),
    ],
)
def test_job_scripts_carry_the_requested_resources(kind, expected):
    request = ClusterRequest(
        kind=kind, cores=4, memory="16GB", walltime="02:30:00", queue="short", account="proj-123",
        job_extra=("--gres=gpu:1",), host="127.0.0.1",
    )
    with make_cluster(request) as cluster:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    lines = script.splitlines()
    for line in expected:
        assert line in lines, (line, script)
