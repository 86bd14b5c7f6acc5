"""The one protocol every algorithm speaks.

A ``MetaLearner`` is an ``nn.Module`` whose parameters are everything the outer loop
learns.  It answers two questions:

* ``adapt(support, steps)``: a predictor specialised to one task's support set;
* ``meta_loss(batch)``: a scalar whose gradient with respect to ``self.parameters()`` is
  the meta-gradient for a batch of tasks, plus metrics as plain floats.

``evaluate_batch`` scores adaptation on the query sets of a batch; the default goes
through ``adapt`` task by task, and learners override it when they can do better (the
gradient-based ones run one inner loop and read off every requested step count).

The trainer, evaluation, diagnostics, benchmarks and distributed training only ever use
this protocol, so they never know which algorithm they run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from metaloop.functional.losses import LossFn, accuracy, get_loss, is_classification
from metaloop.tasks.base import Task, TaskBatch

Predictor = Callable[[Tensor], Tensor]
StepMetrics = dict[int, dict[str, Tensor]]


def as_support(support: Task | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    if isinstance(support, Task):
        return support.support
    x, y = support
    return x, y


class MetaLearner(nn.Module):
    """Base class: holds the task loss and the default evaluation through ``adapt``."""

    #: step counts at which ``evaluate_batch`` reports by default
    default_eval_steps: tuple[int, ...] = (0,)

    def __init__(self, loss: str | LossFn = "mse") -> None:
        super().__init__()
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)
        self.classification = is_classification(loss)

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        raise NotImplementedError

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def query_metrics(self, prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Loss (and accuracy for classification) of a prediction on a query set."""
        metrics = {"loss": self.loss_fn(prediction, target)}
        if self.classification:
            metrics["accuracy"] = accuracy(prediction, target)
        return metrics

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """Per-task query metrics after adapting with each step count in ``steps``.

        Returns ``{steps: {"loss": Tensor[T], "accuracy": Tensor[T]?}}``.
        """
        steps = tuple(steps) if steps is not None else self.default_eval_steps
        out: StepMetrics = {}
        for s in steps:
            per_task: dict[str, list[Tensor]] = {}
            for task in batch:
                with torch.enable_grad():
                    predictor = self.adapt(task.support, steps=s)
                metrics = self.query_metrics(predictor(task.query_x), task.query_y)
                for k, v in metrics.items():
                    per_task.setdefault(k, []).append(v.detach())
            out[s] = {k: torch.stack(v) for k, v in per_task.items()}
        return out

    def extra_repr(self) -> str:
        return f"loss={self.loss_name}"
