"""Training loop of a mean-variance network: data, schedule, checkpoints, resume, predictions.

`train` is the one entry point (the CLI and cross-validation both call it). A run folder
(`mimir.runs.layout.RunFolder`) holds:

    config.toml            the effective TrainConfig
    data_summary.json      exams used and dropped, known values, target means and sds
    standardization.json   module, targets, training mean / sample sd per target
    checkpoints/           iter_NNNNNNN.safetensors + .state.pt (see checkpoint.py)
    history.csv            iteration, train_loss, learning_rate, val_loss, val_mae_sd
    weights.safetensors    final weights (their moving average when ema_decay > 0)
    val_predictions.csv    predictions for the validation exams (when given)
    run.json               software versions, device, timings of each session; `init`: the
                           module the run started from (name, path, sha256 of its weights)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from mimir.atomic import atomic_write_text
from mimir.devices import device_description, precision_name, resolve_device, resolve_precision
from mimir.errors import MimirError, PathNotFoundError
from mimir.forward import network_input, run_member
from mimir.inference.table import sd_column
from mimir.learn.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
    save_weights,
)
from mimir.learn.dataset import (
    ExamImages,
    ExamKey,
    ExamSet,
    TrainingBatches,
    TrainingDataError,
    assemble_exams,
    exam_keys,
    index_image_cache,
    read_targets,
    without_excluded,
)
from mimir.learn.finetune import (
    InitRecord,
    backbone_and_head,
    freeze,
    is_module,
    network_from_module,
    parts_in_eval_mode,
)
from mimir.learn.loss import gaussian_nll
from mimir.learn.target_sets import ModuleDefinition, resolve_module
from mimir.learn.weight_average import WeightAverage
from mimir.network import (
    MeanVarianceResNet,
    build_network,
    denormals_flushed,
    split_output,
)
from mimir.runs.config import TrainConfig
from mimir.runs.layout import RunFolder
from mimir.runs.standardization import Standardization, read_standardization
from mimir.versions import software_versions

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ["iteration", "train_loss", "learning_rate", "val_loss", "val_mae_sd"]


class RunFolderError(MimirError, RuntimeError):
    """A run folder that cannot be started or resumed as asked."""


@dataclass(frozen=True)
class TrainProgress:
    """What a progress callback sees after each iteration."""

    iteration: int  # iterations completed
    iterations: int  # total planned
    train_loss: float | None  # mean training loss over the last `log_every` iterations
    learning_rate: float
    val_loss: float | None = None  # set at checkpoints when there is a validation set


@dataclass
class TrainedModel:
    """A network with what is needed to turn its output into catalog units."""

    network: MeanVarianceResNet
    standardization: Standardization
    config: TrainConfig

    @property
    def targets(self) -> tuple[str, ...]:
        return self.standardization.targets


@dataclass
class TrainResult:
    run_dir: Path
    model: TrainedModel
    iterations: int
    history: pd.DataFrame
    val_predictions: pd.DataFrame | None
    seconds: float
    #: Cached exams left out because the exclusion list names them.
    excluded: int = 0


# devices and precision ------------------------------------------------------------------------
def _torch_device(device: str | torch.device) -> torch.device:
    """A torch.device as given, or a `mimir.devices` name resolved on this machine."""
    return device if isinstance(device, torch.device) else torch.device(resolve_device(device))


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The config's precision on `device`, with training's meaning of "auto"."""
    return resolve_precision(config.autocast, device.type, training=True)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _determinism(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Seed, and in deterministic mode pin algorithms; global settings are restored afterwards.

    On CUDA some kernels (e.g. the adaptive average pooling backward) have no deterministic
    version; there the mode warns instead of failing, so CUDA runs are close, not bit-identical.
    """
    torch.manual_seed(config.seed)
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if config.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        with denormals_flushed():
            yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]


# data ---------------------------------------------------------------------------------------------
@dataclass
class _Data:
    train: ExamSet
    val: ExamSet | None
    standardization: Standardization
    summary: dict[str, object]
    excluded: int = 0  # cached exams the exclusion list named


def _set_summary(exams: ExamSet, standardization: Standardization) -> dict[str, object]:
    values = exams.values()
    known = (~np.isnan(values)).sum(axis=0)
    return {
        "n_exams": len(exams),
        "n_subjects": int(exams.table["eid"].nunique()),
        "n_known": dict(zip(exams.targets, map(int, known), strict=True)),
        "missing_fraction": float(np.isnan(values).mean()) if values.size else math.nan,
        "dropped": exams.dropped,
    }


def _prepare_data(
    images: Path,
    targets: pd.DataFrame | Path,
    module: ModuleDefinition,
    train_ids: Sequence[ExamKey] | pd.DataFrame | None,
    val_ids: Sequence[ExamKey] | pd.DataFrame | None,
    exclude: str | Path | None = None,
) -> _Data:
    index, excluded = without_excluded(index_image_cache(images), exclude)
    table = read_targets(targets)
    train_keys = None if train_ids is None else exam_keys(train_ids)
    train = assemble_exams(index, table, module.targets, train_keys)
    if len(train) == 0:
        raise TrainingDataError(f"no exam has both an image in {images} and a known target of module {module.name}")
    val = None
    if val_ids is not None:
        val_keys = exam_keys(val_ids)
        overlap = set(val_keys) & set(train.keys())
        if overlap:
            raise TrainingDataError(f"{len(overlap)} exams are in both the training and the validation set")
        val = assemble_exams(index, table, module.targets, val_keys)
    standardization = Standardization.fit(module.name, module.targets, train.values())
    summary = {
        "module": module.name,
        "targets": list(module.targets),
        "n_images_in_cache": len(index) + excluded,
        "n_excluded_by_list": excluded,
        "n_target_rows": len(table),
        "target_columns_absent": [t for t in module.targets if t not in table.columns],
        "train": {
            **_set_summary(train, standardization),
            "mean": dict(zip(module.targets, standardization.mean.tolist(), strict=True)),
            "sd": dict(zip(module.targets, standardization.sd.tolist(), strict=True)),
        },
        "val": None if val is None else _set_summary(val, standardization),
    }
    for name, exams in (("training", train), ("validation", val)):
        if exams is not None:
            dropped = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in exams.dropped.items() if count)
            logger.info("%s set: %d exams%s", name, len(exams), f" (dropped: {dropped})" if dropped else "")
    return _Data(train, val, standardization, summary, excluded)


def _exam_loader(
    paths: Sequence[Path], targets: np.ndarray, batch_size: int, workers: int, device: torch.device,
    *, drop_last: bool = False,
) -> DataLoader:
    return DataLoader(
        ExamImages(paths, targets),
        batch_size=batch_size,
        shuffle=False,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def _statistics_loader(config: TrainConfig, exams: ExamSet, device: torch.device) -> DataLoader:
    """The training images unshifted, in batches of the training batch size; a last, smaller batch
    is left out when there is a full one (the cumulative average weighs every batch alike)."""
    no_targets = np.zeros((len(exams), 0), np.float32)
    return _exam_loader(list(exams.table["path"]), no_targets, config.batch_size, config.workers, device,
                        drop_last=len(exams) > config.batch_size)


# prediction ---------------------------------------------------------------------------------------
def _standardised_outputs(
    model: TrainedModel, loader: DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised means and clamped log-variances for every exam of a sequential loader, through
    the one forward path (`mimir.forward`) that modules use too."""
    config = model.config
    dtype = _autocast_dtype(config, device)
    network = model.network
    was_training = network.training
    network.eval()
    means, log_vars = [], []
    try:
        for images, _ in loader:
            batch = network_input(images, device, channels_last=config.channels_last)
            mean, log_var = split_output(run_member(network, batch, dtype), config.log_var_range)
            means.append(mean.cpu().numpy())
            log_vars.append(log_var.cpu().numpy())
    finally:
        network.train(was_training)
    n_targets = len(model.targets)
    if not means:
        return np.zeros((0, n_targets)), np.zeros((0, n_targets))
    return np.concatenate(means).astype(np.float64), np.concatenate(log_vars).astype(np.float64)


def _predictions_table(keys: pd.DataFrame, model: TrainedModel, mean: np.ndarray, log_var: np.ndarray) -> pd.DataFrame:
    """Means and sds in catalog units (the one de-standardisation, `Standardization.invert`)."""
    value, sd = model.standardization.invert(mean, log_var)
    table = keys[["eid", "instance"]].reset_index(drop=True).copy()
    columns = {}
    for column, name in enumerate(model.targets):
        columns[name] = value[:, column]
        columns[sd_column(name)] = sd[:, column]
    return pd.concat([table, pd.DataFrame(columns)], axis=1)


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The final network of a finished run folder, ready for prediction."""
    run = RunFolder(run_dir)
    config = TrainConfig.from_toml(run.config)
    standardization = read_standardization(run.standardization)
    network = MeanVarianceResNet(config.architecture, len(standardization.targets), config.input_pool)
    load_weights(network, run.weights)
    _place(network, _torch_device(device), config.channels_last)
    return TrainedModel(network, standardization, config)


def predict_images(
    model: TrainedModel | Path | str,
    images: Path,
    *,
    exams: Sequence[ExamKey] | pd.DataFrame | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    workers: int = 0,
) -> pd.DataFrame:
    """Predictions (mean and sd per target, catalog units) for cached images.

    `model` is a TrainedModel or a run folder; `exams` restricts the cache to those
    (eid, instance) pairs, which must all have an image.
    """
    resolved = _torch_device(device)
    trained = load_run(Path(model), resolved) if isinstance(model, str | Path) else model
    _place(trained.network, resolved, trained.config.channels_last)
    index = index_image_cache(images)
    if exams is not None:
        wanted = pd.DataFrame(exam_keys(exams), columns=["eid", "instance"])
        selected = wanted.merge(index, on=["eid", "instance"], how="left")
        missing = selected["path"].isna()
        if missing.any():
            first = selected[missing].iloc[0]
            raise PathNotFoundError(
                f"{int(missing.sum())} requested exams have no image in {images}, "
                f"e.g. eid {first.eid} instance {first.instance}"
            )
        index = selected
    placeholder = np.full((len(index), len(trained.targets)), np.nan, dtype=np.float32)
    loader = _exam_loader(list(index["path"]), placeholder, batch_size or trained.config.eval_batch_size, workers, resolved)
    mean, log_var = _standardised_outputs(trained, loader, resolved)
    return _predictions_table(index, trained, mean, log_var)


def _place(network: torch.nn.Module, device: torch.device, channels_last: bool) -> None:
    network.to(device)
    if channels_last:
        network.to(memory_format=torch.channels_last)


def _validation_scores(standardised: np.ndarray, mean: np.ndarray, log_var: np.ndarray) -> tuple[float, float]:
    """NLL over known values, and the mean over targets of the MAE in training sds."""
    known = ~np.isnan(standardised)
    if not known.any():
        return math.nan, math.nan
    filled = np.where(known, standardised, 0.0)
    nll = np.exp(-log_var) * (filled - mean) ** 2 + log_var
    loss = float(nll[known].mean())
    errors = np.where(known, np.abs(filled - mean), np.nan)
    per_target = [np.nanmean(errors[:, t]) for t in range(errors.shape[1]) if known[:, t].any()]
    return loss, float(np.mean(per_target))


# run folder ---------------------------------------------------------------------------------------
def _check_run_folder(run: RunFolder, config: TrainConfig, resume: bool) -> None:
    has_run = run.config.exists() or run.checkpoints.exists() or run.weights.exists()
    if not resume:
        if has_run:
            raise RunFolderError(f"{run.path} already holds a run; pass resume=True (--resume) or choose another folder")
        return
    if run.config.exists():
        previous = TrainConfig.from_toml(run.config)
        differing = [
            name for name in vars(config)
            if name != "workers" and getattr(config, name) != getattr(previous, name)
        ]
        if differing:
            raise RunFolderError(f"cannot resume {run.path}: the configuration differs in {', '.join(differing)}")


def _write_json(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def _read_history(path: Path, up_to: int) -> list[dict[str, float]]:
    if not path.exists():
        return []
    table = pd.read_csv(path)
    return table[table["iteration"] <= up_to].to_dict("records")


# initial weights ----------------------------------------------------------------------------------
def _initial_network(
    config: TrainConfig, standardization: Standardization, resuming: bool
) -> tuple[MeanVarianceResNet, InitRecord | None]:
    """The network a run starts from: scratch when a checkpoint will overwrite it anyway, a
    module's backbone and shared head rows, or `build_network`'s ImageNet / weights-file init."""
    n_targets = len(standardization.targets)
    if resuming:
        return build_network(config.architecture, n_targets, input_pool=config.input_pool), None
    if is_module(config.init):
        return network_from_module(Path(config.init), config, standardization)
    return build_network(config.architecture, n_targets, input_pool=config.input_pool, init=config.init), None


# training -----------------------------------------------------------------------------------------
def train(
    config: TrainConfig,
    images: Path,
    targets: pd.DataFrame | Path,
    module: str,
    out: Path,
    *,
    train_ids: Sequence[ExamKey] | pd.DataFrame | None = None,
    val_ids: Sequence[ExamKey] | pd.DataFrame | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    progress: Callable[[TrainProgress], None] | None = None,
    exclude: str | Path | None = None,
    trainer_class: type[Trainer] | None = None,
) -> TrainResult:
    """Train one module's network on cached images; write the run folder described above.

    `train_ids` / `val_ids` are (eid, instance) pairs (or tables with those columns); without
    `train_ids` every exam with an image and a known target of the module is used. `exclude`
    is an exclusion list (`mimir.imaging.exclusions`) whose exams are left out and counted
    (`TrainResult.excluded`, `n_excluded_by_list` in data_summary.json). With
    `resume`, training continues from the newest complete checkpoint in `out` (same iteration,
    schedule and batches); a folder without checkpoints starts from the beginning.

    `config.init` may name a MIMIR module to fine-tune from (`mimir.learn.finetune`); that applies
    only at the start, and run.json records the module (name, path, sha256 of its weights).
    `trainer_class` (a `Trainer` subclass) replaces the optimizer, the train mode or the step.
    """
    trainer_class = trainer_class or Trainer
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(out)
    run = RunFolder(out)
    definition = resolve_module(module, config.modules)
    resolved = _torch_device(device)
    autocast_dtype = _autocast_dtype(config, resolved)
    _check_run_folder(run, config, resume)
    data = _prepare_data(Path(images), targets, definition, train_ids, val_ids, exclude)
    checkpoint = latest_checkpoint(run.checkpoints) if resume else None
    if checkpoint is not None:
        saved = run.standardization
        if saved.exists() and read_standardization(saved).to_json() != data.standardization.to_json():
            raise RunFolderError(f"cannot resume {out}: the training data differ from those of the interrupted run")

    with _determinism(config, resolved):
        network, init_record = _initial_network(config, data.standardization, checkpoint is not None)
        # Written only once the inputs and initial weights are known to be usable, so a failed
        # start leaves no run behind that would demand --resume.
        atomic_write_text(run.config, config.to_toml())
        _write_json(run.data_summary, data.summary)
        atomic_write_text(run.standardization, data.standardization.to_json() + "\n")
        if init_record is not None:
            _record_init(run, init_record)
        _place(network, resolved, config.channels_last)
        model = TrainedModel(network, data.standardization, config)
        trainer = trainer_class(config, network, resolved, autocast_dtype)
        start = 0
        if checkpoint is not None:
            start = trainer.restore(checkpoint, network)
            logger.info("resuming %s from iteration %d", out, start)
        history = _read_history(run.history, start)
        loop_started = time.perf_counter()
        _run_iterations(config, data, model, trainer, resolved, run, start, history, progress)
        loop_seconds = time.perf_counter() - loop_started
        _final_weights(config, trainer, network, data.train, resolved)

    save_weights(network, run.weights, {"architecture": config.architecture, "module": definition.name})
    val_predictions = None
    if data.val is not None:
        val_predictions = _validation_predictions(model, data.val, resolved)
        atomic_write_text(run.val_predictions, val_predictions.to_csv(index=False))
    seconds = time.perf_counter() - started
    iterations_run = config.iterations - start
    _record_session(run, resolved, started_at, seconds, loop_seconds, start, iterations_run, config.batch_size,
                    precision_name(autocast_dtype))
    return TrainResult(
        out, model, config.iterations, pd.DataFrame(history, columns=HISTORY_COLUMNS), val_predictions, seconds, data.excluded
    )


def _final_weights(config: TrainConfig, trainer: Trainer, network: torch.nn.Module, train_exams: ExamSet,
                   device: torch.device) -> None:
    """Into `network`, the weights a run saves and validates with: their average when there is
    one, with batch-norm statistics recomputed when the configuration asks for it."""
    if trainer.average is not None:
        network.load_state_dict(trainer.average.shadow)
    if config.recompute_batch_norm:
        started = time.perf_counter()
        trainer.recompute_batch_norm(network, _statistics_loader(config, train_exams, device))
        logger.info("batch-norm statistics recomputed over %d training exams in %.1f s", len(train_exams),
                    time.perf_counter() - started)


def _validation_predictions(model: TrainedModel, val: ExamSet, device: torch.device) -> pd.DataFrame:
    """The final network's predictions of the validation exams, in catalog units."""
    config = model.config
    val_targets = model.standardization.apply(val.values())
    loader = _exam_loader(list(val.table["path"]), val_targets, config.eval_batch_size, config.workers, device)
    mean, log_var = _standardised_outputs(model, loader, device)
    return _predictions_table(val.table, model, mean, log_var)


class Trainer:
    """One run's optimisation: frozen parts, optimizer, gradient scaler, weight average, one step.

    The named extension points of training: `parameter_groups` and `build_optimizer` decide what
    learns at which rate, `set_train_mode` what normalises with batch statistics, `train_step`
    is one forward, loss, backward and update. A subclass passed to `train(trainer_class=...)`
    replaces any of them; `state` and `restore` make a run resumable whatever they do.
    """

    def __init__(
        self, config: TrainConfig, network: torch.nn.Module, device: torch.device, autocast_dtype: torch.dtype | None
    ) -> None:
        self.config = config
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.frozen = freeze(network, config.freeze)
        self.optimizer = self.build_optimizer(network)
        self.scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype is torch.float16 and device.type == "cuda")
        self.average = WeightAverage(network, config.ema_decay) if config.ema_decay > 0 else None

    def parameter_groups(self, network: torch.nn.Module) -> list[dict[str, object]]:
        """The trainable parameters by learning rate: the backbone at `backbone_lr_factor` times the
        rate, the final layer at the rate itself; frozen parameters are in no group."""
        backbone, head = backbone_and_head(network)
        groups = [
            {"name": "backbone", "params": backbone, "lr_factor": self.config.backbone_lr_factor},
            {"name": "head", "params": head, "lr_factor": 1.0},
        ]
        return [group for group in groups if group["params"]]

    def build_optimizer(self, network: torch.nn.Module) -> torch.optim.Optimizer:
        config = self.config
        groups = self.parameter_groups(network)
        for group in groups:
            group["lr"] = config.learning_rate * float(group["lr_factor"])  # type: ignore[arg-type]
        return torch.optim.Adam(groups, lr=config.learning_rate, weight_decay=config.weight_decay)

    def set_learning_rate(self, learning_rate: float) -> None:
        """The schedule's rate for this iteration, times each group's factor."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate * group.get("lr_factor", 1.0)

    def set_train_mode(self, network: torch.nn.Module) -> None:
        """Training mode, except frozen parts: their batch norms keep the initial network's statistics."""
        network.train()
        parts_in_eval_mode(self.frozen)

    def train_step(
        self, network: torch.nn.Module, batch: torch.Tensor, targets: torch.Tensor, learning_rate: float
    ) -> torch.Tensor:
        """Forward, Gaussian NLL, backward and update on one batch already on the device; the loss."""
        self.set_train_mode(network)
        with _autocast(self.device, self.autocast_dtype):
            output = network(batch)
        mean, log_var = split_output(output.float(), self.config.log_var_range)
        loss = gaussian_nll(mean, log_var, targets, self.config.nll_beta)
        self.step(loss, network, learning_rate)
        return loss.detach()

    @torch.no_grad()
    def recompute_batch_norm(self, network: torch.nn.Module, loader: DataLoader) -> None:
        """Replace the running statistics of the trainable batch norms by their exact average over
        `loader`'s images, run through the final weights as in training (batch statistics,
        training precision); frozen parts keep and normalise with theirs.

        What torch.optim.swa_utils.update_bn does for every batch norm of a network; written here
        because it would also reset, and normalise with batch statistics in, the frozen parts.
        """
        frozen = {id(module) for part in self.frozen for module in part.modules()}
        norms = [
            module for module in network.modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and id(module) not in frozen
        ]
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches
        self.set_train_mode(network)
        try:
            with _autocast(self.device, self.autocast_dtype):
                for images, _ in loader:
                    network(network_input(images, self.device, channels_last=self.config.channels_last))
        finally:
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
            network.eval()

    def step(self, loss: torch.Tensor, network: torch.nn.Module, learning_rate: float) -> None:
        self.set_learning_rate(learning_rate)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(network)

    def evaluation_weights(self, network: torch.nn.Module) -> contextlib.AbstractContextManager:
        """The weights that validation sees: the average when there is one."""
        return self.average.applied(network) if self.average is not None else contextlib.nullcontext()

    def state(self) -> dict[str, object]:
        state: dict[str, object] = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "torch_rng": torch.get_rng_state(),
        }
        if self.average is not None:
            state["weight_average"] = self.average.state_dict()
        return state

    def restore(self, checkpoint: Checkpoint, network: torch.nn.Module) -> int:
        """Weights, optimizer moments, scaler and average of a checkpoint; returns its iteration."""
        load_weights(network, checkpoint.weights)
        state = load_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.average is not None:
            saved = state.get("weight_average")
            if saved is None:
                raise RunFolderError(f"{checkpoint.state} holds no weight average, which the configuration asks for")
            self.average.load_state_dict(saved)  # type: ignore[arg-type]
        torch.set_rng_state(state["torch_rng"])
        return int(state["iteration"])


class _LossMeter:
    """Sums the training loss on the device and reads it back only every few iterations.

    Reading a CUDA scalar synchronises the device; doing so once per `log_every` iterations
    keeps the GPU busy. The interval mean since the last checkpoint goes to history.csv.
    """

    def __init__(self, device: torch.device) -> None:
        self._on_device = torch.zeros((), device=device)
        self._pending = 0
        self._interval_sum = 0.0
        self._interval_count = 0
        self.last: float | None = None

    def add(self, loss: torch.Tensor) -> None:
        self._on_device += loss.detach()
        self._pending += 1

    @property
    def pending(self) -> int:
        return self._pending

    def flush(self, iteration: int) -> None:
        if not self._pending:
            return
        total = float(self._on_device.item())
        self.last = total / self._pending
        if not math.isfinite(self.last):
            raise FloatingPointError(
                f"training loss became {self.last} at iteration {iteration}; lower the learning rate or check the targets"
            )
        self._interval_sum += total
        self._interval_count += self._pending
        self._on_device.zero_()
        self._pending = 0

    def take_interval_mean(self) -> float:
        mean = self._interval_sum / self._interval_count if self._interval_count else math.nan
        self._interval_sum, self._interval_count = 0.0, 0
        return mean


def _training_loader(config: TrainConfig, data: _Data, start: int, device: torch.device) -> DataLoader:
    batches = TrainingBatches(
        len(data.train), config.batch_size, config.max_shift, config.seed, start, config.iterations,
        shift_probability=config.shift_probability,
    )
    dataset = ExamImages(list(data.train.table["path"]), data.standardization.apply(data.train.values()))
    return DataLoader(dataset, batch_sampler=batches, num_workers=config.workers, pin_memory=device.type == "cuda")


def _run_iterations(
    config: TrainConfig,
    data: _Data,
    model: TrainedModel,
    trainer: Trainer,
    device: torch.device,
    run: RunFolder,
    start: int,
    history: list[dict[str, float]],
    progress: Callable[[TrainProgress], None] | None,
) -> None:
    network = model.network
    val_loader = None
    if data.val is not None and len(data.val):
        val_targets = data.standardization.apply(data.val.values())
        val_loader = _exam_loader(list(data.val.table["path"]), val_targets, config.eval_batch_size, config.workers, device)
    meter = _LossMeter(device)
    iteration = start
    for images, targets in _training_loader(config, data, start, device):
        learning_rate = config.learning_rate_at(iteration)
        batch = network_input(images, device, channels_last=config.channels_last)
        loss = trainer.train_step(network, batch, targets.to(device, non_blocking=True), learning_rate)
        meter.add(loss)
        iteration += 1
        at_checkpoint = iteration % config.checkpoint_every == 0 or iteration == config.iterations
        if meter.pending == config.log_every or at_checkpoint:
            meter.flush(iteration)
        val_loss = None
        if at_checkpoint:
            with trainer.evaluation_weights(network):
                row = _history_row(model, val_loader, device, iteration, meter.take_interval_mean(), learning_rate)
            val_loss = row["val_loss"] if val_loader is not None else None
            history.append(row)
            atomic_write_text(run.history, pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(index=False))
            save_checkpoint(run.checkpoints, iteration, network, trainer.state(), config.keep_checkpoints)
        if progress is not None:
            progress(TrainProgress(iteration, config.iterations, meter.last, learning_rate, val_loss))


def _history_row(
    model: TrainedModel,
    val_loader: DataLoader | None,
    device: torch.device,
    iteration: int,
    train_loss: float,
    learning_rate: float,
) -> dict[str, float]:
    row = {"iteration": iteration, "train_loss": train_loss, "learning_rate": learning_rate}
    row["val_loss"], row["val_mae_sd"] = math.nan, math.nan
    if val_loader is None:
        logger.info("iteration %d: train loss %.4f", iteration, train_loss)
        return row
    mean, log_var = _standardised_outputs(model, val_loader, device)
    row["val_loss"], row["val_mae_sd"] = _validation_scores(val_loader.dataset.targets.numpy(), mean, log_var)
    logger.info("iteration %d: train loss %.4f, validation loss %.4f", iteration, train_loss, row["val_loss"])
    return row


def _record_session(
    run: RunFolder,
    device: torch.device,
    started_at: str,
    seconds: float,
    loop_seconds: float,
    start: int,
    iterations_run: int,
    batch_size: int,
    precision: str,
) -> None:
    """Append this session to run.json (keeping its `init`); `precision` is what the config's
    autocast resolved to on this device ("auto" differs between machines)."""
    path = run.record
    previous = json.loads(path.read_text()) if path.exists() else {}
    sessions = previous.get("sessions", [])
    sessions.append(
        {
            "started": started_at,
            "seconds": round(seconds, 3),
            "training_loop_seconds": round(loop_seconds, 3),
            "start_iteration": start,
            "iterations": iterations_run,
            "images_per_second": (
                round(iterations_run * batch_size / loop_seconds, 2) if iterations_run and loop_seconds > 0 else None
            ),
            "device": str(device),
            "device_name": device_description(device),
            "precision": precision,
        }
    )
    record: dict[str, object] = {"software": software_versions(), "sessions": sessions}
    if "init" in previous:
        record["init"] = previous["init"]
    _write_json(path, record)


def _record_init(run: RunFolder, init: InitRecord) -> None:
    """Write the module a run starts from into run.json at once: an interrupted first session
    resumes from a checkpoint without reading the module again, and the record must survive."""
    previous = json.loads(run.record.read_text()) if run.record.exists() else {}
    _write_json(run.record, {"software": software_versions(), "sessions": previous.get("sessions", []), "init": init.to_json()})
