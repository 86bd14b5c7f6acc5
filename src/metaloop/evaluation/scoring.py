"""Query log-probabilities of any trained classifier on a task batch, and the metrics
computed from them: the common ground of the evaluation wrappers (``Ensemble``,
``BalancedAssignment``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.algorithms.base import Adaptable
from metaloop.tasks.base import TaskBatch


def query_log_probs(
    learner: Adaptable, batch: TaskBatch, steps: Sequence[int]
) -> dict[int, Tensor]:
    """``{s: [T, Q, ways]}`` log-probabilities of every query of ``batch`` after ``s``
    inner steps: ``learner.query_log_probs(batch, steps)`` (the protocol's method; a metric
    learner scores the whole batch once, any other learner adapts per task)."""
    return learner.query_log_probs(batch, steps)


def ensemble_log_probs(members: Sequence[Tensor]) -> Tensor:
    """The ensemble's log-probabilities from its members' ``[..., ways]`` scores: the mean
    of the members' log-softmax, renormalised,

        log p(y | x) = log softmax_y( (1/M) sum_m log softmax(s_m(x))_y ).
    """
    return F.log_softmax(torch.stack([F.log_softmax(m, -1) for m in members]).mean(0), -1)


def evaluation_steps(steps: Sequence[int] | None, default: Sequence[int]) -> tuple[int, ...]:
    """``steps`` (else ``default``) as a tuple, checked to be counts >= 0."""
    steps = tuple(steps) if steps is not None else tuple(default)
    if any(s < 0 for s in steps):
        raise ValueError(f"evaluation step counts must be >= 0, got {steps}")
    return steps


def classification_metrics(log_p: Tensor, query_y: Tensor) -> dict[str, Tensor]:
    """Per-task query loss (mean negative log-probability of the true class) and accuracy,
    ``[T]`` each, from ``log_p [T, Q, ways]`` and ``query_y [T, Q]``."""
    loss = -log_p.gather(-1, query_y.unsqueeze(-1)).squeeze(-1).mean(-1)
    acc = (log_p.argmax(-1) == query_y).to(log_p.dtype).mean(-1)
    return {"loss": loss, "accuracy": acc}


__all__ = ["classification_metrics", "ensemble_log_probs", "evaluation_steps", "query_log_probs"]
