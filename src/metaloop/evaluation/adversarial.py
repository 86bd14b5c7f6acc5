"""Robustness to adversarial queries, for any trained learner.

``AdversarialQueries(learner, epsilon)`` evaluates ``learner`` as usual except that every
query is replaced by its FGSM example against the *adapted* predictor (white box, the
true query labels):

    x_adv = x + epsilon * sign(grad_x L(f_adapted(x), y)),

and the query metrics are those of ``f_adapted(x_adv)``.  The predictor adapts on the
clean support set, once per step count.  ``epsilon = 0`` is the plain evaluation.  An
evaluation wrapper (no ``meta_loss``; ADML trains on adversarial examples), and ``adapt``
returns the wrapped learner's predictor (it has no labels to attack with).
"""

from __future__ import annotations

from torch import Tensor

from metaloop.algorithms.base import Adaptable, Predictor
from metaloop.evaluation.wrapper import EvaluationWrapper
from metaloop.functional.adversarial import check_epsilon, fgsm
from metaloop.tasks.base import Task


class AdversarialQueries(EvaluationWrapper):
    """``learner`` scored on FGSM queries of radius ``epsilon``."""

    def __init__(self, learner: Adaptable, epsilon: float) -> None:
        super().__init__(learner)
        self.epsilon = check_epsilon(epsilon)

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        """The wrapped learner's predictor, unattacked: the attack needs the query labels,
        so it happens in ``task_metrics`` (``evaluate``, ``evaluate_batch``)."""
        return self.learner.adapt(support, steps)

    def task_metrics(self, predictor: Predictor, task: Task) -> dict[str, Tensor]:
        """Metrics of ``predictor`` on the FGSM examples of the task's queries."""
        attacked = fgsm(
            lambda x: self.loss_fn(predictor(x), task.query_y), task.query_x, self.epsilon
        )
        return self.query_metrics(predictor(attacked), task.query_y)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


__all__ = ["AdversarialQueries"]
