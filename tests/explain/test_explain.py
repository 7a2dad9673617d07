"""Mechanics of `mimir explain` on a tiny module: files, shapes, values, failures, reruns, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimir.cli import main
from mimir.explain import ExplainError, ExplainOptions, explain
from mimir.explain.aggregate import (
    SAGITTAL_START,
    align,
    cohort_map,
    image_body_mask,
    view_boxes,
)
from mimir.inference.predict import PredictOptions, predict
from mimir.report.saliency import normalise

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TARGET = "liverVolume"


@pytest.fixture()
def cache(trained, tmp_path: Path) -> Path:
    """Two of the trained module's images in a cache of their own."""
    folder = tmp_path / "cache"
    folder.mkdir()
    for stem in trained.stems[:2]:
        shutil.copy(trained.cache / f"{stem}.npy", folder)
    return folder


def test_maps_and_figures_per_exam_and_target(trained, cache, tmp_path):
    result = explain([cache], [trained.module], tmp_path / "out", ExplainOptions(device="cpu"))
    folder = tmp_path / "out" / "gradcam"
    assert result.folder == folder and result.computed == 2 and result.failed == 0
    index = pd.read_csv(folder / "explanations.csv", keep_default_na=False)
    assert list(index["target"]) == [TARGET] * 2
    for row in index.itertuples():
        saliency_map = np.load(folder / row.map)
        assert saliency_map.shape == (256, 256) and saliency_map.dtype == np.float32
        assert np.isfinite(saliency_map).all() and saliency_map.max() > 0
        assert (folder / row.figure).read_bytes()[:8] == PNG_MAGIC
    table = predict([cache], [trained.module], PredictOptions(device="cpu", precision="float32"))
    assert np.allclose(index["mean"].astype(float), table[TARGET]) and np.allclose(index["high"].astype(float), table[f"{TARGET}_high"])


def test_a_rerun_skips_what_is_there_and_a_broken_image_fails_alone(trained, cache, tmp_path):
    explain([cache], [trained.module], tmp_path / "out", ExplainOptions(device="cpu"))
    (cache / "9999999_20201_2_0.npy").write_bytes(b"not an image")
    result = explain([cache], [trained.module], tmp_path / "out", ExplainOptions(device="cpu"))
    assert (result.computed, result.reused, result.failed) == (0, 2, 1)
    broken = result.index[result.index["exam"] == "9999999_20201_2_0"].iloc[0]
    assert broken["failure"].startswith("load:") and broken["map"] == "" and broken["figure"] == ""
    assert not (result.folder / TARGET / "9999999_20201_2_0.npy").exists()


def test_mistakes_are_refused_before_any_work(trained, cache, tmp_path):
    with pytest.raises(ExplainError, match="do not predict height; they predict liverVolume"):
        explain([cache], [trained.module], tmp_path / "out", ExplainOptions(targets=("height",)))
    with pytest.raises(ExplainError, match="unknown saliency method"):
        explain([cache], [trained.module], tmp_path / "out", ExplainOptions(method="occlusion"))
    assert not (tmp_path / "out").exists()


def test_the_command_end_to_end_with_cohort_maps(trained, cache, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["-q", "explain", str(cache), "--modules", str(trained.module), "--out", str(out),
                 "--method", "guided-gradcam", "--aggregate", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "maps of 2 exams computed" in printed and "cohort_maps.png" in printed
    cohort = np.load(out / "guided-gradcam" / "cohort" / f"{TARGET}.npy")
    assert cohort.shape == (256, 256) and np.isfinite(cohort).all() and 0 < cohort.max() <= 1
    assert (out / "guided-gradcam" / "cohort_maps.png").read_bytes()[:8] == PNG_MAGIC


def test_no_figures_writes_the_maps_only_and_a_later_run_with_figures_adds_them(trained, cache, tmp_path):
    out = tmp_path / "out"
    assert main(["-q", "explain", str(cache), "--modules", str(trained.module), "--out", str(out),
                 "--no-figures", "--aggregate", "--device", "cpu"]) == 0
    folder = out / "gradcam"
    index = pd.read_csv(folder / "explanations.csv", keep_default_na=False)
    assert (index["map"] != "").all() and (index["figure"] == "").all()
    assert list((folder / TARGET).glob("*.png")) == [] and len(list((folder / TARGET).glob("*.npy"))) == len(index)
    assert (folder / "cohort_maps.png").is_file()
    stamps = {path: path.stat().st_mtime_ns for path in (folder / TARGET).glob("*.npy")}
    result = explain([cache], [trained.module], out, ExplainOptions(device="cpu"))
    assert result.computed == len(index) and result.reused == 0  # the figures were missing: drawn now
    assert (result.index["figure"] != "").all() and len(list((folder / TARGET).glob("*.png"))) == len(index)
    assert all(path.stat().st_mtime_ns != stamp for path, stamp in stamps.items())


def test_an_earlier_grad_cam_layer_gives_another_map_in_a_folder_of_its_own(trained, cache, tmp_path):
    from mimir.explain.maps import residual_stage
    from mimir.inference.modules import load_module

    network = load_module(trained.module).network
    assert residual_stage(network, "layer3") is network.layer3 and residual_stage(network) is network.layer4
    last = explain([cache], [trained.module], tmp_path / "out", ExplainOptions(device="cpu", figures=False))
    finer = explain([cache], [trained.module], tmp_path / "out", ExplainOptions(device="cpu", figures=False, layer="layer3"))
    assert finer.folder == tmp_path / "out" / "gradcam-layer3" and finer.computed == 2 and finer.reused == 0
    assert set(finer.index["method"]) == {"gradcam-layer3"} and set(last.index["method"]) == {"gradcam"}
    for row in finer.index.itertuples():
        finer_map, last_map = np.load(finer.folder / row.map), np.load(last.folder / row.map)
        assert finer_map.shape == (256, 256) and np.isfinite(finer_map).all() and finer_map.max() > 0
        assert not np.allclose(finer_map, last_map)


def test_a_layer_is_refused_where_it_means_nothing(trained, cache, tmp_path, capsys):
    with pytest.raises(ExplainError, match="integrated-gradients has no layer"):
        explain([cache], [trained.module], tmp_path / "out", ExplainOptions(method="integrated-gradients", layer="layer3"))
    with pytest.raises(ExplainError, match="unknown Grad-CAM layer 'fc'"):
        explain([cache], [trained.module], tmp_path / "out", ExplainOptions(layer="fc"))
    assert not (tmp_path / "out").exists()
    assert main(["explain", str(cache), "--modules", str(trained.module), "--out", str(tmp_path / "o"),
                 "--method", "integrated-gradients", "--layer", "layer3"]) == 2
    assert capsys.readouterr().err.strip().startswith("mimir explain: error: integrated-gradients has no layer")


def test_the_command_reports_an_unknown_target_in_one_line(trained, cache, tmp_path, capsys):
    assert main(["explain", str(cache), "--modules", str(trained.module), "--out", str(tmp_path / "o"),
                 "--targets", "grip"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mimir explain: error: the modules do not predict grip") and "\n" not in error


def _box_image(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """An image whose body is one rectangle per view, the same rows in both."""
    image = np.zeros((3, 256, 256), dtype=np.uint8)
    image[:2, top:bottom, left:right] = 200
    image[:2, top:bottom, SAGITTAL_START + 10 : SAGITTAL_START + 60] = 200
    return image


def test_alignment_maps_each_body_box_onto_the_mean_box():
    small, large = _box_image(40, 200, 50, 100), _box_image(20, 240, 30, 130)
    maps = [image[0].astype(np.float32) for image in (small, large)]
    mean_map, _, used = cohort_map(maps, [small, large], align_bodies=True)
    assert used == 2
    # Aligned, both bodies cover the same box: the mean map is one there, not a half-weight rim.
    box = view_boxes(mean_map > 0.5)
    assert box is not None
    (top, bottom, left, right), _ = box
    assert abs(top - 30) <= 2 and abs(bottom - 219) <= 2 and abs(left - 40) <= 2 and abs(right - 114) <= 2
    inside = mean_map[top.__int__() + 3 : int(bottom) - 3, int(left) + 3 : int(right) - 3]
    assert inside.min() > 0.95
    unaligned, _, _ = cohort_map(maps, [small, large], align_bodies=False)
    assert np.isclose(unaligned[25, 35], 0.5)


def test_alignment_with_equal_boxes_changes_nothing():
    image = _box_image(40, 200, 50, 100)
    boxes = view_boxes(image[0] > 0)
    ramp = np.tile(np.linspace(0.0, 1.0, 256), (256, 1))
    assert np.allclose(align(ramp, boxes, boxes), ramp)


def test_normalise_scales_to_one_and_keeps_zero_maps():
    assert normalise(np.zeros((4, 4))).max() == 0.0
    values = normalise(np.arange(1000.0).reshape(10, 100))
    assert values.max() == 1.0 and values.min() == 0.0 and values.dtype == np.float32


def test_the_body_outline_keeps_dim_limbs_and_drops_background_noise():
    rng = np.random.default_rng(4)
    image = np.clip(rng.normal(3.0, 2.0, (3, 256, 256)), 0, 255).astype(np.uint8)
    image[:2, 20:140, 40:110] = 150  # trunk: thick, bright projections
    image[:2, 140:250, 50:70] = 30  # a leg: a fifth of the trunk's signal
    mask = image_body_mask(image)
    assert mask[20:140, 40:110].all() and mask[140:250, 50:70].all()
    assert mask.sum() == 120 * 70 + 110 * 20


def test_a_cohort_without_body_outlines_is_averaged_unaligned():
    black = np.zeros((3, 256, 256), dtype=np.uint8)
    maps = [np.ones((256, 256)), np.zeros((256, 256))]
    mean_map, _, used = cohort_map(maps, [black, black], align_bodies=True)
    assert used == 2 and np.allclose(mean_map, 0.5)


def test_a_modules_map_is_the_mean_over_its_member_networks(trained):
    """An ensemble's map averages its members' maps (issue 15), here with two different networks."""
    from types import SimpleNamespace

    import torch

    from mimir.explain.pipeline import image_saliency, member_runners, members_saliency
    from mimir.explain.sanity import randomised
    from mimir.imaging.cache import image_path, load_image
    from mimir.inference.runner import network_input

    (runner,) = member_runners(trained.module, "cpu")  # a one-network module
    assert len(runner.networks) == 1
    other = SimpleNamespace(networks=[randomised(runner.network, 2)])
    images = torch.from_numpy(np.stack([load_image(image_path(trained.cache, stem)) for stem in trained.stems[:2]]))
    network_in = network_input(images, "cpu")
    first = members_saliency([runner], 0, network_in, "gradcam")
    second = members_saliency([other], 0, network_in, "gradcam")
    assert not np.allclose(first, second)
    np.testing.assert_allclose(members_saliency([runner, other], 0, network_in, "gradcam"), (first + second) / 2,
                               rtol=1e-5, atol=1e-7)
    ensemble = SimpleNamespace(networks=[runner.network, *other.networks])  # one runner, two members
    np.testing.assert_allclose(members_saliency([ensemble], 0, network_in, "gradcam"), (first + second) / 2,
                               rtol=1e-5, atol=1e-7)
    one = image_saliency(images[0].numpy(), [trained.module], TARGET, device="cpu")
    np.testing.assert_allclose(one, first[0], rtol=1e-5, atol=1e-7)
