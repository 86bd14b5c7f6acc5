"""Meta-SGD (Li, Zhou, Chen and Li, 2017): learn the inner learning rates too.

``theta' = theta - alpha o grad L_support(theta)`` where ``alpha`` has the shape of
``theta`` (``o`` is the element-wise product) and is meta-learned with ``theta`` by the
exact second-order meta-gradient.  ``granularity`` picks the shape of ``alpha``:
``"element"`` (the paper), ``"tensor"`` (one rate per parameter tensor, i.e. a learned
per-layer rate by hypergradient) or ``"global"`` (one scalar).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metaloop.algorithms.maml import MAML
from metaloop.algorithms.registry import register
from metaloop.functional.optim import LearningRate

GRANULARITIES = ("element", "tensor", "global")


def _key(name: str) -> str:
    # ParameterDict keys may not contain dots
    return name.replace(".", "__")


@register("metasgd")
class MetaSGD(MAML):
    """MAML with learned inner learning rates ``alpha`` (initialised to ``inner_lr``)."""

    def __init__(
        self, model: nn.Module, *args: Any, granularity: str = "element", **kwargs: Any
    ) -> None:
        super().__init__(model, *args, **kwargs)
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}"
            )
        self.granularity = granularity
        params = dict(model.named_parameters())
        if granularity == "global":
            ref = params[self.adapt_names[0]]  # the rate lives in the model's dtype/device
            self.global_lr = nn.Parameter(
                torch.tensor(self.inner_lr, dtype=ref.dtype, device=ref.device)
            )
            self.lrs = nn.ParameterDict()
        else:
            self.lrs = nn.ParameterDict(
                {
                    _key(n): nn.Parameter(
                        torch.full_like(params[n], self.inner_lr)
                        if granularity == "element"
                        else torch.tensor(
                            self.inner_lr, dtype=params[n].dtype, device=params[n].device
                        )
                    )
                    for n in self.adapt_names
                }
            )

    def inner_learning_rates(self) -> LearningRate:
        if self.granularity == "global":
            return self.global_lr
        return {n: self.lrs[_key(n)] for n in self.adapt_names}
