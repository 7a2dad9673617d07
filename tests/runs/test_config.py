import tomllib

import pytest

from mimir.runs.config import ConfigError, TrainConfig


def test_defaults_are_the_paper_settings():
    config = TrainConfig()
    assert (config.architecture, config.batch_size, config.iterations) == ("resnet50", 32, 10_000)
    assert config.learning_rate_at(0) == 5e-5
    assert config.learning_rate_at(7_999) == 5e-5
    assert config.learning_rate_at(8_000) == pytest.approx(5e-6)


def test_warmup_and_cosine_schedule():
    config = TrainConfig(learning_rate=1.0, iterations=110, warmup_iterations=10, lr_schedule="cosine")
    assert [config.learning_rate_at(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert config.learning_rate_at(10) == pytest.approx(1.0)
    assert config.learning_rate_at(60) == pytest.approx(0.5)
    assert config.learning_rate_at(110) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(learning_rate=1.0, lr_milestones=[50], warmup_iterations=4)
    assert [step.learning_rate_at(i) for i in (1, 3, 49, 50)] == pytest.approx([0.5, 1.0, 1.0, 0.1])


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
    config = TrainConfig.load(name)
    assert TrainConfig.from_dict(tomllib.loads(config.to_toml())) == config


def test_paper_config_is_the_published_method():
    assert TrainConfig.load("paper") == TrainConfig(workers=4)


def test_autocast_none_of_earlier_configs_reads_as_float32(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('autocast = "none"\n')
    config = TrainConfig.from_toml(path)
    assert config.autocast == "float32"
    assert config == TrainConfig(autocast="float32")
    assert 'autocast = "float32"' in config.to_toml()


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("learning_rat = 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        TrainConfig.from_toml(path)


@pytest.mark.parametrize(
    "values",
    [{"batch_size": "32"}, {"batch_size": True}, {"batch_size": 0}, {"autocast": "float8"},
     {"architecture": "vgg16"}, {"lr_milestones": [5, 2]}, {"lr_schedule": "linear"},
     {"ema_decay": 1.0}, {"ema_decay": -0.1}, {"warmup_iterations": -1}, {"modules": {"x": {"targets": "age"}}},
     {"nll_beta": -0.5}, {"nll_beta": 2.0}, {"shift_probability": 1.5}, {"shift_probability": -0.1}],
)
def test_invalid_values_are_errors(values):
    with pytest.raises(ConfigError):
        TrainConfig.from_dict(values)


def test_integer_accepted_for_float_fields():
    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0
