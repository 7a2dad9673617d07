"""Training configuration: one dataclass, read from and written to TOML.

Every hyperparameter of a run lives here so that `config.toml` in a run folder fully describes
how the network was trained. Defaults are the published MIMIR settings. Importing this file
never imports torch, so module building and other readers of a run folder can use it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from mimir.architectures import ARCHITECTURES, LOG_VAR_RANGE
from mimir.devices import PRECISIONS
from mimir.errors import MimirError

#: `autocast` values of configs written before precisions had one vocabulary, read as today's names.
LEGACY_PRECISIONS = {"none": "float32"}
LR_SCHEDULES = ("step", "cosine")
#: What `freeze` keeps fixed while fine-tuning: nothing, the stem (first convolution and its batch
#: norm), or the whole backbone (only the final layer learns).
FREEZE_MODES = ("none", "stem", "backbone")
#: The folder of the package holding the shipped configurations, one `{name}.toml` each.
SHIPPED_FOLDER = "configs"


class ConfigError(MimirError, ValueError):
    """A configuration file or value that cannot be used."""


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (defaults: the paper)."""

    # network
    architecture: str = "resnet50"
    # "imagenet", "scratch", a path to a .safetensors / torch state dict, or a MIMIR module (folder
    # or archive) to fine-tune from: its backbone, and the head rows of the targets both share
    init: str = "imagenet"
    freeze: str = "none"  # "none", "stem" or "backbone": parts of the initial network kept fixed
    input_pool: int = 1  # average-pool the input by this factor before the ResNet (CPU speed)
    channels_last: bool = False
    autocast: str = "auto"  # "auto" (bfloat16, else float16 on CUDA; float32 on CPU), "float32", "bfloat16", "float16"
    log_var_min: float = LOG_VAR_RANGE[0]
    log_var_max: float = LOG_VAR_RANGE[1]
    # loss: Gaussian NLL; nll_beta > 0 weights each term by variance**beta (beta-NLL), 0 = the paper
    nll_beta: float = 0.0
    # optimisation (Adam)
    batch_size: int = 32
    iterations: int = 10_000
    learning_rate: float = 5e-5
    lr_schedule: str = "step"  # "step": lr *= lr_gamma at each milestone; "cosine": half-cosine to 0
    lr_milestones: list[int] = field(default_factory=lambda: [8_000])  # lr *= lr_gamma at each
    lr_gamma: float = 0.1
    warmup_iterations: int = 0  # linear ramp of the learning rate over the first iterations
    weight_decay: float = 0.0
    # the backbone's learning rate is learning_rate * backbone_lr_factor (the final layer's is learning_rate)
    backbone_lr_factor: float = 1.0
    # > 0: validate, predict and save an exponential moving average of the weights (0 = the paper)
    ema_decay: float = 0.0
    # after the last iteration, recompute the batch-norm statistics of the final (averaged) weights
    # over the training images as prediction sees them, unshifted (false = the paper: the running
    # statistics collected during training, of shifted images and of weights that kept moving)
    recompute_batch_norm: bool = False
    # augmentation
    max_shift: int = 16  # random integer translation in pixels along both axes, zero fill
    # share of training images translated; the rest are seen as prediction sees them (1.0: the paper)
    shift_probability: float = 1.0
    # run
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 1_000  # also where validation loss is recorded
    keep_checkpoints: int = 2
    log_every: int = 10  # iterations between reads of the training loss (a device sync)
    eval_batch_size: int = 64
    workers: int = 0
    # extra modules: name -> catalog target names
    modules: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.autocast = LEGACY_PRECISIONS.get(self.autocast, self.autocast)
        self.validate()

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture {self.architecture!r} unknown; choose from {', '.join(ARCHITECTURES)}")
        if self.autocast not in PRECISIONS:
            raise ConfigError(f"autocast {self.autocast!r} unknown; choose from {', '.join(PRECISIONS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule {self.lr_schedule!r} unknown; choose from {', '.join(LR_SCHEDULES)}")
        positive = ("input_pool", "batch_size", "checkpoint_every", "log_every", "eval_batch_size", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("iterations", "max_shift", "workers", "warmup_iterations"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.lr_gamma <= 0:
            raise ConfigError("learning_rate and lr_gamma must be positive")
        if not (math.isfinite(self.backbone_lr_factor) and self.backbone_lr_factor > 0):
            raise ConfigError(
                f"backbone_lr_factor must be positive, got {self.backbone_lr_factor} (freeze = \"backbone\" keeps it fixed)"
            )
        if self.freeze not in FREEZE_MODES:
            raise ConfigError(f"freeze {self.freeze!r} unknown; choose from {', '.join(FREEZE_MODES)}")
        if self.freeze != "none" and self.init == "scratch":
            raise ConfigError(f"freeze = {self.freeze!r} would keep random weights fixed; it needs init other than scratch")
        if list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ConfigError(f"lr_milestones must be increasing, got {self.lr_milestones}")
        for name in ("nll_beta", "shift_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not self.log_var_min < self.log_var_max:
            raise ConfigError("log_var_min must be below log_var_max")
        for module, targets in self.modules.items():
            if not targets or not all(isinstance(t, str) for t in targets):
                raise ConfigError(f"module {module!r} needs a non-empty list of target names")

    @property
    def log_var_range(self) -> tuple[float, float]:
        return (self.log_var_min, self.log_var_max)

    def learning_rate_at(self, iteration: int) -> float:
        """The schedule: a function of the iteration alone, so resuming reproduces it."""
        if iteration < self.warmup_iterations:
            return self.learning_rate * (iteration + 1) / self.warmup_iterations
        if self.lr_schedule == "cosine":
            span = max(1, self.iterations - self.warmup_iterations)
            progress = min(1.0, (iteration - self.warmup_iterations) / span)
            return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
        drops = sum(1 for milestone in self.lr_milestones if iteration >= milestone)
        return self.learning_rate * self.lr_gamma**drops

    def replace(self, **changes: object) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # TOML ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, object]) -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys: {', '.join(known)}")
        hints = typing.get_type_hints(cls)
        checked = {}
        for name, value in values.items():
            if name == "modules":
                checked[name] = _modules_from(value)
            else:
                checked[name] = _coerce(name, value, hints[name])
        return cls(**checked)

    @classmethod
    def from_toml(cls, path: Path) -> TrainConfig:
        return cls.from_toml_text(Path(path).read_text(encoding="utf-8"), str(path))

    @classmethod
    def from_toml_text(cls, text: str, origin: str) -> TrainConfig:
        """A configuration from TOML text; `origin` (a path or a shipped name) prefixes errors."""
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{origin}: invalid TOML: {error}") from error
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            raise ConfigError(f"{origin}: {error}") from error

    @classmethod
    def load(cls, config: str | Path) -> TrainConfig:
        """A TOML file, or, when no file has that path, the shipped configuration of that name
        (`paper`, `cpu-small`, `tiny`): a user with an installed package has no repository."""
        path = Path(config)
        if path.is_file():
            return cls.from_toml(path)
        if str(config) in shipped_configs():
            return cls.from_toml_text(shipped_config_text(str(config)), f"shipped config {config}")
        raise ConfigError(
            f"{config}: no such configuration file, nor a shipped configuration of that name "
            f"(shipped: {', '.join(shipped_configs())}; see `mimir config list`)"
        )

    def to_toml(self) -> str:
        lines = ["# MIMIR training configuration (written by mimir; `mimir config show paper` shows every key with comments)"]
        for item in fields(self):
            if item.name != "modules":
                lines.append(f"{item.name} = {_toml_value(getattr(self, item.name))}")
        for module, targets in self.modules.items():
            lines += ["", f"[modules.{_toml_key(module)}]", f"targets = {_toml_value(list(targets))}"]
        return "\n".join(lines) + "\n"

    def write_toml(self, path: Path) -> None:
        """Whole or not at all (`atomic_write_text`), like every file MIMIR writes."""
        from mimir.atomic import atomic_write_text

        atomic_write_text(Path(path), self.to_toml())


def shipped_configs() -> tuple[str, ...]:
    """Names of the configurations shipped inside the package, sorted (`mimir config list`)."""
    folder = resources.files("mimir").joinpath(SHIPPED_FOLDER)
    return tuple(sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir() if entry.name.endswith(".toml")))


def shipped_config_text(name: str) -> str:
    """The TOML of a shipped configuration, comments included (`mimir config show NAME`)."""
    if name not in shipped_configs():
        raise ConfigError(f"no shipped configuration named {name!r}; shipped: {', '.join(shipped_configs())}")
    return resources.files("mimir").joinpath(SHIPPED_FOLDER, f"{name}.toml").read_text(encoding="utf-8")


def _modules_from(value: object) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ConfigError("modules must be a table of [modules.NAME] sections")
    modules = {}
    for name, body in value.items():
        if not isinstance(body, dict) or set(body) != {"targets"}:
            raise ConfigError(f"[modules.{name}] must hold exactly one key: targets = [...]")
        targets = body["targets"]
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ConfigError(f"[modules.{name}] targets must be a list of catalog target names")
        modules[name] = list(targets)
    return modules


def _coerce(name: str, value: object, hint: object) -> object:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list")
        return [_coerce(name, item, item_type) for item in value]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{name}: unsupported type {hint}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):  # type: ignore[arg-type]
        raise ConfigError(f"{name} must be of type {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")
