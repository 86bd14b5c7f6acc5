"""Implicit MAML (Rajeswaran, Finn, Kakade and Levine, 2019).

The inner loop solves a proximally regularised problem per task,

    phi_i*(theta) = argmin_phi  L_support_i(phi) + lam/2 ||phi - theta||^2,

approximately, with ``inner_steps`` steps of the inner optimizer started at ``theta``.
Because ``phi*`` is a stationary point, its Jacobian is ``(I + H_i/lam)^{-1}`` with
``H_i`` the support Hessian at ``phi*`` (implicit function theorem), whatever path the
inner optimizer took; the meta-gradient of ``L_query_i(phi_i*)`` is the solution of
``(I + H_i/lam) v_i = grad L_query_i(phi_i*)``, found by conjugate gradient with
Hessian-vector products (``metaloop.functional.implicit``).  Memory does not grow with
the number of inner steps: nothing is differentiated through the inner loop.

``meta_loss`` returns ``(1/T) sum_i L_query_i(phi_i)`` as its value and
``(1/T) sum_i v_i`` as its gradient with respect to ``theta`` (a surrogate
``<stopgrad(v), theta>`` is added and subtracted), so any outer optimizer applies.
Adaptation at test time (``adapt``, ``evaluate_batch``) runs the same proximal inner loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad_and_value

from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.algorithms.registry import register
from metaloop.functional.batching import map_tasks
from metaloop.functional.implicit import implicit_meta_gradient
from metaloop.functional.inner import TaskLoss
from metaloop.functional.losses import accuracy
from metaloop.functional.params import Params, call, detach, split_module, squared_distance
from metaloop.tasks.base import TaskBatch
from metaloop.validate import is_int


@register("imaml")
class IMAML(GradientMetaLearner):
    """Implicit MAML.

    Args:
        model: any ``nn.Module`` (every parameter adapts; ``adapt`` is not accepted, since
            the implicit gradient here is that of the full proximal problem).
        lam: proximal regularisation strength ``lambda > 0``.  ``I + H/lam`` must be
            positive definite for conjugate gradient (``lam`` above minus the smallest
            Hessian eigenvalue); larger ``lam`` keeps ``phi`` nearer ``theta``.
        cg_steps: conjugate-gradient iterations (the paper uses about 5).
        inner_lr, inner_steps, inner_optimizer, ...: as for ``GradientMetaLearner``; the
            inner loop minimises the regularised support loss.
    """

    adapts_by_steps = True

    # the inner loop is never differentiated through
    gradient_mode = "first_order"

    def __init__(
        self, model: nn.Module, *args: Any, lam: float = 1.0, cg_steps: int = 5, **kwargs: Any
    ) -> None:
        if "adapt" in kwargs:
            raise TypeError("IMAML adapts every parameter; adapt= is not accepted")
        super().__init__(model, *args, **kwargs)
        if not isinstance(lam, (int, float)) or not 0 < lam < float("inf"):
            raise ValueError(f"lam must be a positive finite number, got {lam!r}")
        if not is_int(cg_steps) or cg_steps < 1:
            raise ValueError(f"cg_steps must be a positive integer, got {cg_steps!r}")
        self.lam = float(lam)
        self.cg_steps = cg_steps

    def task_loss(self, buffers: Params) -> TaskLoss:
        """The proximal inner objective ``L(phi) + lam/2 ||phi - theta||^2``, anchored at the
        model's current (detached) parameters ``theta``."""
        plain = super().task_loss(buffers)
        anchor = detach(dict(self.model.named_parameters()))
        lam = self.lam

        def loss(params: Params, x: Tensor, y: Tensor, bufs: Params | None = None) -> Tensor:
            return plain(params, x, y, bufs) + 0.5 * lam * squared_distance(params, anchor)

        return loss

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        params, buffers = split_module(self.model)
        names = list(params)
        theta = detach(params)
        plain = GradientMetaLearner.task_loss(self, buffers)
        model, loss_fn, classification = self.model, self.loss_fn, self.classification
        lam, cg_steps, steps = self.lam, self.cg_steps, self.inner_steps

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, ...]:
            phi = detach(self.adapt_params(theta, buffers, sx, sy, steps, "first_order"))

            def query(p: Params) -> tuple[Tensor, Tensor]:
                prediction = call(model, p, buffers, qx)
                return loss_fn(prediction, qy), prediction

            g_q, (loss, prediction) = grad_and_value(query, has_aux=True)(phi)
            v, residual = implicit_meta_gradient(
                lambda p: plain(p, sx, sy), phi, g_q, lam, cg_steps
            )
            acc = accuracy(prediction, qy) if classification else torch.zeros_like(loss)
            return (loss.detach(), acc.detach(), residual.detach(), *(v[n].detach() for n in names))

        losses, accs, residuals, *vs = map_tasks(
            per_task,
            batch.support_x,
            batch.support_y,
            batch.query_x,
            batch.query_y,
            policy=self.policy,
            chunk_size=self.chunk_size,
        )
        query_loss = losses.mean()
        surrogate = sum((params[n] * v.mean(0)).sum() for n, v in zip(names, vs))
        loss = query_loss + surrogate - surrogate.detach()
        metrics = self.metrics(loss, losses, accs)
        metrics["cg_residual"] = float(residuals.mean())
        return loss, metrics

    def extra_repr(self) -> str:
        return f"lam={self.lam}, cg_steps={self.cg_steps}, " + super().extra_repr()
