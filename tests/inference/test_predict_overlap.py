"""Compression overlapped with inference: same table, same rows and order, failures kept, threads restored."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimir.imaging.cache import write_image
from mimir.imaging.compress import (
    CompressOptions,
    CompressSummary,
    ExamOutcome,
    exam_stem,
)
from mimir.inference import background_compression
from mimir.inference import predict as predict_module
from mimir.inference.modules import ModuleSpec, Provenance, TargetSpec, save_module
from mimir.inference.predict import PredictOptions, run_prediction
from mimir.inference.runner import ModuleRunner
from mimir.network import MeanVarianceResNet

RAW_STEMS = ("1000001_20201_2_0", "1000002_20201_2_0", "1000003_20201_2_0", "1000004_20201_3_0", "1000005_20201_2_0")
CACHED_STEMS = ("2000001_20201_2_0", "2000002_20201_2_0")
BROKEN = "1000003_20201_2_0"
TARGETS = (
    TargetSpec("height", 50, "cm", "continuous", mean=170.0, sd=9.0),
    TargetSpec("weight", 21002, "kg", "continuous", mean=80.0, sd=14.0),
)


def image_for(stem: str) -> np.ndarray:
    rng = np.random.default_rng(int(stem[:7]))
    return rng.integers(0, 200, size=(3, 256, 256), dtype=np.uint8)


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    network = MeanVarianceResNet("resnet18", len(TARGETS), input_pool=8)
    network.fc.weight.data.mul_(0.01)
    spec = ModuleSpec(
        name="body", architecture="resnet18", targets=TARGETS, provenance=Provenance("training"),
        input_pool=8, log_var_range=(-10.0, 10.0),
    )
    return save_module(spec, network.state_dict(), tmp_path_factory.mktemp("modules") / "body")


@pytest.fixture()
def inputs(tmp_path: Path) -> list[Path]:
    """Fake zips (compressed by `FakeCompression`), then a cache folder of images given as they are."""
    zips = tmp_path / "zips"
    zips.mkdir()
    for stem in RAW_STEMS:
        (zips / f"{stem}.zip").write_bytes(b"stands for an exam")
    given = tmp_path / "given"
    given.mkdir()
    for stem in CACHED_STEMS:
        np.save(given / f"{stem}.npy", image_for(stem))
    return [*(zips / f"{stem}.zip" for stem in RAW_STEMS), given]


class FakeCompression:
    """Stands in for compress_exams: finishes exams in reverse order, one broken, and can hold
    back the last exams until the networks have predicted a batch (which only happens with overlap)."""

    def __init__(self, *, hold_until_predicted: bool) -> None:
        self.hold_until_predicted = hold_until_predicted
        self.predicted = threading.Event()
        self.held_back_in_vain = False

    def __call__(self, exams, options: CompressOptions, *, workers: int = 1, progress=None) -> CompressSummary:
        summary = CompressSummary(cache=options.cache)
        options.cache.mkdir(parents=True, exist_ok=True)
        for number, exam in enumerate(reversed(exams)):
            stem = exam_stem(exam)
            if number == 3 and self.hold_until_predicted:
                self.held_back_in_vain = not self.predicted.wait(timeout=30)
            if stem == BROKEN:
                outcome = ExamOutcome(stem, str(exam.path), "failed", stage="read", reason="not a zip file")
                summary.failed += 1
                summary.failures.append(outcome)
            else:
                write_image(options.cache, stem, image_for(stem))
                outcome = ExamOutcome(stem, str(exam.path), "done")
                summary.done += 1
            if progress is not None:
                progress(outcome)
        return summary


def use_compression(monkeypatch, compress) -> None:
    """Stand in for compress_exams both where the stages run one after the other and in the background."""
    monkeypatch.setattr(predict_module, "compress_exams", compress)
    monkeypatch.setattr(background_compression, "compress_exams", compress)


def run(inputs: list[Path], module: Path, cache: Path, fake: FakeCompression, monkeypatch, **options):
    use_compression(monkeypatch, fake)
    events: list[tuple[str, int, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        events.append((stage, done, total))
        if stage == "predict" and done > len(CACHED_STEMS):  # a batch of compressed exams went through
            fake.predicted.set()

    options.setdefault("overlap", True)
    result = run_prediction(inputs, [module], PredictOptions(cache=cache, device="cpu", batch_size=2, **options), progress)
    return result, events


def test_overlap_gives_the_same_table_in_input_order(inputs, module, tmp_path, monkeypatch):
    overlapped, events = run(inputs, module, tmp_path / "a", FakeCompression(hold_until_predicted=True), monkeypatch)
    sequential, _ = run(inputs, module, tmp_path / "b", FakeCompression(hold_until_predicted=False), monkeypatch,
                        overlap=False)
    assert list(overlapped.table["exam"]) == [*RAW_STEMS, *CACHED_STEMS]
    pd.testing.assert_frame_equal(overlapped.table, sequential.table, check_exact=False, rtol=1e-5, atol=1e-6)
    assert "compress (overlapped)" in overlapped.timings and "compress" in sequential.timings
    last_compress = max(index for index, (stage, _, _) in enumerate(events) if stage == "compress")
    assert any(stage == "predict" and done > len(CACHED_STEMS) for stage, done, _ in events[:last_compress])
    assert events[-1] == ("predict", len(RAW_STEMS) + len(CACHED_STEMS), len(RAW_STEMS) + len(CACHED_STEMS))
    assert [done for stage, done, _ in events if stage == "compress"] == list(range(1, len(RAW_STEMS) + 1))


def test_overlap_really_predicts_before_compression_ends(inputs, module, tmp_path, monkeypatch):
    fake = FakeCompression(hold_until_predicted=True)
    run(inputs, module, tmp_path / "cache", fake, monkeypatch)
    assert not fake.held_back_in_vain


def test_a_broken_exam_among_good_ones_keeps_its_row(inputs, module, tmp_path, monkeypatch):
    result, _ = run(inputs, module, tmp_path / "cache", FakeCompression(hold_until_predicted=False), monkeypatch)
    table = result.table.set_index("exam")
    assert table.loc[BROKEN, "failure"] == "read: not a zip file"
    assert np.isnan(table.loc[BROKEN, ["height", "weight_sd"]].to_numpy(dtype=float)).all()
    good = table.drop(index=BROKEN)
    assert (good["failure"] == "").all() and good["height"].notna().all()
    assert (result.compressed, result.failed) == (len(RAW_STEMS) - 1, 1)


def test_a_cached_duplicate_of_a_raw_exam_is_dropped(inputs, module, tmp_path, monkeypatch):
    duplicate = tmp_path / "given" / f"{RAW_STEMS[0]}.npy"
    np.save(duplicate, np.zeros((3, 256, 256), dtype=np.uint8))
    result, _ = run(inputs, module, tmp_path / "cache", FakeCompression(hold_until_predicted=False), monkeypatch)
    assert list(result.table["exam"]) == [*RAW_STEMS, *CACHED_STEMS]
    assert result.images[RAW_STEMS[0]] == tmp_path / "cache" / f"{RAW_STEMS[0]}.npy"


def test_torch_threads_are_one_while_compressing_and_restored_after(inputs, module, tmp_path, monkeypatch):
    seen: list[int] = []
    fake = FakeCompression(hold_until_predicted=True)
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        use_compression(monkeypatch, fake)

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "predict":
                seen.append(torch.get_num_threads())
                if done > len(CACHED_STEMS):
                    fake.predicted.set()

        options = PredictOptions(cache=tmp_path / "cache", device="cpu", batch_size=2, overlap=True)
        run_prediction(inputs, [module], options, progress)
        assert seen[0] == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


def test_a_failing_network_stops_compression_and_is_raised(inputs, module, tmp_path, monkeypatch):
    def broken_network(self, network_input):
        raise RuntimeError("network exploded")

    monkeypatch.setattr(ModuleRunner, "raw_outputs", broken_network)
    fake = FakeCompression(hold_until_predicted=False)
    with pytest.raises(RuntimeError, match="network exploded"):
        run(inputs, module, tmp_path / "cache", fake, monkeypatch)
    assert not [thread for thread in threading.enumerate() if thread.name == "mimir-compress"]


def test_a_compression_crash_is_raised(inputs, module, tmp_path, monkeypatch):
    def crashing(exams, options, *, workers=1, progress=None):
        time.sleep(0.05)
        raise PermissionError("cache is read-only")

    use_compression(monkeypatch, crashing)
    with pytest.raises(PermissionError, match="read-only"):
        run_prediction(inputs, [module], PredictOptions(cache=tmp_path / "cache", device="cpu", batch_size=2))


@pytest.mark.slow
def test_real_exams_give_the_same_table_with_and_without_overlap(tiny_cohort, module, tmp_path):
    pytest.importorskip("mimir.synth.anatomy")
    zips = sorted(tiny_cohort.glob("*.zip"))[:3]
    common = {"device": "cpu", "batch_size": 1, "workers": 1}
    overlapped = run_prediction(zips, [module], PredictOptions(cache=tmp_path / "a", overlap=True, **common))
    sequential = run_prediction(zips, [module], PredictOptions(cache=tmp_path / "b", overlap=False, **common))
    assert list(overlapped.table["exam"]) == [path.stem for path in zips]
    pd.testing.assert_frame_equal(overlapped.table, sequential.table, check_exact=False, rtol=1e-5, atol=1e-6)


def test_by_default_a_cpu_compresses_first_and_then_predicts(inputs, module, tmp_path, monkeypatch):
    result, events = run(inputs, module, tmp_path / "a", FakeCompression(hold_until_predicted=False), monkeypatch, overlap=None)
    assert "compress" in result.timings and "compress (overlapped)" not in result.timings
    stages = [stage for stage, _, _ in events]
    assert stages.index("predict") > max(i for i, stage in enumerate(stages) if stage == "compress")
