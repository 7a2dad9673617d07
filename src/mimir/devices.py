"""Devices and arithmetic precision: the one place training and prediction resolve them.

Torch is imported inside the functions only, so the CLI can offer these choices (and `mimir
--help` stay instant) without loading it. A device is named as torch names it: "cpu", "cuda" or
"cuda:N"; "auto" is CUDA when torch sees a usable GPU, else the CPU. A precision is the dtype that
convolutions run in under autocast; "float32" is no autocast at all.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mimir.errors import MimirError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16", "float16")

_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(MimirError, ValueError):
    """A device or precision that is unknown or not usable on this machine."""


class DeviceChoices(tuple[str, ...]):
    """The device names a command accepts, for argparse `choices`: listed as below, checked by pattern.

    A listing cannot hold every GPU number, so membership is `is_device_name` ("cuda:3" is in).
    """

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and is_device_name(name)


DEVICE_CHOICES = DeviceChoices(("auto", "cpu", "cuda", "cuda:N"))


def is_device_name(name: str) -> bool:
    """"auto", "cpu", "cuda" or "cuda:N" (N a GPU number); says nothing about this machine."""
    return _DEVICE_NAME.fullmatch(name) is not None


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; an unusable explicit choice is an error."""
    import torch

    if not is_device_name(device):
        raise DeviceError(f"unknown device {device!r}; choose from {', '.join(DEVICE_CHOICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but torch sees no usable CUDA GPU")
    return device


@functools.cache
def cpu_supports_bfloat16() -> bool:
    """Native bfloat16 convolutions on this CPU (oneDNN with AVX512-BF16 or AMX).

    Without them torch emulates bfloat16, slower than float32: worth a warning when asked for.
    Cached: the probe runs a convolution, and the CPU does not change while the process runs.
    """
    import torch

    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        probe = torch.ones(1, 2, 4, 4)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            result = torch.nn.functional.conv2d(probe, torch.ones(1, 2, 3, 3))
        return bool(torch.isfinite(result).all()) and result.dtype == torch.bfloat16
    except (AttributeError, RuntimeError):
        return False


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name: Linux's /proc/cpuinfo, else `platform.processor()` ("unknown CPU" when
    neither says)."""
    import platform

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description(device: str | torch.device) -> str:
    """What ran a training session, for its record: the GPU's name, or the CPU's model, the vector
    instructions torch's kernels use on it and the threads. Float32 results on a CPU depend on
    both (one seed trains different networks with AVX2 and AVX512 kernels, or with 1 and 2
    threads, each reproducibly), so two runs of one configuration compare only when these agree."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu: {cpu_model()} ({torch.backends.cpu.get_cpu_capability()} kernels, {threads} thread{'s' if threads != 1 else ''})"


def resolve_precision(precision: str, device: str, *, training: bool = False) -> torch.dtype | None:
    """The autocast dtype for `precision` on a resolved `device`; None runs in float32.

    "auto" depends on the use. Training takes bfloat16 where the device has it natively (float16
    needs gradient scaling and can overflow), else float16 on a GPU and float32 on a CPU: a CPU
    without AVX512-BF16 or AMX emulates bfloat16, measured ~14x slower than float32 (28 s against
    2 s per iteration of a ResNet18 on an AMD EPYC). Prediction takes float16 on a GPU (three
    more mantissa bits, and every module is checked against float32 on its first batch) and
    float32 on a CPU.
    """
    import torch

    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    on_cuda = device.startswith("cuda")
    if precision == "auto" and not on_cuda:
        return torch.bfloat16 if training and cpu_supports_bfloat16() else None
    if precision == "float32":
        return None
    if precision == "auto":
        if training and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if precision == "float16":
        if not on_cuda:
            raise DeviceError("float16 is for CUDA GPUs; on a CPU use bfloat16 or float32")
        return torch.float16
    if on_cuda and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU has no bfloat16 support; use float16 or float32")
    if not on_cuda and not cpu_supports_bfloat16():
        _warn_bfloat16_emulated()
    return torch.bfloat16


@functools.cache
def _warn_bfloat16_emulated() -> None:
    """Once per process: the CPU does not change, and training resolves the precision per fold."""
    logger.warning("this CPU has no native bfloat16: expect slower arithmetic than float32")


def precision_name(dtype: torch.dtype | None) -> str:
    """The PRECISIONS name of an autocast dtype (None: float32)."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def cudnn_autotune(device: str) -> Iterator[None]:
    """Let cuDNN pick the fastest convolution algorithms while every batch has one image size."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


__all__ = [
    "DEVICE_CHOICES",
    "PRECISIONS",
    "DeviceError",
    "cpu_supports_bfloat16",
    "cpu_model",
    "cudnn_autotune",
    "device_description",
    "is_device_name",
    "precision_name",
    "resolve_device",
    "resolve_precision",
]
