"""An exponential moving average of a network's weights, for validation, prediction and saving.

A short, high-learning-rate run ends with weights that jitter from batch to batch; their
running average predicts more steadily (Polyak averaging). Batch-norm running statistics are
averaged like the parameters; integer buffers (batch counters) are copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

#: Number of updates over which the effective decay ramps up to the configured one: early on
#: the average would otherwise be dominated by the random initial weights.
_RAMP = 10


class WeightAverage:
    """Shadow copies of every parameter and buffer of `network`, updated after optimizer steps."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {name: tensor.detach().clone() for name, tensor in network.state_dict().items()}

    def effective_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (_RAMP + self.updates))

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        decay = self.effective_decay()
        for name, tensor in network.state_dict().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                shadow.lerp_(tensor.detach(), 1.0 - decay)
            else:
                shadow.copy_(tensor)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, network: nn.Module) -> Iterator[None]:
        """The averaged weights in `network` for the duration of the block, the live ones after."""
        live = {name: tensor.detach().clone() for name, tensor in network.state_dict().items()}
        network.load_state_dict(self.shadow)
        try:
            yield
        finally:
            network.load_state_dict(live)

    def state_dict(self) -> dict[str, object]:
        return {"updates": self.updates, "shadow": {name: t.to("cpu") for name, t in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = state["shadow"]
        if not isinstance(shadow, dict) or set(shadow) != set(self.shadow):
            raise ValueError("the saved weight average does not match the network's parameters")
        for name, tensor in shadow.items():
            self.shadow[name].copy_(tensor)
        self.updates = int(state["updates"])  # type: ignore[call-overload]
