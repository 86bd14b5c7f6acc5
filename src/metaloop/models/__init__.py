"""Backbones: plain ``nn.Module``s, nothing meta-specific."""

from metaloop.models.backbone import Backbone
from metaloop.models.conv import Conv4, ConvBlock
from metaloop.models.heads import CosineClassifier
from metaloop.models.mlp import MLP
from metaloop.models.norm import (
    NORM_POLICIES,
    VMAP_POLICIES,
    PerStepBatchNorm2d,
    make_norm,
    set_norm_step,
)
from metaloop.models.resnet import ResidualBlock, ResNet12

__all__ = [
    "MLP",
    "NORM_POLICIES",
    "VMAP_POLICIES",
    "Backbone",
    "Conv4",
    "ConvBlock",
    "CosineClassifier",
    "PerStepBatchNorm2d",
    "ResNet12",
    "ResidualBlock",
    "make_norm",
    "set_norm_step",
]
