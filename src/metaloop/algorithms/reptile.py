"""Reptile (Nichol, Achiam and Schulman, 2018).

For each task, run ``K`` steps of the inner optimizer on the task's data to reach
``theta'_i``; the meta-update moves ``theta`` towards the adapted weights:
``theta <- theta - epsilon * (1/T) sum_i (theta - theta'_i)``.

In the ``MetaLearner`` protocol this is the gradient of the surrogate

    R(theta) = (1/T) sum_i 1/2 || theta - stopgrad(theta'_i) ||^2,

so any outer optimizer applies it (plain SGD with learning rate ``epsilon`` is the paper's
rule).  ``use_query=True`` (default) adapts on support and query together, as Reptile uses
all of a task's data; query metrics are still reported after adapting on the support set
alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.algorithms.registry import register
from metaloop.functional.batching import map_tasks
from metaloop.functional.losses import accuracy
from metaloop.functional.params import call, split_module
from metaloop.tasks.base import TaskBatch


@register("reptile")
class Reptile(GradientMetaLearner):
    gradient_mode = "first_order"
    adapts_by_steps = True

    def __init__(self, model: nn.Module, *args: Any, use_query: bool = True, **kwargs: Any):
        super().__init__(model, *args, **kwargs)
        self.use_query = use_query

    def _adapted_per_task(
        self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor
    ) -> tuple[Tensor, ...]:
        """Per task: query loss, accuracy and the adapted parameters (all detached)."""
        params, buffers = split_module(self.model)
        names = self.adapt_names
        model, loss_fn, steps = self.model, self.loss_fn, self.inner_steps
        classification, use_query = self.classification, self.use_query

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, ...]:
            x = torch.cat([sx, qx]) if use_query else sx
            y = torch.cat([sy, qy]) if use_query else sy
            adapted = self.adapt_params(params, buffers, x, y, steps, "first_order")
            prediction = call(model, adapted, buffers, qx)
            loss = loss_fn(prediction, qy).detach()
            acc = accuracy(prediction, qy) if classification else torch.zeros_like(loss)
            return (loss, acc.detach(), *(adapted[n].detach() for n in names))

        return map_tasks(per_task, sx, sy, qx, qy, policy=self.policy, chunk_size=self.chunk_size)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        params = dict(self.model.named_parameters())
        names = self.adapt_names
        # the speed options (compile, autocast, channels-last) apply to the inner loops
        run = self.speed.wrap(self, "reptile", type(self)._adapted_per_task)
        loss_q, acc, *adapted = run(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        tasks = batch.support_x.shape[0]
        surrogate = (
            0.5
            * sum(((params[n].unsqueeze(0) - a) ** 2).sum() for n, a in zip(names, adapted))
            / tasks
        )
        metrics = self.metrics(surrogate, loss_q, acc)
        metrics["query_loss_trained_on"] = metrics.pop("query_loss")
        return surrogate, metrics
