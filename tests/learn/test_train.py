import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mimir.devices import device_description
from mimir.learn.train import RunFolderError, load_run, predict_images, train
from mimir.runs.config import TrainConfig

N_EXAMS = 16


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(
        architecture="resnet18", init="scratch", input_pool=4, autocast="float32", batch_size=4,
        iterations=8, learning_rate=1e-3, lr_milestones=[6], checkpoint_every=2, log_every=1,
        eval_batch_size=8, deterministic=True, seed=5,
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Images whose brightness sets `age`; `height` is known for half of them."""
    root = tmp_path_factory.mktemp("cohort")
    cache = root / "cache"
    cache.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_EXAMS):
        brightness = 20 + 200 * i / (N_EXAMS - 1)
        image = np.clip(rng.normal(brightness, 10, (3, 256, 256)), 0, 255).astype(np.uint8)
        eid = 1_000_000 + i
        np.save(cache / f"{eid}_20201_2_0.npy", image)
        rows.append({"eid": eid, "instance": 2, "age": 40 + brightness / 8, "height": 150 + i if i % 2 else np.nan})
    targets = pd.DataFrame(rows)
    targets.to_csv(root / "targets.csv", index=False)
    return cache, targets


def _ids(indices):
    return [(1_000_000 + i, 2) for i in indices]


def test_loss_decreases_on_brightness_target(cohort, tmp_path):
    cache, targets = cohort
    config = tiny_config(iterations=40, checkpoint_every=10, lr_milestones=[30], max_shift=4)
    result = train(config, cache, targets, "age", tmp_path / "run", device="cpu")
    losses = result.history["train_loss"].tolist()
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 0.3


def test_run_folder_contents_and_predictions_in_catalog_units(cohort, tmp_path):
    cache, targets = cohort
    module = {"agehi": ["age", "height", "weight"]}
    config = tiny_config(iterations=4, modules=module)
    events = []
    result = train(config, cache, cohort[0].parent / "targets.csv", "agehi", tmp_path / "run",
                   train_ids=_ids(range(12)), val_ids=_ids(range(12, 16)), device="cpu", progress=events.append)
    run = tmp_path / "run"
    for name in ("config.toml", "data_summary.json", "standardization.json", "history.csv",
                 "weights.safetensors", "val_predictions.csv", "run.json"):
        assert (run / name).is_file(), name
    assert [event.iteration for event in events] == [1, 2, 3, 4]
    assert TrainConfig.from_toml(run / "config.toml") == config
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["train"]["n_exams"] == 12 and summary["val"]["n_exams"] == 4
    assert summary["train"]["n_known"] == {"age": 12, "height": 6, "weight": 0}
    assert summary["target_columns_absent"] == ["weight"]
    assert summary["train"]["sd"]["age"] == pytest.approx(targets["age"][:12].std(ddof=1))
    assert list(result.history.columns) == ["iteration", "train_loss", "learning_rate", "val_loss", "val_mae_sd"]
    assert result.history["val_loss"].notna().all()

    predictions = predict_images(run, cache, device="cpu")
    assert list(predictions.columns) == ["eid", "instance", "age", "age_sd", "height", "height_sd", "weight", "weight_sd"]
    assert len(predictions) == N_EXAMS
    assert (predictions["age_sd"] > 0).all() and predictions["weight"].isna().all()
    val = predictions[predictions["eid"] >= 1_000_012].reset_index(drop=True)
    pd.testing.assert_frame_equal(val, result.val_predictions, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_reproduces_an_uninterrupted_run(cohort, tmp_path, ema_decay):
    cache, targets = cohort
    config = tiny_config(ema_decay=ema_decay)
    reference = train(config, cache, targets, "age", tmp_path / "straight", device="cpu")

    class Interrupted(Exception):
        pass

    def interrupt_after_five(event):
        if event.iteration == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(config, cache, targets, "age", tmp_path / "resumed", device="cpu", progress=interrupt_after_five)
    with pytest.raises(RunFolderError):
        train(config, cache, targets, "age", tmp_path / "resumed", device="cpu")
    events = []
    resumed = train(config, cache, targets, "age", tmp_path / "resumed", device="cpu", resume=True, progress=events.append)

    assert [event.iteration for event in events] == [5, 6, 7, 8]
    assert [event.learning_rate for event in events] == [1e-3, 1e-3, pytest.approx(1e-4), pytest.approx(1e-4)]
    assert resumed.history["iteration"].tolist() == [2, 4, 6, 8]
    final = load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    expected = load_file(str(tmp_path / "straight" / "weights.safetensors"))
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[key], expected[key]) for key in final)
    pd.testing.assert_frame_equal(resumed.history, reference.history)
    sessions = json.loads((tmp_path / "resumed" / "run.json").read_text())["sessions"]
    assert [s["start_iteration"] for s in sessions] == [4]


def test_resume_refuses_a_changed_config(cohort, tmp_path):
    cache, targets = cohort
    train(tiny_config(iterations=2), cache, targets, "age", tmp_path / "run", device="cpu")
    with pytest.raises(RunFolderError, match="learning_rate"):
        train(tiny_config(iterations=2, learning_rate=0.5), cache, targets, "age", tmp_path / "run", device="cpu", resume=True)


def test_weight_average_is_what_validation_sees_and_what_is_saved(cohort, tmp_path):
    cache, targets = cohort
    config = tiny_config(iterations=6, ema_decay=0.5, lr_milestones=[])
    result = train(config, cache, targets, "age", tmp_path / "run", train_ids=_ids(range(12)),
                   val_ids=_ids(range(12, 16)), device="cpu")
    checkpoint = load_file(str(tmp_path / "run" / "checkpoints" / "iter_0000006.safetensors"))
    saved = load_file(str(tmp_path / "run" / "weights.safetensors"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "iter_0000006.state.pt", weights_only=True)
    average = state["weight_average"]["shadow"]
    assert state["weight_average"]["updates"] == 6
    assert all(torch.equal(saved[key], average[key]) for key in saved)
    assert not all(torch.equal(saved[key], checkpoint[key]) for key in saved)
    predictions = predict_images(tmp_path / "run", cache, exams=_ids(range(12, 16)), device="cpu")
    pd.testing.assert_frame_equal(predictions, result.val_predictions, atol=1e-4, rtol=1e-4)


def test_load_run_gives_the_trained_network(cohort, tmp_path):
    cache, targets = cohort
    result = train(tiny_config(iterations=2, channels_last=True, autocast="bfloat16"), cache, targets, "age", tmp_path / "run", device="cpu")
    loaded = load_run(tmp_path / "run")
    for name, tensor in result.model.network.state_dict().items():
        assert torch.equal(tensor.cpu(), loaded.network.state_dict()[name])
    (session,) = json.loads((tmp_path / "run" / "run.json").read_text())["sessions"]
    assert session["precision"] == "bfloat16"  # what the run used, recorded beside the config's request
    assert session["device_name"] == device_description("cpu")  # float32 CPU results depend on the kernels and threads


def test_cli_trains_with_a_config_file(cohort, tmp_path, capsys):
    from mimir.cli import train_cmd

    cache, _ = cohort
    config_path = tmp_path / "tiny.toml"
    tiny_config(iterations=2).write_toml(config_path)
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args([
        "train", "--cache", str(cache), "--targets", str(cache.parent / "targets.csv"),
        "--module", "age", "--config", str(config_path), "--out", str(tmp_path / "run"), "--device", "cpu",
    ])
    assert args.handler(args) == 0
    assert (tmp_path / "run" / "weights.safetensors").is_file()
    progress = capsys.readouterr().err  # not a terminal: one plain line, with the learning rate and loss
    assert "\r" not in progress and progress.startswith("train age 2/2 (100 %), ") and ", lr " in progress
    from mimir.learn.train import RunFolderError

    with pytest.raises(RunFolderError, match="already holds a run"):
        args.handler(args)


def test_failed_start_leaves_no_run_behind(cohort, tmp_path, monkeypatch):
    from urllib.error import URLError

    from mimir.network import PretrainedWeightsUnavailable

    def offline(*args, **kwargs):
        raise URLError("no network")

    cache, targets = cohort
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsUnavailable):
        train(tiny_config(init="imagenet"), cache, targets, "age", tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "config.toml").exists()
    train(tiny_config(iterations=1), cache, targets, "age", tmp_path / "run", device="cpu")


def test_cli_exclude_leaves_listed_exams_out_of_training_and_counts_them(cohort, tmp_path, capsys):
    from mimir.cli import main
    from mimir.runs.layout import RunFolder

    cache, _ = cohort
    config_path = tmp_path / "tiny.toml"
    tiny_config(iterations=2).write_toml(config_path)
    listed = tmp_path / "artefacts.txt"
    listed.write_text("# return 3072\n1000000\n1000003\n")
    run = tmp_path / "run"
    assert main([
        "-q", "train", "--cache", str(cache), "--targets", str(cache.parent / "targets.csv"), "--module", "age",
        "--config", str(config_path), "--out", str(run), "--device", "cpu", "--exclude", str(listed),
    ]) == 0
    assert f"2 cached exams left out: on the exclusion list {listed}" in capsys.readouterr().out
    summary = json.loads(RunFolder(run).data_summary.read_text())
    assert summary["n_excluded_by_list"] == 2 and summary["n_images_in_cache"] == N_EXAMS
    assert summary["train"]["n_exams"] == N_EXAMS - 2


def test_recomputed_batch_norm_statistics_are_those_of_the_final_weights_on_unshifted_training_images(cohort, tmp_path):
    from mimir.imaging.cache import load_image

    cache, targets = cohort
    config = tiny_config(iterations=6, ema_decay=0.5, lr_milestones=[], max_shift=8)
    train_ids, val_ids = _ids(range(13)), _ids(range(13, 16))
    plain = train(config, cache, targets, "age", tmp_path / "plain", train_ids=train_ids, val_ids=val_ids, device="cpu")
    result = train(config.replace(recompute_batch_norm=True), cache, targets, "age", tmp_path / "run",
                   train_ids=train_ids, val_ids=val_ids, device="cpu")
    saved, before = load_file(str(tmp_path / "run" / "weights.safetensors")), load_file(str(tmp_path / "plain" / "weights.safetensors"))
    for key, tensor in saved.items():  # the same training; only the batch norms' statistics differ
        assert torch.equal(tensor, before[key]) == (not key.endswith(("running_mean", "running_var", "num_batches_tracked"))), key
    network = result.model.network
    assert int(network.bn1.num_batches_tracked) == 3  # the batches averaged
    assert network.bn1.momentum == 0.1 and not network.training
    # bn1's input is conv1 of the pooled image: its statistics per batch of 4, the 13th exam left out
    images = torch.from_numpy(np.stack([load_image(cache / f"{eid}_20201_{instance}_0.npy") for eid, instance in train_ids]))
    with torch.no_grad():
        stem = network.conv1(torch.nn.functional.avg_pool2d(images[:12].float(), config.input_pool))
    batches = stem.reshape(3, 4, *stem.shape[1:])
    means = batches.mean(dim=(1, 3, 4))
    variances = batches.transpose(1, 2).flatten(2).var(dim=2, unbiased=True)
    torch.testing.assert_close(network.bn1.running_mean, means.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(network.bn1.running_var, variances.mean(0), rtol=1e-4, atol=1e-4)
    predictions = predict_images(tmp_path / "run", cache, exams=val_ids, device="cpu")
    pd.testing.assert_frame_equal(predictions, result.val_predictions, atol=1e-4, rtol=1e-4)
    assert not np.allclose(result.val_predictions["age"], plain.val_predictions["age"])
