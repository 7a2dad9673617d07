"""Ensemble modules (format 2): mixture arithmetic, round trip, member checks, --members, building."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimir.inference.module_build import build_ensemble, build_module_from_crossval
from mimir.inference.modules import (
    MemberSpec,
    ModuleBuildError,
    ModuleChecksumError,
    ModuleMemberCountError,
    ModuleSpec,
    ModuleSpecError,
    ModuleTruncatedError,
    Provenance,
    TargetSpec,
    inspect_module,
    load_module,
    members_to_run,
    module_digest,
    read_spec,
    save_ensemble,
    verify_module,
)
from mimir.inference.postprocess import combine_members, postprocess
from mimir.inference.predict import PredictOptions, run_prediction
from mimir.inference.runner import ModuleRunner
from mimir.runs.config import TrainConfig
from mimir.runs.layout import CrossvalFolder, RunFolder
from mimir.runs.standardization import Standardization

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

TARGETS = (
    TargetSpec("height", 50, "cm", "continuous", mean=170.0, sd=9.0, calibration=1.5, n_train=10),
    TargetSpec("weight", 21002, "kg", "continuous", mean=80.0, sd=14.0, calibration=0.5, n_train=10),
)
MEMBERS = (
    MemberSpec(mean=(170.0, 80.0), sd=(9.0, 14.0), n_train=(10, 10), source="fold_0"),
    MemberSpec(mean=(172.0, 78.0), sd=(10.0, 12.0), n_train=(10, 10), source="fold_1"),
    MemberSpec(mean=(168.0, 82.0), sd=(8.0, 16.0), n_train=(10, 10), source="fold_2"),
)


def _spec(members: tuple[MemberSpec, ...] = MEMBERS) -> ModuleSpec:
    return ModuleSpec(
        name="ens", architecture="resnet18", targets=TARGETS, provenance=Provenance("training"),
        input_pool=4, log_var_range=(-10.0, 10.0), members=members,
    )


def test_mixture_matches_a_hand_computation():
    spec = _spec(MEMBERS[:2])
    # one exam; member outputs (mean, log_var) per target, standardised
    raws = [np.array([[1.0, math.log(0.25), -0.5, 0.0]]), np.array([[0.0, 0.0, 0.5, math.log(4.0)]])]
    # height: member 0 -> mean 170 + 9 = 179, var 0.25 * 81 = 20.25; member 1 -> mean 172, var 100
    # weight: member 0 -> 80 - 7 = 73, var 196; member 1 -> 78 + 6 = 84, var 4 * 144 = 576
    mixture = combine_members(raws, spec)
    expected_mean = [(179 + 172) / 2, (73 + 84) / 2]
    aleatoric = np.array([(20.25 + 100) / 2, (196 + 576) / 2])
    epistemic = np.array([((179 - 175.5) ** 2 + (172 - 175.5) ** 2) / 2, ((73 - 78.5) ** 2 + (84 - 78.5) ** 2) / 2])
    calibration = np.array([1.5, 0.5])
    np.testing.assert_allclose(mixture.mean[0], expected_mean, rtol=1e-12)
    np.testing.assert_allclose(mixture.sd_aleatoric[0], np.sqrt(aleatoric * calibration), rtol=1e-12)
    np.testing.assert_allclose(mixture.sd_epistemic[0], np.sqrt(epistemic * calibration), rtol=1e-12)
    np.testing.assert_allclose(mixture.sd[0], np.sqrt((aleatoric + epistemic) * calibration), rtol=1e-12)
    np.testing.assert_allclose(mixture.sd**2, mixture.sd_aleatoric**2 + mixture.sd_epistemic**2, rtol=1e-12)


def test_one_member_mixture_is_exactly_postprocess():
    spec = dataclasses.replace(_spec(), members=())
    raw = np.random.default_rng(0).normal(size=(5, 4))
    mixture = combine_members([raw], spec)
    mean, sd = postprocess(raw, spec)
    assert np.array_equal(mixture.mean, mean) and np.array_equal(mixture.sd, sd)
    assert np.array_equal(mixture.sd_aleatoric, sd) and not mixture.sd_epistemic.any()


def _states(count: int) -> list[dict[str, torch.Tensor]]:
    images = np.stack([helpers.realistic_image(index) for index in range(4)])
    return [helpers.realistic_state(len(TARGETS), images, seed) for seed in range(count)]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_ensemble(_spec(), _states(3), tmp_path_factory.mktemp("ensemble") / "ens")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.stack([helpers.realistic_image(20 + index) for index in range(3)])


def test_format_2_round_trip(ensemble, images):
    spec = read_spec(ensemble)
    assert spec.format_version == 2 and spec.n_members == 3
    assert [member.file for member in spec.members] == ["weights.safetensors", "member_1.safetensors", "member_2.safetensors"]
    assert [member.source for member in spec.members] == ["fold_0", "fold_1", "fold_2"]
    assert spec.members[1].sd == (10.0, 12.0)
    for member in spec.members:
        assert member.bytes == (ensemble / member.file).stat().st_size
    loaded = load_module(ensemble)
    assert len(loaded.networks) == 3
    for network, state in zip(loaded.networks, _states(3), strict=True):
        assert all(torch.equal(network.state_dict()[key], value) for key, value in state.items())
    per_member = loaded.predict_members(images)
    mixture = loaded.predict_mixture(images)
    assert not np.allclose(per_member[0][0], per_member[1][0])  # the members differ
    np.testing.assert_allclose(mixture.mean, np.mean([mean for mean, _ in per_member], axis=0), rtol=1e-12)
    assert (mixture.sd_epistemic > 0).all()
    text, ok = inspect_module(ensemble)
    assert ok and "member networks: 3" in text and "member_2.safetensors" in text


def test_format_1_still_loads_as_one_member(tmp_path, images):
    path = helpers.make_module(tmp_path / "single", "single", helpers.BODY_TARGETS, seed=3)
    document = json.loads((path / "module.json").read_text())
    assert document["format_version"] == 1 and "members" not in document
    spec = read_spec(path)
    assert spec.n_members == 1 and spec.members == ()
    loaded = load_module(path)
    assert len(loaded.networks) == 1 and loaded.networks[0] is loaded.network
    mean, sd = loaded.predict_arrays(images)
    runner_mean, runner_sd = ModuleRunner(loaded).predict(torch.from_numpy(images))
    np.testing.assert_allclose(mean, runner_mean, rtol=1e-5)
    assert "member networks: 1" in inspect_module(path)[0]


def test_every_members_checksum_is_verified(ensemble, tmp_path):
    import shutil

    copy = tmp_path / "ens"
    shutil.copytree(ensemble, copy)
    data = bytearray((copy / "member_2.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "member_2.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModuleChecksumError, match="member_2.safetensors"):
        load_module(copy)
    with pytest.raises(ModuleChecksumError):
        verify_module(copy)
    text, ok = inspect_module(copy)
    assert not ok and "member_2" in text
    load_module(copy, members=2)  # the first two members are intact


def test_a_truncated_member_is_refused(ensemble, tmp_path):
    import shutil

    copy = tmp_path / "ens"
    shutil.copytree(ensemble, copy)
    data = (copy / "member_1.safetensors").read_bytes()
    (copy / "member_1.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModuleTruncatedError, match="member_1.safetensors"):
        load_module(copy)


def test_a_missing_member_list_or_file_name_is_refused(ensemble, tmp_path):
    import shutil

    copy = tmp_path / "ens"
    shutil.copytree(ensemble, copy)
    document = json.loads((copy / "module.json").read_text())
    document["members"][2]["file"] = "../elsewhere.safetensors"
    (copy / "module.json").write_text(json.dumps(document))
    with pytest.raises(ModuleSpecError, match="member_2.safetensors"):
        read_spec(copy)
    document["members"] = document["members"][:1]
    (copy / "module.json").write_text(json.dumps(document))
    with pytest.raises(ModuleSpecError, match="at least two"):
        read_spec(copy)


def test_members_k_uses_the_first_k(ensemble, images, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    for stem, image in zip(helpers.STEMS, images, strict=True):
        np.save(cache / f"{stem}.npy", image)
    loaded = load_module(ensemble)
    table = run_prediction([cache], [ensemble], PredictOptions(device="cpu", precision="float32", members=2)).table
    expected = loaded.predict_mixture(images, members=2)
    np.testing.assert_allclose(table["height"], expected.mean[:, 0], rtol=1e-5)
    np.testing.assert_allclose(table["weight_sd"], expected.sd[:, 1], rtol=1e-5)
    np.testing.assert_allclose(table["weight_sd_epistemic"], expected.sd_epistemic[:, 1], atol=1e-3)  # folded batch norm
    result = run_prediction([cache], [ensemble], PredictOptions(device="cpu", precision="float32"))
    assert result.module_members == {"ens": (3, 3)}
    full = loaded.predict_mixture(images)
    np.testing.assert_allclose(result.table["height_sd_aleatoric"], full.sd_aleatoric[:, 0], rtol=1e-5)
    assert not np.allclose(result.table["height"], table["height"])
    one = run_prediction([cache], [ensemble], PredictOptions(device="cpu", precision="float32", members=1)).table
    assert (one["height_sd_epistemic"] == 0).all()
    assert list(one.columns) == list(table.columns)
    with pytest.raises(ModuleMemberCountError):
        load_module(ensemble, members=4)
    with pytest.raises(ValueError):
        PredictOptions(members=0)


def test_single_member_tables_keep_their_columns(modules, cache):
    result = run_prediction([cache], modules[:1], PredictOptions(device="cpu", precision="float32", members=3))
    assert not [column for column in result.table.columns if "aleatoric" in column or "epistemic" in column]
    assert result.module_members == {read_spec(modules[0]).name: (1, 1)}  # --members 3 runs its one network


def test_members_to_run_caps_at_the_module(ensemble):
    spec = read_spec(ensemble)
    assert [members_to_run(spec, requested) for requested in (None, 1, 2, 3, 7)] == [3, 1, 2, 3, 3]


# building from run folders ----------------------------------------------------------------------
def _fake_run(folder: Path, state: dict[str, torch.Tensor], shift: float, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    run = RunFolder(folder)
    folder.mkdir(parents=True)
    config = TrainConfig.load("tiny").replace(modules={"ens": ["height", "weight"]}, seed=seed)
    run.config.write_text(config.to_toml())
    values = np.array([[170.0 + shift, 80.0], [180.0, 90.0 - shift], [160.0, 70.0]])
    run.standardization.write_text(Standardization.fit("ens", ["height", "weight"], values).to_json())
    save_file(state, str(run.weights))
    return folder


def _fake_crossval(folder: Path, states: list[dict[str, torch.Tensor]]) -> Path:
    layout = CrossvalFolder(folder)
    folder.mkdir()
    layout.splits.write_text(json.dumps({"folds": len(states)}))
    for fold, state in enumerate(states):
        run = _fake_run(layout.fold(fold).path, state, shift=fold)
        RunFolder(run).val_predictions.write_text("eid,instance\n")
        layout.fold(fold).done.write_text("{}")
    pd.DataFrame({"target": ["height", "weight"], "variance_scale": [1.2, 0.8]}).to_csv(layout.calibration, index=False)
    return folder


def test_build_from_crossval_packs_every_fold(tmp_path, images):
    states = _states(3)
    crossval = _fake_crossval(tmp_path / "cv", states)
    with pytest.raises(ModuleBuildError, match="ensemble"):
        build_module_from_crossval(crossval, tmp_path / "no", ensemble=False)
    module = build_module_from_crossval(crossval, tmp_path / "module")
    spec = read_spec(module)
    assert spec.n_members == 3 and [member.source for member in spec.members] == ["fold_0", "fold_1", "fold_2"]
    assert [target.calibration for target in spec.targets] == [1.2, 0.8]
    fold_1 = Standardization.from_json(CrossvalFolder(crossval).fold(1).standardization.read_text())
    assert spec.members[1].mean == tuple(fold_1.mean) and spec.members[1].sd == tuple(fold_1.sd)
    assert any("ensemble of 3" in note for note in spec.provenance.notes)
    # the fold network alone, through the module, equals its own standardisation's output
    loaded = load_module(module)
    raw = loaded.networks[1](torch.from_numpy(images).float()).detach().numpy()
    mean_units = raw[:, 0::2] * fold_1.sd + fold_1.mean
    np.testing.assert_allclose(loaded.predict_members(images)[1][0], mean_units, rtol=1e-4)


def test_an_unfinished_fold_is_refused(tmp_path):
    crossval = _fake_crossval(tmp_path / "cv", _states(2))
    CrossvalFolder(crossval).fold(1).done.unlink()
    with pytest.raises(ModuleBuildError, match=r"folds \[1\] are not finished"):
        build_module_from_crossval(crossval, tmp_path / "module")


def test_runs_with_other_seeds_make_an_ensemble_and_mismatches_are_refused(tmp_path):
    states = _states(2)
    runs = [_fake_run(tmp_path / f"seed_{seed}", state, shift=seed, seed=seed) for seed, state in enumerate(states)]
    module = build_ensemble(runs, None, tmp_path / "module")
    assert read_spec(module).n_members == 2
    single = build_ensemble(runs[:1], None, tmp_path / "single")
    assert read_spec(single).format_version == 1
    other = _fake_run(tmp_path / "other", states[0], shift=0)
    config = TrainConfig.from_toml(RunFolder(other).config).replace(input_pool=2)
    RunFolder(other).config.write_text(config.to_toml())
    with pytest.raises(ModuleBuildError, match="cannot join"):
        build_ensemble([runs[0], other], None, tmp_path / "mixed")


def test_the_module_command_builds_and_describes_an_ensemble(tmp_path, capsys):
    from mimir.cli import main

    crossval = _fake_crossval(tmp_path / "cv", _states(2))
    assert main(["-q", "module", "build", "--from-crossval", str(crossval), "--out", str(tmp_path / "no")]) == 2
    assert "--ensemble" in capsys.readouterr().err
    assert main(["-q", "module", "build", "--from-crossval", str(crossval), "--ensemble", "--out", str(tmp_path / "m")]) == 0
    assert "2 member networks" in capsys.readouterr().out
    assert main(["-q", "module", "info", str(tmp_path / "m")]) == 0
    assert "member networks: 2" in capsys.readouterr().out
    runs = [str(CrossvalFolder(crossval).fold(fold).path) for fold in range(2)]
    assert main(["-q", "module", "build", "--run", runs[0], "--run", runs[1], "--out", str(tmp_path / "seeds")]) == 0
    assert read_spec(tmp_path / "seeds").n_members == 2


def test_training_and_modules_share_one_de_standardisation():
    """A run's own predictions (Standardization.invert) and its module's (postprocess with factor
    1) are the same function, bit for bit, clamp and untrained targets included."""
    standardization = Standardization(
        "ens", ("height", "weight"), np.array([170.0, 80.0]), np.array([9.0, 14.0]), np.array([10, 0])
    )
    targets = tuple(
        dataclasses.replace(target, mean=mean, sd=sd, calibration=1.0, n_train=int(n))
        for target, mean, sd, n in zip(TARGETS, standardization.mean, standardization.sd, standardization.n_train, strict=True)
    )
    spec = dataclasses.replace(_spec(), targets=targets, members=(), log_var_range=None)
    raw = np.random.default_rng(1).normal(size=(6, 4)) * 3
    run_mean, run_sd = standardization.invert(raw[:, 0::2], raw[:, 1::2])
    module_mean, module_sd = postprocess(raw, spec)
    assert np.array_equal(run_mean, module_mean, equal_nan=True) and np.array_equal(run_sd, module_sd, equal_nan=True)
    assert np.isnan(module_mean[:, 1]).all()


def test_a_cluster_inference_task_runs_the_first_k_members(ensemble, images, tmp_path):
    from mimir.inference.batching import CachedExam
    from mimir.inference.cluster_prediction import InferenceJob, ModuleOnDisk, predict_batch

    exams = []
    for stem, image in zip(helpers.STEMS, images, strict=True):
        np.save(tmp_path / f"{stem}.npy", image)
        exams.append(CachedExam(stem, tmp_path / f"{stem}.npy"))
    module = (ModuleOnDisk(ensemble.absolute(), module_digest(ensemble)),)
    loaded = load_module(ensemble)
    for requested, expected_members in ((2, 2), (7, 3)):
        result = predict_batch(tuple(exams), InferenceJob(module, "cpu", "float32", requested))
        (mixture,) = result.prediction.mixtures
        expected = loaded.predict_mixture(images, members=expected_members)
        np.testing.assert_allclose(mixture.mean, expected.mean, rtol=1e-4)
        np.testing.assert_allclose(mixture.sd_epistemic, expected.sd_epistemic, atol=1e-3)  # folded batch norm
