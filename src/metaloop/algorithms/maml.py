"""Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, 2017).

Meta-objective over tasks ``i``:

    min_theta  (1/T) sum_i L_query_i( U_i^K(theta) ),
    U_i(theta) = theta - alpha * grad L_support_i(theta)   (K times)

With ``first_order=False`` the meta-gradient is exact:
``prod_k (I - alpha H_i(theta_k)) grad L_query_i(theta_K)``, Hessian-vector products
through every step.  With ``first_order=True`` (FOMAML) the Jacobian of ``U`` is taken as
the identity and the meta-gradient is ``grad L_query_i(theta_K)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.algorithms.registry import register
from metaloop.functional.inner import GradientMode


@register("maml")
class MAML(GradientMetaLearner):
    """MAML; ``first_order=True`` gives FOMAML.  See ``GradientMetaLearner`` for arguments."""

    adapts_by_steps = True

    def __init__(self, model: nn.Module, *args: Any, first_order: bool = False, **kwargs: Any):
        super().__init__(model, *args, **kwargs)
        self.first_order = bool(first_order)

    @property
    def gradient_mode(self) -> GradientMode:  # type: ignore[override]
        return "first_order" if self.first_order else "second_order"


@register("fomaml")
class FOMAML(MAML):
    """First-order MAML: ``MAML(..., first_order=True)``."""

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any):
        kwargs.pop("first_order", None)
        super().__init__(model, *args, first_order=True, **kwargs)
