"""The out-of-distribution description: fitting, scores, threshold, module files, prediction columns."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mimir.inference.modules import (
    OOD_FILE,
    ModuleOODError,
    ModuleSpec,
    Provenance,
    load_module,
    read_ood,
    read_spec,
    save_module,
    verify_module,
)
from mimir.inference.ood import (
    DEFAULT_FEATURES,
    OODDescription,
    OODError,
    extract_features,
    feature_parts,
    fit_description,
    image_features,
)
from mimir.network import images_to_input

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)


def _gaussian(n: int, seed: int, dim: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mixing + 3.0


@pytest.fixture(scope="module")
def description() -> OODDescription:
    return fit_description(_gaussian(200, 1), _gaussian(100, 2), "image", n_components=8)


def test_scores_are_percentiles_of_training_distances_and_rise_with_distance(description):
    distances = np.linspace(0.0, 3 * description.reference.max(), 500)
    scores = description.score(distances)
    assert np.all(np.diff(scores) >= 0)
    assert scores[0] == 0.0 and scores[-1] == 100.0
    middle = float(np.median(description.reference))
    assert description.score(np.array([middle]))[0] == pytest.approx(50.0, abs=1.0)
    assert np.isnan(description.score(np.array([np.nan]))[0])


def test_flag_is_exactly_beyond_the_recorded_threshold(description):
    t = description.threshold
    assert list(description.flagged(np.array([t * 0.999, t, t * 1.001, np.nan]))) == [False, False, True, False]
    assert description.threshold_source == "held-out" and description.n_held_out == 100
    held = description.distances(_gaussian(100, 2))
    assert np.mean(description.flagged(held)) == pytest.approx(0.01, abs=0.011)


def test_unseen_exams_of_the_same_distribution_are_rarely_flagged_and_shifted_ones_are(description):
    fresh = _gaussian(400, 3)
    assert np.mean(description.flagged(description.distances(fresh))) < 0.05
    # Shifted along a direction the training set barely varies in: seen by the residual term.
    shifted = fresh + 2.0 * np.random.default_rng(4).normal(size=fresh.shape[1])
    assert np.mean(description.flagged(description.distances(shifted))) > 0.9


def test_without_held_out_exams_the_threshold_comes_from_cross_fitted_training_distances():
    described = fit_description(_gaussian(100, 1), None, "image", n_components=8)
    assert described.threshold_source == "cross-fitted training" and described.n_held_out == 0
    assert described.threshold == pytest.approx(float(np.percentile(described.reference, 99)))


def test_too_few_exams_and_unknown_features_are_refused():
    with pytest.raises(OODError, match="at least"):
        fit_description(_gaussian(5, 1), None, "image")
    with pytest.raises(OODError, match="unknown OOD features"):
        feature_parts("penultimate+pixels")


def test_description_round_trips_through_its_bytes(description):
    copy = OODDescription.from_parts(description.summary(), description.to_bytes())
    probe = _gaussian(20, 7)
    assert np.array_equal(copy.distances(probe), description.distances(probe))
    assert np.array_equal(copy.reference, description.reference) and copy.threshold == description.threshold
    with pytest.raises(OODError, match="not a readable"):
        OODDescription.from_parts(description.summary(), b"garbage")


def test_image_features_pool_each_channel():
    images = np.zeros((1, 3, 256, 256), dtype=np.uint8)
    images[0, 1, :16, :16] = 255
    values = image_features(images)
    assert values.shape == (1, 768)
    assert values[0, 256] == 1.0 and values[0].sum() == 1.0


def test_network_features_penultimate_is_what_the_final_layer_reads():
    network = _network()
    images = images_to_input(torch.from_numpy(np.stack([helpers.realistic_image(3)])))
    with torch.no_grad():
        penultimate = network.features(images, ("layer4",))
        assert torch.allclose(network.fc(penultimate), network(images), atol=1e-5)
        both = network.features(images, ("layer3", "layer4"), with_sd=True, pool_input=False)
    assert both.shape == (1, 2 * (256 + 512))
    combined = extract_features(network, images, "penultimate+image")
    assert combined.shape == (1, 512 + 768)


def _network():
    from mimir.network import MeanVarianceResNet

    network = MeanVarianceResNet("resnet18", 1, input_pool=4)
    network.load_state_dict(helpers.realistic_state(1, np.stack([helpers.realistic_image(i) for i in range(4)]), 0))
    return network.eval()


# module files and prediction -----------------------------------------------------------------------
def _training_images(n: int, start: int = 100) -> np.ndarray:
    return np.stack([helpers.realistic_image(start + index) for index in range(n)])


@pytest.fixture(scope="module")
def ood_module(tmp_path_factory) -> Path:
    """The organs module of the fixtures plus a description of 40 body-like images (10 held out)."""
    folder = tmp_path_factory.mktemp("ood")
    plain = helpers.make_module(folder / "plain", "organs", helpers.ORGAN_TARGETS, seed=2)
    network = load_module(plain).network
    features = extract_features(network, images_to_input(torch.from_numpy(_training_images(40))), "penultimate+image")
    described = fit_description(features[:30], features[30:], "penultimate+image", n_components=6)
    state = network.state_dict()
    return save_module(read_spec(plain), state, folder / "with_ood", ood=described)


def test_module_records_the_description_and_its_checksum(ood_module):
    spec = verify_module(ood_module)
    assert spec.ood is not None and spec.ood["file"] == OOD_FILE and spec.ood["n_train"] == 30
    assert spec.ood["n_held_out"] == 10 and spec.ood["threshold_source"] == "held-out"
    described = read_ood(ood_module)
    assert described is not None and described.threshold == spec.ood["threshold"]
    plain = ood_module.parent / "plain"
    assert read_ood(plain) is None and "ood" not in json.loads((plain / "module.json").read_text())


def test_an_altered_or_missing_description_is_refused(ood_module, tmp_path):
    import shutil

    altered = shutil.copytree(ood_module, tmp_path / "altered")
    data = bytearray((altered / OOD_FILE).read_bytes())
    data[-1] ^= 1
    (altered / OOD_FILE).write_bytes(bytes(data))
    with pytest.raises(ModuleOODError, match="does not match module.json"):
        verify_module(altered)
    with pytest.raises(ModuleOODError):
        read_ood(altered)
    (altered / OOD_FILE).unlink()
    with pytest.raises(ModuleOODError, match="is missing"):
        verify_module(altered)


def test_spec_without_ood_writes_no_ood_key():
    from mimir.inference.modules import TargetSpec

    spec = ModuleSpec("m", "resnet18", (TargetSpec("height", 50, "cm", "continuous", 170.0, 9.0),), Provenance("training"),
                      weights_sha256="0" * 64)
    assert "ood" not in json.loads(spec.to_json())
    assert ModuleSpec.from_json(spec.to_json()).ood is None


def test_prediction_gains_ood_columns_only_with_a_description_and_keeps_its_values(ood_module, tmp_path):
    from mimir.inference.predict import PredictOptions, predict

    cache = tmp_path / "cache"
    cache.mkdir()
    for index, stem in enumerate(helpers.STEMS):
        np.save(cache / f"{stem}.npy", helpers.realistic_image(200 + index))
    options = PredictOptions(device="cpu", workers=1)
    plain = predict([cache], [ood_module.parent / "plain"], options)
    flagged = predict([cache], [ood_module], options)
    assert "ood_score" not in plain.columns and "ood_flag" not in plain.columns
    assert list(flagged.columns) == [*plain.columns, "ood_score", "ood_flag"]
    assert flagged[list(plain.columns)].equals(plain)
    assert flagged["ood_score"].between(0, 100).all()


def test_perturbed_images_score_higher_than_unseen_ones(ood_module, tmp_path):
    from mimir.inference.predict import PredictOptions, predict

    fresh = _training_images(6, start=300)
    variants = {
        "fresh": fresh,
        "swapped": fresh[:, [1, 0, 2]],
        "flipped": fresh[:, :, ::-1],
        "zeroed": np.where((np.arange(256) // 64 == 1)[None, None, :, None], 0, fresh).astype(np.uint8),
    }
    scores = {}
    for name, images in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        for index, image in enumerate(images):
            np.save(folder / f"{5000000 + index}_20201_2_0.npy", np.ascontiguousarray(image))
        table = predict([folder], [ood_module], PredictOptions(device="cpu", workers=1))
        scores[name] = table["ood_score"].to_numpy()
        if name != "fresh":
            assert (table["ood_flag"] == "organs").all(), name
    for name in ("swapped", "flipped", "zeroed"):
        assert scores[name].min() > np.median(scores["fresh"]), name


def test_build_describes_the_run_cache_with_its_validation_exams_held_out(tmp_path):
    from safetensors.torch import save_file

    from mimir.inference.module_build import build_module
    from mimir.inference.modules import ModuleMissingFileError
    from mimir.runs.config import TrainConfig
    from mimir.runs.standardization import Standardization

    run = tmp_path / "run"
    run.mkdir()
    state = helpers.realistic_state(2, _training_images(4), 0)
    save_file({key: value.contiguous() for key, value in state.items()}, str(run / "weights.safetensors"))
    standardization = Standardization("organs", ("liverFat", "liverVolume"), np.array([5.0, 1.6]), np.array([4.0, 0.3]), np.array([40, 38]))
    (run / "standardization.json").write_text(standardization.to_json())
    TrainConfig(architecture="resnet18", input_pool=4).write_toml(run / "config.toml")
    cache = tmp_path / "cache"
    cache.mkdir()
    eids = [4000000 + index for index in range(30)]
    for index, eid in enumerate(eids):
        np.save(cache / f"{eid}_20201_2_0.npy", helpers.realistic_image(400 + index))

    without_validation = build_module(run, None, tmp_path / "cross_fitted", images=cache, ood_features="image")
    assert read_spec(without_validation).ood["threshold_source"] == "cross-fitted training"

    (run / "val_predictions.csv").write_text("eid,instance,liverFat,liverFat_sd\n" + "".join(f"{eid},2,1,1\n" for eid in eids[:8]))
    module = build_module(run, None, tmp_path / "held_out", images=cache)
    spec = verify_module(module)
    assert spec.ood["n_train"] == 22 and spec.ood["n_held_out"] == 8
    assert spec.ood["threshold_source"] == "held-out" and spec.ood["features"] == DEFAULT_FEATURES
    assert spec.provenance.data["ood_images"] == "cache"
    with pytest.raises(ModuleMissingFileError, match="image cache not found"):
        build_module(run, None, tmp_path / "none", images=tmp_path / "absent")


def test_an_ensemble_carries_member_zeros_description_and_predicts_both_kinds_of_columns(tmp_path):
    from safetensors.torch import save_file

    from mimir.cli import main
    from mimir.inference.module_build import build_ensemble
    from mimir.inference.predict import PredictOptions, predict
    from mimir.runs.config import TrainConfig
    from mimir.runs.standardization import Standardization

    runs = []
    for member in range(2):
        run = tmp_path / f"run{member}"
        run.mkdir()
        state = helpers.realistic_state(2, _training_images(4), member)
        save_file({key: value.contiguous() for key, value in state.items()}, str(run / "weights.safetensors"))
        standardization = Standardization("organs", ("liverFat", "liverVolume"), np.array([5.0, 1.6]),
                                          np.array([4.0, 0.3]), np.array([40, 38]))
        (run / "standardization.json").write_text(standardization.to_json())
        TrainConfig(architecture="resnet18", input_pool=4).write_toml(run / "config.toml")
        runs.append(run)
    cache = tmp_path / "cache"
    cache.mkdir()
    for index in range(24):
        np.save(cache / f"{4000000 + index}_20201_2_0.npy", helpers.realistic_image(400 + index))
    module = build_ensemble(runs, None, tmp_path / "ensemble", images=cache, ood_features="image")
    spec = verify_module(module)
    assert spec.n_members == 2 and spec.ood is not None and spec.ood["n_train"] + spec.ood.get("n_held_out", 0) == 24
    table = predict([cache], [module], PredictOptions(device="cpu", workers=1))
    assert {"liverVolume_sd_aleatoric", "liverVolume_sd_epistemic", "ood_score", "ood_flag"} <= set(table.columns)
    assert list(table.columns)[-2:] == ["ood_score", "ood_flag"]
    assert table["ood_score"].between(0, 100).all()
    # the folds of a cross-validation were trained on other exams than any one cache split
    assert main(["-q", "module", "build", "--from-crossval", str(tmp_path), "--ensemble", "--training-cache", str(cache),
                 "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()


# image statistics and blocks -------------------------------------------------------------------------
def _body(seed: int, *, noise: float = 1.0, fat_signal: float = 1.0, water_signal: float = 1.0) -> np.ndarray:
    """A body-like (3, 256, 256) image made as the cache's are: water and fat projections (each
    scaled to its own maximum, noise floor outside the body), fat fraction in the body and noise
    outside; wider at the head than at the feet, a liver on one side, so it is not symmetric."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:256, :256].astype(np.float64)
    centre, half_width = 75 + rng.uniform(-4, 4), (40 + rng.uniform(-5, 5)) * (1 - 0.35 * rows / 255)
    body = (np.abs(columns - centre) < half_width) & (rows > 10) & (rows < 245)
    inner = body & (np.abs(columns - centre) < half_width - 8)
    liver = inner & (rows > 60) & (rows < 110) & (columns > centre)
    sigma = 3.0 * noise * rng.uniform(0.8, 1.2)
    water = water_signal * rng.uniform(0.9, 1.1) * (30.0 * body + 70.0 * inner + 60.0 * liver)
    fat = fat_signal * rng.uniform(0.95, 1.05) * (100.0 * (body & ~inner) + 8.0 * inner)
    water, fat = (np.abs(values + rng.normal(0, sigma, values.shape)) for values in (water, fat))
    fraction = np.where(body, fat / np.maximum(water + fat, 1e-6), rng.uniform(0, 1, body.shape))
    image = np.stack([255 * water / water.max(), 255 * fat / fat.max(), 255 * np.clip(fraction / 0.5, 0, 1)])
    return image.astype(np.uint8)


STATISTICS_SIZES = {"intensity": 48, "noise": 25, "background": 4, "contrast": 1, "profile": 99}


@pytest.mark.parametrize("kind", sorted(STATISTICS_SIZES))
def test_image_statistics_have_their_size_are_deterministic_and_see_the_image(kind):
    from mimir.inference.ood import IMAGE_STATISTICS

    images = np.stack([_body(seed) for seed in range(3)])
    values = IMAGE_STATISTICS[kind](images)
    assert values.shape == (3, STATISTICS_SIZES[kind]) and np.all(np.isfinite(values))
    assert np.array_equal(values, IMAGE_STATISTICS[kind](images.copy()))
    assert not np.array_equal(values[0], values[1])
    network_free = extract_features(torch.nn.Identity(), images_to_input(torch.from_numpy(images)), kind)
    assert np.allclose(network_free, values)
    with pytest.raises(OODError, match="need"):
        IMAGE_STATISTICS[kind](images[:, :2])


def _perturbed(kind: str, seeds: range) -> np.ndarray:
    if kind == "flipped":
        return np.stack([_body(seed)[:, ::-1] for seed in seeds])
    if kind == "noisy":
        return np.stack([_body(seed, noise=4.0) for seed in seeds])
    return np.stack([_body(seed, fat_signal=0.6, water_signal=1.6) for seed in seeds])  # contrast


@pytest.mark.parametrize(
    ("kind", "perturbation"),
    [("intensity", "contrast"), ("noise", "noisy"), ("noise", "flipped"), ("background", "contrast"),
     ("background", "noisy"), ("contrast", "contrast"), ("profile", "flipped")],
)
def test_each_statistic_puts_its_perturbation_farther_than_fresh_images(kind, perturbation):
    from mimir.inference.ood import IMAGE_STATISTICS

    statistic = IMAGE_STATISTICS[kind]
    described = fit_description(statistic(np.stack([_body(seed) for seed in range(40)])), None, kind)
    fresh = described.distances(statistic(np.stack([_body(seed) for seed in range(100, 110)])))
    shifted = described.distances(statistic(_perturbed(perturbation, range(100, 110))))
    assert shifted.min() > np.median(fresh), (kind, perturbation)
    assert np.mean(described.flagged(shifted)) > np.mean(described.flagged(fresh))


@pytest.fixture(scope="module")
def blocks() -> OODDescription:
    from mimir.inference.ood import IMAGE_STATISTICS

    kinds = ("image", "intensity", "noise", "background", "contrast", "profile")
    images = np.stack([_body(seed) for seed in range(60)])
    parts = [IMAGE_STATISTICS[kind](images) for kind in kinds]
    values = np.concatenate(parts, axis=1)
    return fit_description(values[:45], values[45:], ",".join(kinds), block_sizes=[part.shape[1] for part in parts])


def _block_features(images: np.ndarray, features: str) -> np.ndarray:
    return extract_features(torch.nn.Identity(), images_to_input(torch.from_numpy(np.ascontiguousarray(images))), features)


def test_blocks_combine_as_the_largest_distance_in_units_of_each_blocks_spread(blocks):
    assert blocks.block_sizes == [768, 48, 25, 4, 1, 99] and len(blocks.units) == 6
    probe = _block_features(np.stack([_body(seed) for seed in range(200, 204)]), blocks.features)
    separate = blocks.block_distances(probe)
    expected = np.max([distance / unit for distance, unit in zip(separate, blocks.units, strict=True)], axis=0)
    assert np.array_equal(blocks.distances(probe), expected)
    # the cross-fitted training distances are on the same scale: about one unit at the 90th percentile
    assert float(np.percentile(blocks.reference, 90)) >= 1.0
    for perturbation in ("flipped", "noisy", "contrast"):
        shifted = blocks.distances(_block_features(_perturbed(perturbation, range(200, 210)), blocks.features))
        assert blocks.flagged(shifted).all(), perturbation
    fresh = blocks.distances(_block_features(np.stack([_body(seed) for seed in range(300, 340)]), blocks.features))
    assert np.mean(blocks.flagged(fresh)) <= 0.1


def test_a_block_description_round_trips_and_records_its_blocks(blocks):
    summary = blocks.summary()
    assert [block["features"] for block in summary["blocks"]] == blocks.features.split(",")
    assert summary["n_features"] == sum(blocks.block_sizes) and "residual_rms" not in summary
    json.dumps(summary)
    copy = OODDescription.from_parts(summary, blocks.to_bytes())
    probe = _block_features(np.stack([_body(seed) for seed in range(400, 403)]), blocks.features)
    assert np.array_equal(copy.distances(probe), blocks.distances(probe)) and copy.units == blocks.units
    with pytest.raises(OODError, match="not a readable"):
        OODDescription.from_parts({**summary, "blocks": summary["blocks"][:2]}, blocks.to_bytes())


def test_a_description_in_the_original_layout_loads_and_scores_as_before(description):
    """One block keeps the file layout and summary keys of the first modules with descriptions."""
    from safetensors.numpy import load

    from mimir.inference.ood import _Reduction

    data = description.to_bytes()
    assert set(load(data)) == {"feature_mean", "feature_scale", "components", "location", "precision", "reference"}
    assert set(description.summary()) == {
        "features", "n_components", "n_features", "n_train", "n_held_out", "percentile", "threshold",
        "threshold_source", "residual_rms",
    }
    arrays = load(data)
    original = _Reduction(
        arrays["feature_mean"], arrays["feature_scale"], arrays["components"], arrays["location"], arrays["precision"],
        description.summary()["residual_rms"],
    )
    probe = _gaussian(30, 8)
    loaded = OODDescription.from_parts(description.summary(), data)
    assert np.array_equal(loaded.distances(probe), original.distances(probe))


def test_block_sizes_must_split_the_features_and_kinds_appear_once():
    values = _gaussian(40, 1)
    with pytest.raises(OODError, match="block sizes"):
        fit_description(values, None, "image,noise")
    with pytest.raises(OODError, match="block sizes"):
        fit_description(values, None, "image,noise", block_sizes=[30, 5])
    with pytest.raises(OODError, match="twice"):
        feature_parts("image,image")
    assert len(feature_parts("stages+image,noise,background")) == 4


def test_held_out_images_join_the_validation_exams_and_must_be_unseen(tmp_path):
    from safetensors.torch import save_file

    from mimir.cli import main
    from mimir.inference.module_build import build_module
    from mimir.inference.modules import ModuleBuildError
    from mimir.runs.config import TrainConfig
    from mimir.runs.standardization import Standardization

    run = tmp_path / "run"
    run.mkdir()
    state = helpers.realistic_state(2, _training_images(4), 0)
    save_file({key: value.contiguous() for key, value in state.items()}, str(run / "weights.safetensors"))
    standardization = Standardization("organs", ("liverFat", "liverVolume"), np.array([5.0, 1.6]), np.array([4.0, 0.3]), np.array([40, 38]))
    (run / "standardization.json").write_text(standardization.to_json())
    TrainConfig(architecture="resnet18", input_pool=4).write_toml(run / "config.toml")
    cache, held = tmp_path / "cache", tmp_path / "held"
    cache.mkdir()
    held.mkdir()
    for index in range(24):
        np.save(cache / f"{4000000 + index}_20201_2_0.npy", _body(500 + index))
    (run / "val_predictions.csv").write_text("eid,instance,liverFat,liverFat_sd\n" + "".join(f"{4000000 + i},2,1,1\n" for i in range(4)))
    for index in range(6):
        np.save(held / f"{4100000 + index}_20201_2_0.npy", _body(600 + index))
    module = build_module(run, None, tmp_path / "m", images=cache, held_out_images=held, ood_features="image,noise,background")
    spec = verify_module(module)
    assert spec.ood["n_train"] == 20 and spec.ood["n_held_out"] == 10 and spec.ood["threshold_source"] == "held-out"
    assert [block["features"] for block in spec.ood["blocks"]] == ["image", "noise", "background"]
    assert spec.provenance.data["ood_held_out_images"] == "held"
    described = read_ood(module)
    assert described is not None and described.block_sizes == [768, 25, 4]
    # an exam the network trained on is not held out
    np.save(held / "4000010_20201_2_0.npy", _body(510))
    with pytest.raises(ModuleBuildError, match="also training exams"):
        build_module(run, None, tmp_path / "m2", images=cache, held_out_images=held, ood_features="image")
    assert main(["-q", "module", "build", "--run", str(run), "--held-out-cache", str(held), "--out", str(tmp_path / "m3")]) == 2
    with pytest.raises(ModuleBuildError, match="only set the OOD threshold"):
        build_module(run, None, tmp_path / "m4", held_out_images=held)
    assert not (tmp_path / "m4").exists()


def test_the_module_build_help_names_the_default_features():
    from mimir.cli import build_parser

    parser = build_parser()
    module_parser = parser._subparsers._group_actions[0].choices["module"]
    build = module_parser._subparsers._group_actions[0].choices["build"]
    help_text = " ".join(build.format_help().split())
    assert f"default {DEFAULT_FEATURES}," in help_text
