import tomllib
from pathlib import Path

import pytest

from mimir.learn.config import ConfigError, TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_the_paper_settings():
    config = TrainConfig()
    assert (config.architecture, config.batch_size, config.iterations) == ("resnet50", 32, 10_000)
    assert config.learning_rate_at(0) == 5e-5
    assert config.learning_rate_at(7_999) == 5e-5
    assert config.learning_rate_at(8_000) == pytest.approx(5e-6)


def test_round_trips_through_toml(tmp_path):
    config = TrainConfig(
        architecture="resnet18",
        init='weights/with "quotes" \\ and ünïcode.safetensors',
        lr_milestones=[10, 20],
        modules={"liver": ["liverFat", "liverVolume"], "my-mod": ["age"]},
        learning_rate=3.5e-4,
    )
    path = tmp_path / "config.toml"
    config.write_toml(path)
    assert TrainConfig.from_toml(path) == config


@pytest.mark.parametrize("name", ["paper", "cpu-small", "tiny"])
def test_shipped_configs_load(name):
    config = TrainConfig.from_toml(CONFIGS / f"{name}.toml")
    assert TrainConfig.from_dict(tomllib.loads(config.to_toml())) == config


def test_paper_config_is_the_published_method():
    assert TrainConfig.from_toml(CONFIGS / "paper.toml") == TrainConfig(workers=4)


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("learning_rat = 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        TrainConfig.from_toml(path)


@pytest.mark.parametrize(
    "values",
    [{"batch_size": "32"}, {"batch_size": True}, {"batch_size": 0}, {"autocast": "float8"},
     {"architecture": "vgg16"}, {"lr_milestones": [5, 2]}, {"modules": {"x": {"targets": "age"}}},
     {"nll_beta": -0.5}, {"nll_beta": 2.0}],
)
def test_invalid_values_are_errors(values):
    with pytest.raises(ConfigError):
        TrainConfig.from_dict(values)


def test_integer_accepted_for_float_fields():
    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0
