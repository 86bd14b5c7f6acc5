"""Backbones: plain ``nn.Module``s, nothing meta-specific."""

from metaloop.models.mlp import MLP

__all__ = ["MLP"]
