"""Robustness to adversarial queries, for any trained learner.

``AdversarialQueries(learner, epsilon)`` evaluates ``learner`` as usual except that every
query is replaced by its FGSM example against the *adapted* predictor (white box, the
true query labels):

    x_adv = x + epsilon * sign(grad_x L(f_adapted(x), y)),

and the query metrics are those of ``f_adapted(x_adv)``.  The predictor adapts on the
clean support set, once per step count.  ``epsilon = 0`` is the plain evaluation.  An
evaluation construct: ``meta_loss`` and ``adapt`` (which has no labels to attack with)
are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metaloop.algorithms.base import MetaLearner, Predictor, StepMetrics
from metaloop.functional.adversarial import check_epsilon, fgsm
from metaloop.tasks.base import Task, TaskBatch


class AdversarialQueries(MetaLearner):
    """``learner`` scored on FGSM queries of radius ``epsilon``."""

    def __init__(self, learner: MetaLearner, epsilon: float) -> None:
        if not isinstance(learner, MetaLearner):
            raise TypeError(f"AdversarialQueries wraps a MetaLearner, got {type(learner).__name__}")
        super().__init__(learner.loss_fn)
        self.loss_name, self.classification = learner.loss_name, learner.classification
        self.learner = learner
        self.epsilon = check_epsilon(epsilon)
        self.default_eval_steps = tuple(learner.default_eval_steps)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError(
            "AdversarialQueries is for evaluation: meta-train the wrapped learner (ADML "
            "trains on adversarial examples)"
        )

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        raise NotImplementedError(
            "AdversarialQueries attacks with the query labels: use evaluate / evaluate_batch"
        )

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        steps = tuple(steps) if steps is not None else self.default_eval_steps
        out: StepMetrics = {}
        for s in steps:
            per_task: dict[str, list[Tensor]] = {}
            for task in batch:
                with torch.enable_grad():
                    predictor = self.learner.adapt(task.support, steps=s)
                attacked = fgsm(
                    lambda x, p=predictor, y=task.query_y: self.loss_fn(p(x), y),
                    task.query_x,
                    self.epsilon,
                )
                for k, v in self.query_metrics(predictor(attacked), task.query_y).items():
                    per_task.setdefault(k, []).append(v.detach())
            out[s] = {k: torch.stack(v) for k, v in per_task.items()}
        return out

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


__all__ = ["AdversarialQueries"]
