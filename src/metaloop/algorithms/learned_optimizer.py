"""A learned inner optimizer, meta-trained with the initialisation.

MAML's inner loop with its update rule replaced by a small network ``r_psi`` applied to
every coordinate of every adapted parameter (``metaloop.functional.optim.learned``):

    m_{t+1} = beta m_t + (1 - beta) g_t,
    theta_{t+1} = theta_t - alpha * (g_t + r_psi(s * g_t, s * m_{t+1}) / s),

with ``g_t`` the support-loss gradient and ``s`` a fixed input scale (``feature_scale``)
that brings typical gradients to order one.  ``r_psi`` is an MLP ``2 -> hidden -> 1``
whose last layer starts at zero, so before meta-training the learner *is* MAML with SGD
at ``inner_lr`` (tested); the outer loop then learns ``psi`` and ``theta_0`` together by
the exact (second-order) or first-order meta-gradient through the unrolled inner loop.
The same rule serves every parameter and every step, so it can learn, for example, a
larger or a momentum-like step, but not a per-weight rate (that is Meta-SGD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from metaloop.algorithms.maml import MAML
from metaloop.algorithms.registry import register
from metaloop.functional.inner import InnerLoop
from metaloop.functional.optim import InnerOptimizer, learned
from metaloop.models.mlp import MLP


def _learned_at(inner: InnerLoop, rule: UpdateRule, beta: float) -> InnerOptimizer:
    """The learned rule at the current ``inner_lr`` (read at every use, as for MAML)."""
    return learned(inner.lr, rule, beta)


class UpdateRule(nn.Module):
    """``r_psi``: features ``[N, 2]`` -> corrections ``[N]``, zero at initialisation."""

    def __init__(self, hidden: Sequence[int] = (16,), feature_scale: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(feature_scale, (int, float)) and 0 < feature_scale < float("inf")):
            raise ValueError(f"feature_scale must be a positive number, got {feature_scale!r}")
        self.feature_scale = float(feature_scale)
        self.net = MLP(2, 1, hidden=tuple(hidden), activation="tanh")
        last = self.net.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, features: Tensor) -> Tensor:
        s = self.feature_scale
        return self.net(features * s).squeeze(-1) / s


@register("learned_optimizer")
class LearnedOptimizer(MAML):
    """MAML with a meta-learned inner update rule (see the module docstring).

    Args beyond ``MAML``'s: ``rule_hidden`` (hidden sizes of ``r_psi``), ``beta`` (decay
    of the running mean fed to it), ``feature_scale`` (``s``).  The inner optimizer is the
    learned rule: ``inner_optimizer`` must stay ``"sgd"`` (its default).
    """

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        rule_hidden: Sequence[int] = (16,),
        beta: float = 0.9,
        feature_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("inner_optimizer", "sgd") != "sgd":
            raise ValueError(
                "LearnedOptimizer learns its own update rule; inner_optimizer must be 'sgd' "
                f"(the rule starts as SGD), got {kwargs['inner_optimizer']!r}"
            )
        super().__init__(model, *args, **kwargs)
        if self.speed.compile_options is not None or self.speed.checkpoint:
            raise ValueError(
                "LearnedOptimizer's rule is a module called inside the inner loop; "
                "compile=True and checkpoint=True are not supported: leave them off"
            )
        ref = next(model.parameters())
        self.rule = UpdateRule(rule_hidden, feature_scale).to(dtype=ref.dtype, device=ref.device)
        self.beta = beta  # validated where the rule is built, next line
        self.inner.use(_learned_at, self.inner, self.rule, beta)
        self.beta = float(beta)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"


__all__ = ["LearnedOptimizer", "UpdateRule"]
