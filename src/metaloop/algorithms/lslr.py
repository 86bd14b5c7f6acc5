"""LSLR, MAML++'s learned per-layer per-step inner learning rates (Antoniou, Edwards and
Storkey, "How to train your MAML", 2019).

MAML whose inner step ``k`` moves every parameter tensor ``l`` (each weight and each bias
is a "layer") by its own learned rate:

    theta_l^{k+1} = theta_l^k - alpha_{l,k} grad_l L_support(theta^k),   k = 0 .. K-1,

with ``alpha_{l,k}`` meta-learned together with ``theta^0`` by the exact (or, with
``first_order=True``, first-order) meta-gradient through the unrolled inner loop, every
rate initialised to ``inner_lr``.  The rates are ``K = inner_steps`` rows per tensor; past
the steps it was trained for (``eval_steps > inner_steps``) the last row is reused.  Other
inner optimizers take per-step rates too (``inner_optimizer = "adam"``...).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from metaloop.algorithms.maml import MAML
from metaloop.algorithms.registry import register
from metaloop.functional.optim import LearnedRates


@register("lslr")
class LSLR(MAML):
    """MAML with learned per-layer, per-step inner rates ``alpha [K]`` per parameter tensor."""

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        if not isinstance(self.inner.optimizer, str):
            raise ValueError("LSLR learns the rates of a named inner_optimizer (e.g. 'sgd')")
        self.lrs = LearnedRates(model, self.adapt_names, self.inner_lr, "tensor", self.inner_steps)
        self.inner.use(self.inner.build_optimizer, self.lrs, per_step=True)


__all__ = ["LSLR"]
