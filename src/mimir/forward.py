"""The one forward path: a member network on a batch of stored images -> its raw output.

Training (validation and out-of-fold predictions, `mimir.learn.train`), module loading
(`LoadedModule.predict_arrays`) and prediction (`mimir.inference.runner.ModuleRunner`) all run a
network through these two functions, so the three can only differ in the precision asked for.
Turning the raw output into values in target units is `mimir.runs.standardization.to_units`
(through `mimir.inference.postprocess` for modules), also written once.

The raw output is (N, 2T) float32, per target interleaved (mean, log-variance) of the
standardised target (`mimir.network`). Callers put the network in eval mode.
"""

from __future__ import annotations

import torch

from mimir.network import images_to_input


def network_input(images: torch.Tensor, device: torch.device | str, *, channels_last: bool = True) -> torch.Tensor:
    """Stored uint8 images -> float32 network input on `device`; uint8 travels (4x less to copy)."""
    on_device = images.to(device, non_blocking=images.is_pinned())
    batch = images_to_input(on_device)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def run_member(network: torch.nn.Module, batch: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One member network's raw (N, 2T) float32 output for a network-input batch, on its device.

    No autograd (inference mode); `autocast_dtype` None runs in float32, else under autocast in
    that dtype (the output is still returned as float32).
    """
    with torch.inference_mode(), torch.autocast(
        device_type=batch.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        return network(batch).float()


__all__ = ["network_input", "run_member"]
