"""Saliency maps of one target's predicted mean, one function per method, all through Captum.

Each map explains the standardised mean output of one target (the network's column 2 x index;
undoing the standardisation only scales it by the target's positive sd, which the per-map
normalisation of figures and cohort maps removes anyway). The network is the one prediction runs
(`mimir.inference.runner.ModuleRunner`'s copy, batch norm folded), called with gradients on.

Every function returns one non-negative (N, H, W) map at the input image's size:

- gradcam: Captum's `LayerGradCam` on the last residual stage (`layer4`), ReLU of the
  gradient-weighted channel sum (Selvaraju et al. 2017), upsampled bilinearly to the image. It
  is coarse (a 256 x 256 input gives an 8 x 8 map, 2 x 2 with input pooling 4) but class-
  discriminative: it shows regions, which is what the cohort maps of Langner et al. show. An
  earlier stage (`layer="layer3"`: twice the resolution) localises finer with features that
  are less specific to the target (docs/explain.md measures both).
- guided-gradcam: Captum's `GuidedGradCam` (guided backpropagation times the upsampled Grad-CAM
  of the same stage), pixel-sharp; the absolute values are summed over the three channels.
- integrated-gradients: Captum's `IntegratedGradients` from a black image (zero signal: air),
  the completeness-satisfying path method (Sundararajan et al. 2017); absolute values summed over
  the channels.

Methods are looked up in `METHODS` (a dict of functions), never by class name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from mimir.explain import DEFAULT_LAYER, GRADCAM_LAYERS

#: Integration steps of integrated gradients (the Riemann sum converges well before 32 for ResNets
#: whose input is a smooth projection image; Captum's default is 50).
INTEGRATION_STEPS = 32

#: (network, target index, float32 network input (N, 3, H, W)) -> non-negative maps (N, H, W).
MapFunction = Callable[[torch.nn.Module, int, torch.Tensor], torch.Tensor]


class TargetMean(torch.nn.Module):
    """The network's output reduced to one target's standardised mean, (N,) per batch.

    A module (not a plain function) because guided backpropagation hooks the ReLU modules of the
    model it is given; the network stays a submodule, so Grad-CAM's layer is the network's own.
    """

    def __init__(self, network: torch.nn.Module, target_index: int) -> None:
        super().__init__()
        self.network = network
        self.target_index = target_index

    def forward(self, network_input: torch.Tensor) -> torch.Tensor:
        return self.network(network_input)[:, 2 * self.target_index]


def _check_layer(layer: str) -> None:
    if layer not in GRADCAM_LAYERS:
        raise ValueError(f"unknown Grad-CAM layer {layer!r}; choose from {', '.join(GRADCAM_LAYERS)}")


def residual_stage(network: torch.nn.Module, layer: str = DEFAULT_LAYER) -> torch.nn.Module:
    """A residual stage of a torchvision-style ResNet (`layer1` ... `layer4`), Grad-CAM's layer."""
    _check_layer(layer)
    block = getattr(network, layer, None)
    if block is None:
        raise ValueError(f"{type(network).__name__} has no {layer}: Grad-CAM needs a ResNet")
    return block


def gradcam(network: torch.nn.Module, target_index: int, network_input: torch.Tensor, layer: str = DEFAULT_LAYER) -> torch.Tensor:
    """Grad-CAM on one residual stage, upsampled to the input's size."""
    from captum.attr import LayerAttribution, LayerGradCam

    coarse = LayerGradCam(TargetMean(network, target_index), residual_stage(network, layer)).attribute(
        network_input, relu_attributions=True
    )
    upsampled = LayerAttribution.interpolate(coarse, tuple(network_input.shape[-2:]), interpolate_mode="bilinear")
    return upsampled[:, 0].clamp_min(0.0)


def guided_gradcam(
    network: torch.nn.Module, target_index: int, network_input: torch.Tensor, layer: str = DEFAULT_LAYER
) -> torch.Tensor:
    """Guided backpropagation times Grad-CAM on one residual stage, |.| summed over the channels."""
    from captum.attr import GuidedGradCam

    explainer = GuidedGradCam(TargetMean(network, target_index), residual_stage(network, layer))
    with warnings.catch_warnings():  # Captum announces its temporary ReLU hooks on every call
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
        attributions = explainer.attribute(network_input, interpolate_mode="bilinear")
    return attributions.abs().sum(dim=1)


def integrated_gradients(network: torch.nn.Module, target_index: int, network_input: torch.Tensor) -> torch.Tensor:
    """Integrated gradients from a black image, |.| summed over the channels."""
    from captum.attr import IntegratedGradients

    explainer = IntegratedGradients(TargetMean(network, target_index))
    attributions = explainer.attribute(
        network_input,
        baselines=torch.zeros_like(network_input),
        n_steps=INTEGRATION_STEPS,
        internal_batch_size=max(1, len(network_input)),  # one batch's worth of images per pass
    )
    return attributions.abs().sum(dim=1)


#: Method names (as `mimir explain --method` takes them) -> map functions.
METHODS: dict[str, MapFunction] = {
    "gradcam": gradcam,
    "guided-gradcam": guided_gradcam,
    "integrated-gradients": integrated_gradients,
}
#: The methods that take a residual stage (`layer`); integrated gradients attributes to the input.
LAYER_METHODS: dict[str, Callable[..., torch.Tensor]] = {"gradcam": gradcam, "guided-gradcam": guided_gradcam}


def check_method(method: str, layer: str = DEFAULT_LAYER) -> None:
    """ValueError for an unknown method or layer, or a layer other than the default for a method
    that has none (the command checks before any work)."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose from {', '.join(METHODS)}")
    _check_layer(layer)
    if layer != DEFAULT_LAYER and method not in LAYER_METHODS:
        raise ValueError(f"{method} has no layer: a layer applies to {' and '.join(LAYER_METHODS)} only")


def saliency(
    network: torch.nn.Module, target_index: int, network_input: torch.Tensor, method: str, *, layer: str = DEFAULT_LAYER
) -> torch.Tensor:
    """Maps (N, H, W), float32 on the CPU, detached; gradients are computed even under no_grad.

    `layer` is the residual stage of the Grad-CAM methods. Names are checked by `check_method`.
    """
    check_method(method, layer)
    was_training = network.training
    network.eval()
    try:
        with torch.enable_grad():
            network_input = network_input.detach().requires_grad_()
            if method in LAYER_METHODS:
                maps = LAYER_METHODS[method](network, target_index, network_input, layer)
            else:
                maps = METHODS[method](network, target_index, network_input)
    finally:
        network.train(was_training)
    return maps.detach().float().cpu()


__all__ = [
    "INTEGRATION_STEPS", "LAYER_METHODS", "METHODS", "MapFunction", "TargetMean", "check_method", "residual_stage", "saliency",
]
