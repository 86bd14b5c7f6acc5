"""Transductive fine-tuning, a test-time procedure of the gradient learners.

Dhillon et al., "A Baseline for Few-Shot Image Classification" (2020).  With weight
``lambda > 0`` (``transductive_entropy``) evaluation adapts each task on its support set
*and* its unlabelled query inputs ``x_q``:

    L_inner(theta) = CE(f_theta(x_s), y_s) + lambda * (1/Q) sum_q H(softmax f_theta(x_q)),
    H(p) = -sum_k p_k log p_k,

with support and queries in one forward pass (batch statistics of the whole episode), and
scores the queries from that same joint forward, so a query's prediction depends on the
other queries of its task.  Report such figures as transductive.  Meta-training is
unchanged: ``GradientMetaLearner.meta_loss`` never calls this module; ``evaluate_batch``
and ``adapt`` do when the learner's ``transductive`` is true (Proto-MAML's transductive
prototypes use the joint forward with ``lambda = 0``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from metaloop.functional.executor import with_norm_rows
from metaloop.functional.inner import TaskLoss, inner_steps_iter
from metaloop.functional.params import Params, call

if TYPE_CHECKING:
    from metaloop.algorithms.gradient import GradientMetaLearner


def check_entropy_weight(weight: object, classification: bool, loss: object) -> float:
    """``lambda`` as a float, or a one-line error naming what is wrong."""
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not 0 <= weight < float("inf")
    ):
        raise ValueError(
            f"transductive_entropy must be a finite number >= 0 (0 turns it off), got {weight!r}"
        )
    if weight > 0 and not classification:
        raise ValueError(
            "transductive_entropy needs a classification loss ('cross_entropy'): the "
            f"query entropy is of class probabilities, but the loss is {loss!r}"
        )
    return float(weight)


def mean_entropy(logits: Tensor) -> Tensor:
    """``(1/Q) sum_q H(softmax(logits_q))`` over the rows of ``logits [Q, C]`` (0 if empty)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def transductive_loss(learner: GradientMetaLearner, buffers: Params) -> TaskLoss:
    """``(params, [x_s; x_q], y_s) -> CE(f(x_s), y_s) + lambda * mean_q H(f(x_q))``.

    One forward over support and queries; the rows after ``len(y_s)`` are the queries.
    """
    model, loss_fn, weight = learner.model, learner.loss_fn, learner.transductive_entropy

    def loss(params: Params, x: Tensor, y: Tensor, bufs: Params | None = None) -> Tensor:
        out = call(model, params, buffers if bufs is None else bufs, x)
        n_support = y.shape[0]
        support_loss = loss_fn(out[:n_support], y)
        if weight == 0:  # joint normalization only (e.g. Proto-MAML's transductive init)
            return support_loss
        return support_loss + weight * mean_entropy(out[n_support:])

    return loss


def transductive_predictions(
    learner: GradientMetaLearner,
    params: Params,
    buffers: Params,
    sx: Tensor,
    sy: Tensor,
    qx: Tensor,
    steps: int,
) -> Iterator[Tensor]:
    """Query predictions after 0 .. ``steps`` steps of transductive fine-tuning."""
    model, n_support, both = learner.model, sx.shape[0], torch.cat([sx, qx])
    learner.set_norm_row(0)
    start = learner.task_init(params, buffers, sx, sy, context=qx)
    yield call(model, start, buffers, both)[n_support:]
    inner = inner_steps_iter(
        transductive_loss(learner, buffers),
        start,
        both,
        sy,
        learner.inner_optimizer,
        steps,
        "first_order",
        learner.adapt_names,
        buffers=buffers,
    )
    if learner.per_step_norm:
        inner = with_norm_rows(model, inner)
    for adapted, _ in inner:
        yield call(model, adapted, buffers, both)[n_support:]


def transductive_predictor(
    learner: GradientMetaLearner,
    params: Params,
    buffers: Params,
    sx: Tensor,
    sy: Tensor,
    steps: int,
) -> Callable[[Tensor], Tensor]:
    """``adapt`` of a transductive learner: a predictor that runs the inner loop on the
    support and the inputs it is given (once per call) and returns their predictions."""

    def predict(inputs: Tensor) -> Tensor:
        *_, last = transductive_predictions(learner, params, buffers, sx, sy, inputs, steps)
        return last.detach()

    return predict
