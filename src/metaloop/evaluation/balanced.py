"""Balanced transductive inference for any trained classifier.

``BalancedAssignment`` wraps a classifier (a single learner, an ``Ensemble``, a
``ShiftAveraged``) and predicts all queries of a task jointly under the constraint that
every class receives the same share of them: the wrapped learner's query log-probabilities
``log p_jk`` are balanced by Sinkhorn-Knopp (``metaloop.functional.assignment``),

    P = diag(a) p^(1/tau) diag(b),   sum_k P_jk = 1,   sum_j P_jk = Q / W,

and ``log P`` is the prediction.  On a 20-way task with one query per class this turns 20
independent decisions into (nearly, as ``tau -> 0`` exactly) a one-to-one matching of
queries to classes: two queries that both prefer class ``k`` compete for it, and the less
confident one moves to its next choice.

The assumption is part of the protocol, not of the data: sampled N-way K-shot Q-query
episodes and Lake's 20 runs have balanced query sets; a deployment rarely does.  Every
figure obtained with this wrapper is transductive and assumes balance, and
``evaluate_batch`` refuses batches whose query labels are not balanced, so the assumption is
never applied where it is false without notice.  An evaluation construct: ``meta_loss`` is
refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.algorithms.base import Adaptable, Predictor, StepMetrics
from metaloop.algorithms.metric import infer_ways
from metaloop.evaluation.scoring import classification_metrics, evaluation_steps
from metaloop.evaluation.wrapper import EvaluationWrapper
from metaloop.functional.assignment import balance_log_probs, check_balance_options
from metaloop.tasks.base import Task, TaskBatch, TaskError


class BalancedAssignment(EvaluationWrapper):
    """``learner`` with its query predictions balanced over classes (module docstring).

    Args:
        learner: a trained classifier (any ``MetaLearner`` with a classification loss).
        temperature: ``tau > 0``; 1 keeps the learner's confidence, smaller values approach
            the hard one-to-one assignment.
        iterations: the most Sinkhorn sweeps.
    """

    def __init__(self, learner: Adaptable, temperature: float = 1.0, iterations: int = 100) -> None:
        super().__init__(
            learner,
            "cross_entropy",
            needs_classifier="balanced assignment distributes class probabilities",
        )
        check_balance_options(iterations, temperature)
        self.temperature = float(temperature)
        self.iterations = iterations

    def balance(self, log_p: Tensor) -> Tensor:
        return balance_log_probs(log_p, self.iterations, self.temperature)

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        """Adapt the wrapped learner; the predictor balances the queries given to one call
        (``[Q, ...]`` -> ``[Q, ways]`` log-probabilities)."""
        predictor = self.learner.adapt(support, steps)

        def predict(x: Tensor) -> Tensor:
            return self.balance(F.log_softmax(predictor(x), -1))

        return predict

    def query_log_probs(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        """``{s: [T, Q, ways]}`` balanced log-probabilities of every query of ``batch``."""
        return {s: self.balance(lp) for s, lp in self.learner.query_log_probs(batch, steps).items()}

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """Per-task query loss and accuracy of the balanced predictions for every step
        count in ``steps``; the batch's query labels must be balanced."""
        check_balanced(batch)
        steps = evaluation_steps(steps, self.default_eval_steps)
        log_ps = self.query_log_probs(batch, steps)
        return {s: classification_metrics(log_ps[s], batch.query_y) for s in steps}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, iterations={self.iterations}"


def check_balanced(batch: TaskBatch) -> None:
    """Raise ``TaskError`` unless every task's queries are spread evenly over its classes."""
    check_balanced_labels(batch.query_y, infer_ways(batch.support_y, batch.ways))


def check_balanced_labels(query_y: Tensor, ways: int) -> None:
    """Raise ``TaskError`` unless every row of ``query_y [T, Q]`` holds each of the
    ``ways`` classes equally often."""
    counts = F.one_hot(query_y, ways).sum(1)  # [T, ways]
    uneven = (counts != counts[:, :1]).any(1)
    if bool(uneven.any()):
        t = int(uneven.nonzero()[0])
        raise TaskError(
            "balanced assignment assumes every class has the same number of queries, but "
            f"task {t} has per-class query counts {counts[t].tolist()}: its query set is not "
            "balanced; use it only on balanced episodes (N-way K-shot Q-query, Lake's runs)"
        )


__all__ = ["BalancedAssignment", "check_balanced", "check_balanced_labels"]
