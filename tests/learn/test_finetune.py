"""Fine-tuning from a module: copied backbone, re-scaled head rows, freezing, the backbone learning
rate, the Trainer's extension points, run records, the CLI and resume."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mimir.inference.module_build import build_module
from mimir.inference.modules import load_module, read_spec
from mimir.learn.finetune import (
    InitModuleError,
    SourceNetwork,
    copy_head_rows,
    first_member,
    is_module,
    network_from_module,
)
from mimir.learn.train import RunFolderError, Trainer, train
from mimir.network import build_network, split_output
from mimir.runs.config import ConfigError, TrainConfig
from mimir.runs.standardization import Standardization

N_EXAMS = 12


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(
        architecture="resnet18", init="scratch", input_pool=8, autocast="float32", batch_size=4,
        iterations=4, learning_rate=1e-3, lr_milestones=[], checkpoint_every=2, log_every=1,
        eval_batch_size=8, deterministic=True, seed=3, max_shift=2,
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Images whose brightness sets age, height and weight."""
    root = tmp_path_factory.mktemp("finetune_cohort")
    cache = root / "cache"
    cache.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(N_EXAMS):
        brightness = 20 + 200 * i / (N_EXAMS - 1)
        np.save(cache / f"{2_000_000 + i}_20201_2_0.npy", np.clip(rng.normal(brightness, 10, (3, 256, 256)), 0, 255).astype(np.uint8))
        rows.append({"eid": 2_000_000 + i, "instance": 2, "age": 40 + brightness / 8, "height": 150 + brightness / 4,
                     "weight": 60 + brightness / 5})
    pd.DataFrame(rows).to_csv(root / "targets.csv", index=False)
    return cache, root / "targets.csv"


@pytest.fixture(scope="module")
def source_module(cohort, tmp_path_factory):
    """A module for (age, height), built from a short run."""
    cache, targets = cohort
    root = tmp_path_factory.mktemp("source")
    config = tiny_config(modules={"older": ["age", "height"]})
    train(config, cache, targets, "older", root / "run", device="cpu")
    return build_module(root / "run", None, root / "module", "older")


def _standardization(targets, mean, sd):
    return Standardization("newer", tuple(targets), np.array(mean, float), np.array(sd, float), np.full(len(targets), 10))


def _image_batch():
    rng = np.random.default_rng(7)
    return torch.from_numpy(rng.integers(0, 255, (2, 3, 256, 256)).astype(np.float32))


def test_a_module_folder_or_archive_is_recognised_and_a_weights_file_is_not(source_module, tmp_path):
    assert is_module(str(source_module))
    archive = shutil.make_archive(str(tmp_path / "module"), "tar", source_module.parent, source_module.name)
    assert is_module(archive)
    assert not is_module(str(source_module / "weights.safetensors"))
    assert not is_module("imagenet") and not is_module("scratch") and not is_module(str(tmp_path / "absent"))


def test_backbone_copied_shared_rows_rescaled_new_rows_fresh(source_module):
    source = first_member(source_module)
    spec = read_spec(source_module)
    age = spec.targets[0]
    assert age.name == "age"
    # the new run: weight is new, age is shared with another mean and sd than the module's
    new = _standardization(["weight", "age"], [80.0, age.mean + 3.0], [7.0, age.sd * 2.0])
    config = tiny_config()
    torch.manual_seed(11)
    network, record = network_from_module(source_module, config, new)
    torch.manual_seed(11)
    fresh = build_network("resnet18", 2, input_pool=config.input_pool)

    old_state, state = source.network.state_dict(), network.state_dict()
    for key in old_state:
        if not key.startswith("fc."):
            assert torch.equal(state[key], old_state[key]), key
    # weight (rows 0, 1) keeps the seeded fresh initialisation
    assert torch.equal(state["fc.weight"][:2], fresh.state_dict()["fc.weight"][:2])
    assert torch.equal(state["fc.bias"][:2], fresh.state_dict()["fc.bias"][:2])
    # age (rows 2, 3) is the module's rows 0, 1, re-scaled: sd_old / sd_new = 0.5
    scale, offset = 0.5, (age.mean - (age.mean + 3.0)) / (age.sd * 2.0)
    torch.testing.assert_close(state["fc.weight"][2], old_state["fc.weight"][0] * scale)
    torch.testing.assert_close(state["fc.bias"][2], old_state["fc.bias"][0] * scale + offset)
    torch.testing.assert_close(state["fc.weight"][3], old_state["fc.weight"][1])
    torch.testing.assert_close(state["fc.bias"][3], old_state["fc.bias"][1] + 2 * math.log(scale))
    assert record.copied_targets == ("age",) and record.fresh_targets == ("weight",)
    assert record.module == "older" and record.weights_sha256 == spec.weights_sha256

    # what matters: the copied target's prediction in years is the module's, mean and sd
    images = _image_batch()
    network.eval()
    with torch.no_grad():
        old_mean, old_log_var = split_output(source.network(images).double(), (-50.0, 50.0))
        new_mean, new_log_var = split_output(network(images).double(), (-50.0, 50.0))
    torch.testing.assert_close(new_mean[:, 1] * new.sd[1] + new.mean[1], old_mean[:, 0] * age.sd + age.mean)
    torch.testing.assert_close(torch.exp(0.5 * new_log_var[:, 1]) * new.sd[1], torch.exp(0.5 * old_log_var[:, 0]) * age.sd)


def test_rows_of_a_target_the_module_never_learnt_are_not_copied():
    torch.manual_seed(0)
    old = build_network("resnet18", 2, input_pool=8)
    source = SourceNetwork(
        name="m", path=None, weights_sha256="0" * 64, architecture="resnet18", input_pool=8, targets=("age", "height"),
        mean=np.zeros(2), sd=np.ones(2), trained=np.array([True, False]), network=old,
    )
    network = build_network("resnet18", 2, input_pool=8)
    before = network.fc.weight.detach().clone()
    copied = copy_head_rows(network, source, _standardization(["height", "age"], [0, 0], [1, 1]))
    assert copied == ("age",)
    assert torch.equal(network.fc.weight[:2], before[:2])
    assert torch.equal(network.fc.weight[2:], old.fc.weight[:2])


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"architecture": "resnet34"}, "is a resnet18.*architecture = \"resnet18\""), ({"input_pool": 4}, "input_pool = 8")],
)
def test_a_module_of_another_network_is_a_clear_error(source_module, cohort, tmp_path, changes, message):
    cache, targets = cohort
    config = tiny_config(init=str(source_module), modules={"newer": ["weight"]}, **changes)
    with pytest.raises(InitModuleError, match=message):
        train(config, cache, targets, "newer", tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "config.toml").exists()  # a failed start leaves no run behind


def _steps(trainer, network, n=3):
    images = _image_batch()
    targets = torch.zeros(2, network.n_targets)
    for _ in range(n):
        trainer.train_step(network, images, targets, 1e-2)


@pytest.mark.parametrize("mode", ["stem", "backbone"])
def test_frozen_parts_stay_exactly_as_they_were_and_keep_their_batch_norm_statistics(mode):
    torch.manual_seed(0)
    network = build_network("resnet18", 1, input_pool=8)
    before = {key: tensor.clone() for key, tensor in network.state_dict().items()}
    trainer = Trainer(tiny_config(init="imagenet", freeze=mode), network, torch.device("cpu"), None)
    _steps(trainer, network)
    frozen_prefixes = ("conv1.", "bn1.") if mode == "stem" else ("conv1.", "bn1.", "layer")
    after = network.state_dict()
    for key, tensor in before.items():
        if key.startswith(frozen_prefixes):
            assert torch.equal(after[key], tensor), key  # weights and running statistics
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    if mode == "stem":  # the rest learns, and its batch norms follow the batches
        assert not torch.equal(after["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
        assert not torch.equal(after["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(network.conv1.weight) not in optimised and id(network.fc.weight) in optimised
    assert not network.bn1.training and network.fc.training


def test_without_freezing_every_batch_norm_learns_statistics():
    torch.manual_seed(0)
    network = build_network("resnet18", 1, input_pool=8)
    before = network.bn1.running_mean.clone()
    _steps(Trainer(tiny_config(), network, torch.device("cpu"), None), network, n=1)
    assert not torch.equal(network.bn1.running_mean, before) and network.bn1.training


def test_backbone_learning_rate_factor_is_in_the_parameter_groups():
    network = build_network("resnet18", 2, input_pool=8)
    trainer = Trainer(tiny_config(backbone_lr_factor=0.1, learning_rate=2e-3), network, torch.device("cpu"), None)
    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert set(groups) == {"backbone", "head"}
    assert groups["backbone"]["lr"] == pytest.approx(2e-4) and groups["head"]["lr"] == pytest.approx(2e-3)
    assert {id(p) for p in groups["head"]["params"]} == {id(network.fc.weight), id(network.fc.bias)}
    assert len(groups["backbone"]["params"]) == len(list(network.parameters())) - 2
    trainer.set_learning_rate(1e-4)
    assert groups["backbone"]["lr"] == pytest.approx(1e-5) and groups["head"]["lr"] == pytest.approx(1e-4)
    frozen = Trainer(tiny_config(init="imagenet", freeze="backbone"), build_network("resnet18", 2, input_pool=8),
                     torch.device("cpu"), None)
    assert [group["name"] for group in frozen.optimizer.param_groups] == ["head"]


def test_config_checks_freeze_and_the_factor_and_round_trips_them(tmp_path):
    with pytest.raises(ConfigError, match="freeze 'all' unknown"):
        tiny_config(init="imagenet", freeze="all")
    with pytest.raises(ConfigError, match="random weights"):
        tiny_config(freeze="stem")
    with pytest.raises(ConfigError, match="backbone_lr_factor must be positive"):
        tiny_config(backbone_lr_factor=0.0)
    config = tiny_config(init="some/module", freeze="backbone", backbone_lr_factor=0.25)
    config.write_toml(tmp_path / "c.toml")
    assert TrainConfig.from_toml(tmp_path / "c.toml") == config


def test_a_trainer_subclass_replaces_the_optimizer_and_the_step(cohort, tmp_path):
    cache, targets = cohort
    calls = []

    class SgdTrainer(Trainer):
        def build_optimizer(self, network):
            return torch.optim.SGD(self.parameter_groups(network), lr=self.config.learning_rate)

        def train_step(self, network, batch, targets, learning_rate):
            calls.append(learning_rate)
            return super().train_step(network, batch, targets, learning_rate)

    train(tiny_config(), cache, targets, "age", tmp_path / "run", device="cpu", trainer_class=SgdTrainer)
    assert calls == [1e-3] * 4
    state = torch.load(tmp_path / "run" / "checkpoints" / "iter_0000004.state.pt", weights_only=True)
    assert "momentum" in state["optimizer"]["param_groups"][0]  # SGD's, not Adam's betas


def test_cli_init_module_records_it_in_the_run_and_in_a_module_built_from_it(source_module, cohort, tmp_path, capsys):
    from mimir.cli import main

    cache, targets = cohort
    config_path = tmp_path / "tiny.toml"
    tiny_config(modules={"newer": ["weight", "age"]}).write_toml(config_path)
    run = tmp_path / "run"
    code = main([
        "train", "--cache", str(cache), "--targets", str(targets), "--module", "newer", "--config", str(config_path),
        "--out", str(run), "--device", "cpu", "--init", str(source_module), "--freeze", "stem", "-q",
    ])
    assert code == 0
    config = TrainConfig.from_toml(run / "config.toml")
    assert config.init == str(source_module) and config.freeze == "stem"
    sha256 = read_spec(source_module).weights_sha256
    init = json.loads((run / "run.json").read_text())["init"]
    assert init["module"] == "older" and init["weights_sha256"] == sha256
    assert init["copied_targets"] == ["age"] and init["fresh_targets"] == ["weight"]
    # the stem was frozen: the final weights hold the module's conv1
    final = load_file(str(run / "weights.safetensors"))
    assert torch.equal(final["conv1.weight"], load_module(source_module).network.state_dict()["conv1.weight"])
    built = build_module(run, None, tmp_path / "module")
    provenance = read_spec(built).provenance
    assert provenance.data["run"]["init"]["weights_sha256"] == sha256
    assert provenance.config["init"] == str(source_module)


def test_resume_after_init_continues_without_reading_the_module_again(source_module, cohort, tmp_path):
    cache, targets = cohort
    moved = tmp_path / "module"
    shutil.copytree(source_module, moved)
    config = tiny_config(init=str(moved), modules={"newer": ["weight", "age"]}, backbone_lr_factor=0.5)
    straight = train(config, cache, targets, "newer", tmp_path / "straight", device="cpu")

    class Interrupted(Exception):
        pass

    def interrupt_after_three(event):
        if event.iteration == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(config, cache, targets, "newer", tmp_path / "resumed", device="cpu", progress=interrupt_after_three)
    with pytest.raises(RunFolderError, match="init"):  # the start is part of the configuration
        train(config.replace(init="scratch"), cache, targets, "newer", tmp_path / "resumed", device="cpu", resume=True)
    shutil.rmtree(moved)  # the checkpoint holds the weights now: the module is not needed
    resumed = train(config, cache, targets, "newer", tmp_path / "resumed", device="cpu", resume=True)

    final = load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    expected = load_file(str(tmp_path / "straight" / "weights.safetensors"))
    assert all(torch.equal(final[key], expected[key]) for key in final)
    pd.testing.assert_frame_equal(resumed.history, straight.history)
    record = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert record["init"]["path"] == str(moved.resolve())
    assert [session["start_iteration"] for session in record["sessions"]] == [2]


def test_recomputing_batch_norm_statistics_leaves_frozen_parts_alone():
    torch.manual_seed(0)
    network = build_network("resnet18", 1, input_pool=8)
    trainer = Trainer(tiny_config(init="imagenet", freeze="stem"), network, torch.device("cpu"), None)
    before = {key: tensor.clone() for key, tensor in network.state_dict().items()}
    trainer.recompute_batch_norm(network, [(_image_batch(), None), (_image_batch(), None)])
    after = network.state_dict()
    assert torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert torch.equal(after["bn1.running_var"], before["bn1.running_var"])
    assert not torch.equal(after["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    assert int(after["layer1.0.bn1.num_batches_tracked"]) == 2
    assert network.layer1[0].bn1.momentum == 0.1 and not network.training
