"""One module's member networks, placed for fast inference at one precision, and checked in it.

The networks run through the one forward path (`mimir.forward.run_member`); an ensemble's
outputs are combined by `mimir.inference.postprocess.combine_members`. The runner works on its
own copy of each member network (the first K with `members=K`): batch norm folded into the
convolutions (the same function to float32 rounding, a fifth less work on a CPU) and weights
channels-last, under `torch.inference_mode`. The module it was given is left as it was.

Precision: bfloat16 and float16 keep fewer mantissa bits (8 and 11), and how far a module's means
drift cannot be told in advance: ResNet50s with random weights and realistic images moved by up
to 0.16 target sd in bfloat16 (float16: 0.02). So a module run in a reduced precision is verified
on its first batch: its calibrated means are computed in float32 as well, and when they differ by
more than REDUCED_PRECISION_TOLERANCE_SD (0.02 sd of the target's training values) the module runs
in float32 from then on, that batch included, with a warning. Within the tolerance it keeps the
reduced precision (and that batch's reduced outputs, so every exam gets the same arithmetic). A
float16 overflow fails the check on the first batch; on a later batch, that batch alone is
recomputed in float32.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.devices import precision_name
from mimir.forward import run_member
from mimir.inference.modules import check_member_count
from mimir.inference.postprocess import MemberMixture, combine_members, postprocess

if TYPE_CHECKING:
    import torch

    from mimir.inference.modules import LoadedModule, ModuleSpec

logger = logging.getLogger(__name__)

#: Largest |reduced-precision mean - float32 mean| a module may show on its verification batch,
#: in target sds (the sd of the standardisation in its spec); beyond it the module runs in float32.
REDUCED_PRECISION_TOLERANCE_SD = 0.02


class ModuleRunner:
    """A loaded module's member networks (the first `members`; None: all), copied and placed for
    fast inference on its device, at one precision.

    A reduced `autocast_dtype` is verified against float32 on the first batch, every member at
    once (see the module docstring): one member out of tolerance sends the whole module to
    float32. `precision_used` and `verified_deviation_sd` say how that went.
    """

    def __init__(
        self,
        module: LoadedModule,
        autocast_dtype: torch.dtype | None = None,
        tolerance_sd: float = REDUCED_PRECISION_TOLERANCE_SD,
        members: int | None = None,
    ) -> None:
        import torch

        self.spec: ModuleSpec = module.spec
        self.autocast_dtype = autocast_dtype
        self.tolerance_sd = tolerance_sd
        count = check_member_count(module.spec, members)
        if count > len(module.networks):
            raise ValueError(f"module {module.spec.name!r} was loaded with {len(module.networks)} members, {count} asked for")
        #: Largest |mean - float32 mean| in target sds on the first batch; None until measured (or in float32).
        self.verified_deviation_sd: float | None = None
        self.networks: list[torch.nn.Module] = []
        for network in module.networks[:count]:
            prepared = copy.deepcopy(network).eval()
            fold_batch_norm(prepared)
            prepared.to(memory_format=torch.channels_last)
            self.networks.append(prepared)
        self.network: torch.nn.Module = self.networks[0]

    @property
    def n_members(self) -> int:
        """How many member networks run (the module's, or the first ones asked for)."""
        return len(self.networks)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def precision_used(self) -> str:
        """What the module runs in now: the requested precision, or float32 after a failed check."""
        return precision_name(self.autocast_dtype)

    def raw_outputs(self, network_input: torch.Tensor) -> list[torch.Tensor]:
        """Each member's float32 (N, 2T) output on the CPU for a float32 channels-last input on the device."""
        import torch

        members = range(self.n_members)
        if self.autocast_dtype is None:
            return [self._forward(network_input, None, member).cpu() for member in members]
        outputs = [self._forward(network_input, self.autocast_dtype, member).cpu() for member in members]
        if self.verified_deviation_sd is None and len(network_input):
            return self._verified(network_input, outputs)
        if self.autocast_dtype == torch.float16:
            for member, output in enumerate(outputs):
                if not torch.isfinite(output).all():
                    logger.warning("module %s overflowed float16 on this batch; recomputed in float32", self.spec.name)
                    outputs[member] = self._forward(network_input, None, member).cpu()
        return outputs

    def raw_output(self, network_input: torch.Tensor) -> torch.Tensor:
        """The one network's output of a one-member runner (`raw_outputs` for ensembles)."""
        if self.n_members != 1:
            raise ValueError(f"module {self.spec.name!r} runs {self.n_members} members: use raw_outputs")
        return self.raw_outputs(network_input)[0]

    def _verified(self, network_input: torch.Tensor, reduced: list[torch.Tensor]) -> list[torch.Tensor]:
        """Compare the first batch with float32; keep the reduced precision only within tolerance."""
        reference = [self._forward(network_input, None, member).cpu() for member in range(self.n_members)]
        deviation = max(
            mean_deviation_sd(low, full, self.spec, member)
            for member, (low, full) in enumerate(zip(reduced, reference, strict=True))
        )
        self.verified_deviation_sd = deviation
        precision = self.precision_used
        if deviation <= self.tolerance_sd:
            logger.info(
                "module %s: %s means within %.4f target sd of float32 on %d exams; keeping %s",
                self.spec.name, precision, deviation, len(network_input), precision,
            )
            return reduced
        logger.warning(
            "module %s: %s means differ from float32 by up to %.4f target sd on its first %d exams "
            "(tolerance %g); running it in float32",
            self.spec.name, precision, deviation, len(network_input), self.tolerance_sd,
        )
        self.autocast_dtype = None
        return reference

    def _forward(self, network_input: torch.Tensor, dtype: torch.dtype | None, member: int = 0) -> torch.Tensor:
        return run_member(self.networks[member], network_input, dtype)

    def predict_mixture(self, images: torch.Tensor) -> MemberMixture:
        """The calibrated mixture of the running members (mean, total, aleatoric and epistemic
        sd, (N, T) in target units) for (N, 3, 256, 256) uint8 images."""
        return combine_members(self.raw_outputs(network_input(images, self.device)), self.spec)

    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated mean and (total) sd (N, T) in target units for (N, 3, 256, 256) uint8 images."""
        mixture = self.predict_mixture(images)
        return mixture.mean, mixture.sd


def mean_deviation_sd(raw: Any, reference_raw: Any, spec: ModuleSpec, member: int = 0) -> float:
    """Largest |calibrated mean - reference mean| over exams and targets, in target sds.

    Targets without training values (NaN in both) do not count; a mean that is finite in one
    output only (an overflow) is an infinite deviation.
    """
    means, _ = postprocess(raw, spec, member)
    reference, _ = postprocess(reference_raw, spec, member)
    target_sd = spec.member_standardization(member)[1]
    with np.errstate(invalid="ignore"):
        deviation = np.abs(means - reference) / target_sd
    agree = (means == reference) | (np.isnan(means) & np.isnan(reference))
    deviation[agree] = 0.0
    deviation[np.isnan(deviation)] = np.inf
    return float(deviation.max(initial=0.0))


def fold_batch_norm(network: torch.nn.Module) -> int:
    """Fold every eval-mode batch norm into the convolution before it, in place; returns how many.

    ResNets name the pairs conv1/bn1, conv2/bn2, conv3/bn3, and 0/1 inside `downsample`.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(network.modules()):
        children = dict(parent.named_children())
        for name, child in children.items():
            partner = _batch_norm_partner(name)
            norm = children.get(partner) if partner else None
            if isinstance(child, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d) and not norm.training:
                setattr(parent, name, fuse_conv_bn_eval(child, norm))
                setattr(parent, partner, torch.nn.Identity())
                folded += 1
    return folded


def _batch_norm_partner(conv_name: str) -> str | None:
    if conv_name.startswith("conv"):
        return "bn" + conv_name.removeprefix("conv")
    if conv_name.isdigit():
        return str(int(conv_name) + 1)
    return None


def network_input(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 images -> float32 channels-last on `device` (`mimir.forward.network_input`)."""
    from mimir.forward import network_input as forward_input

    return forward_input(images, device, channels_last=True)


__all__ = ["REDUCED_PRECISION_TOLERANCE_SD", "ModuleRunner", "fold_batch_norm", "mean_deviation_sd", "network_input"]
