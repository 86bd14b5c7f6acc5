"""Meta-SGD (Li, Zhou, Chen and Li, 2017): learn the inner learning rates too.

``theta' = theta - alpha o grad L_support(theta)`` where ``alpha`` has the shape of
``theta`` (``o`` is the element-wise product) and is meta-learned with ``theta`` by the
exact second-order meta-gradient.  ``granularity`` picks the shape of ``alpha``:
``"element"`` (the paper), ``"tensor"`` (one rate per parameter tensor, i.e. a learned
per-layer rate by hypergradient) or ``"global"`` (one scalar).

The whole algorithm is MAML with a different inner optimizer: the named one
(``inner_optimizer``, SGD by default) at the learned rates ``LearnedRates`` (a module of
the learner, so saved with it and meta-trained with it), initialised to ``inner_lr``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from metaloop.algorithms.maml import MAML
from metaloop.algorithms.registry import register
from metaloop.functional.optim import GRANULARITIES, LearnedRates

__all__ = ["GRANULARITIES", "MetaSGD"]


@register("metasgd")
class MetaSGD(MAML):
    """MAML with learned inner learning rates ``alpha`` (initialised to ``inner_lr``)."""

    def __init__(
        self, model: nn.Module, *args: Any, granularity: str = "element", **kwargs: Any
    ) -> None:
        super().__init__(model, *args, **kwargs)
        if not isinstance(self.inner.optimizer, str):
            raise ValueError("MetaSGD learns the rates of a named inner_optimizer (e.g. 'sgd')")
        self.granularity = granularity
        self.lrs = LearnedRates(model, self.adapt_names, self.inner_lr, granularity)
        self.inner.use(self.inner.build_optimizer, self.lrs)
        self._register_load_state_dict_pre_hook(_rename_global_rate)


def _rename_global_rate(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints of earlier versions stored the ``"global"`` rate as ``global_lr``; it is
    ``lrs.global`` now (the element and tensor rates kept their names)."""
    old = prefix + "global_lr"
    if old in state_dict:
        state_dict[prefix + "lrs.global"] = state_dict.pop(old)
