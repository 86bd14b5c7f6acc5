"""Classification heads over embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.validate import is_int, is_number


class CosineClassifier(nn.Module):
    """Scaled cosine classifier with an optional additive margin (CosFace).

    With class weights ``w_c`` and an embedding ``z``,

        logit_c(z) = s * (cos(z, w_c) - m * [c = y]),

    where ``y`` is the example's label when one is given (training) and the margin term is
    dropped otherwise.  ``m = 0`` is the normalised-softmax / "Baseline++" head of Chen et
    al. 2019; ``m > 0`` is the large-margin cosine loss of Wang et al. 2018 (CosFace), which
    makes every example beat every other class by ``m`` in cosine before its loss vanishes.

    Args:
        in_features: embedding size ``D``.
        num_classes: number of classes ``C``.
        scale: ``s > 0`` (the inverse temperature of the softmax).
        margin: ``m``, with ``0 <= m < 1``.
    """

    def __init__(
        self, in_features: int, num_classes: int, scale: float = 10.0, margin: float = 0.0
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_classes", num_classes)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not is_number(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        if not is_number(margin) or not 0 <= margin < 1:
            raise ValueError(f"margin must be a number in [0, 1), got {margin!r}")
        self.in_features, self.out_features = in_features, num_classes
        self.scale, self.margin = float(scale), float(margin)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits ``[N, C]`` of embeddings ``z [N, D]`` (margin applied where ``labels``)."""
        cosine = F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=-1).T
        if labels is not None and self.margin > 0:
            cosine = cosine - self.margin * F.one_hot(labels, self.out_features).to(cosine)
        return self.scale * cosine

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.out_features}, "
            f"scale={self.scale:g}, margin={self.margin:g}"
        )
