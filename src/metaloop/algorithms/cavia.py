"""CAVIA, fast context adaptation (Zintgraf, Shiarlis, Kurin, Hofmann and Whiteson, 2019).

The network's input is extended by a few *context parameters* ``phi`` (here concatenated
to the input's last dimension).  The inner loop adapts only ``phi``, starting from
``phi_0 = 0`` for every task; the outer loop learns the network ``theta`` by the MAML
meta-gradient through the context updates:

    min_theta  (1/T) sum_i L_query_i(theta, phi_i^K),
    phi_i^{k+1} = phi_i^k - alpha grad_phi L_support_i(theta, phi_i^k),   phi_i^0 = 0.

The context is reset, not learned: it is a parameter of the wrapped module (so the
functional engine can adapt it by name) with ``requires_grad=False``, and every inner
loop starts from zeros whatever its stored value.  Because the context is small, the
second-order meta-gradient is cheap; ``first_order=True`` drops it as FOMAML does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metaloop.algorithms.base import StepMetrics
from metaloop.algorithms.maml import MAML
from metaloop.algorithms.registry import register
from metaloop.functional.inner import GradientMode
from metaloop.functional.params import Params
from metaloop.tasks.base import TaskBatch
from metaloop.tasks.registry import TaskSpec
from metaloop.validate import is_int

CONTEXT = "context"
DEFAULT_NUM_CONTEXT = 4


class ContextModel(nn.Module):
    """``model(concat(x, phi))`` with context parameters ``phi`` of size ``num_context``.

    ``model`` must accept inputs with ``num_context`` more features than the task's
    (``MLP(1 + num_context, 1)`` for the sinusoid).  The context is broadcast over the
    input's leading dimensions; it starts at zero and does not require grad (CAVIA resets
    it per task rather than learning it).
    """

    def __init__(self, model: nn.Module, num_context: int) -> None:
        super().__init__()
        if not is_int(num_context) or num_context < 1:
            raise ValueError(f"num_context must be a positive integer, got {num_context!r}")
        ref = next(iter(model.parameters()), None)
        factory = {} if ref is None else {"dtype": ref.dtype, "device": ref.device}
        self.model = model
        self.num_context = num_context
        self.context = nn.Parameter(torch.zeros(num_context, **factory), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        context = self.context.to(x.dtype).expand(*x.shape[:-1], self.num_context)
        return self.model(torch.cat([x, context], dim=-1))

    def extra_repr(self) -> str:
        return f"num_context={self.num_context}"


@register("cavia")
class CAVIA(MAML):
    """CAVIA: adapt only the context parameters in the inner loop.

    Args:
        model: the network, taking ``in_features + num_context`` inputs; it is wrapped in a
            ``ContextModel`` (a ``ContextModel`` passed in is used as is).
        num_context: number of context parameters (ignored for a ``ContextModel``).
        inner_lr: inner learning rate on the context (1.0 for the sinusoid).
        *args, **kwargs: as for ``MAML`` (``inner_steps``, ``first_order``, ``loss``, ...),
            except ``adapt``, which is always the context.
    """

    @classmethod
    def model_spec(cls, spec: TaskSpec, options: Mapping[str, Any]) -> TaskSpec:
        """The model takes the flattened input and the context: ``x_dim + num_context``."""
        num_context = options.get("num_context", DEFAULT_NUM_CONTEXT)
        return dataclasses.replace(spec, input_shape=(spec.x_dim + num_context,))

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        num_context: int = DEFAULT_NUM_CONTEXT,
        inner_lr: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if "adapt" in kwargs:
            raise TypeError("CAVIA adapts the context parameters only; adapt= is not accepted")
        if not isinstance(model, ContextModel):
            model = ContextModel(model, num_context)
        super().__init__(model, *args, inner_lr=inner_lr, adapt=CONTEXT, **kwargs)
        if self.adapt_names != [CONTEXT]:
            raise ValueError(
                f"the wrapped model has parameters named like the context: {self.adapt_names}"
            )
        self.num_context = model.num_context

    @torch.no_grad()
    def reset_context(self) -> None:
        """Set the stored context back to zero (the start of every inner loop)."""
        self.model.context.zero_()

    def adapt_params(
        self,
        params: Params,
        buffers: Params,
        x: Tensor,
        y: Tensor,
        steps: int,
        mode: GradientMode | None = None,
        **execution: Any,
    ) -> Params:
        """Inner loop from ``phi_0 = 0`` (a fresh tensor per task), network held fixed."""
        params = {**params, CONTEXT: torch.zeros_like(params[CONTEXT])}
        return super().adapt_params(params, buffers, x, y, steps, mode, **execution)

    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """As for ``GradientMetaLearner``, after resetting the stored context to zero."""
        self.reset_context()
        return super().evaluate_batch(batch, steps)

    def extra_repr(self) -> str:
        return f"num_context={self.num_context}, " + super().extra_repr()
