"""The network choices a configuration or a module names, without importing torch.

Configurations (`mimir.runs.config`) and module files are read and checked in processes that
never build a network; `mimir.network` builds exactly the architectures listed here.
"""

from __future__ import annotations

#: Selectable architectures: torchvision ResNet variants with ImageNet weights.
ARCHITECTURES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)

#: Default clamp of the predicted log-variance (standardised units). exp(-10) .. exp(10) covers
#: residual sds from 0.007 to 150 target sds; the clamp keeps exp(-log_var) finite early in
#: training, when an ImageNet-initialised network sees 0-255 inputs and outputs large values.
LOG_VAR_RANGE = (-10.0, 10.0)
