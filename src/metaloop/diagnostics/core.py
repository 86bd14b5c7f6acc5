"""Diagnostics of meta-learning runs, all through the ``MetaLearner`` protocol.

* ``adaptation_curve``: support and query loss after ``0..S`` inner steps — a query curve
  that turns up while the support curve keeps falling is inner-loop overfitting.
* ``meta_gradient_stats``: mean, norm and variance of the meta-gradient over independent
  meta-batches (the signal-to-noise ratio of the outer loop).
* ``first_second_order_gap``: on the same batch, the cosine similarity and relative norm of
  the difference between first- and second-order MAML meta-gradients.
* ``leave_one_task_out``: meta-overfitting on a finite task set: meta-train on all tasks but
  one, compare the loss on the tasks trained on with the loss on the held-out task.
* ``linear_regression_oracle``: the Bayes-optimal (posterior mean) predictor for
  ``LinearRegression`` tasks, a floor no learner can beat in expectation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metaloop.algorithms.base import MetaLearner
from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.functional.params import detach, split_module
from metaloop.tasks.base import TaskBatch, TaskFamily
from metaloop.tasks.synthetic import LinearRegression


@dataclass
class Curve:
    steps: list[int]
    support_loss: list[float]
    query_loss: list[float]

    @property
    def best_query_step(self) -> int:
        return self.steps[min(range(len(self.steps)), key=self.query_loss.__getitem__)]


def adaptation_curve(learner: GradientMetaLearner, batch: TaskBatch, max_steps: int) -> Curve:
    """Mean support and query loss over the batch after each of ``0..max_steps`` inner steps."""
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    steps = list(range(max_steps + 1))
    query = learner.evaluate_batch(batch, steps)
    swapped = TaskBatch(
        batch.support_x, batch.support_y, batch.support_x, batch.support_y, batch.ways
    )
    support = learner.evaluate_batch(swapped, steps)
    return Curve(
        steps,
        [float(support[s]["loss"].mean()) for s in steps],
        [float(query[s]["loss"].mean()) for s in steps],
    )


def _flat_grad(learner: MetaLearner, batch: TaskBatch) -> Tensor:
    learner.zero_grad(set_to_none=True)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    grads = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
        for p in learner.parameters()
    ]
    learner.zero_grad(set_to_none=True)
    return torch.cat(grads)


@dataclass
class GradientStats:
    batches: int
    mean_norm: float
    variance: float  # trace of the covariance of the meta-gradient across batches
    signal_to_noise: float  # ||mean||^2 / trace(cov)


def meta_gradient_stats(
    learner: MetaLearner, family: TaskFamily, meta_batch_size: int, batches: int = 20, seed: int = 0
) -> GradientStats:
    """Mean and spread of the meta-gradient over ``batches`` independent meta-batches."""
    if batches < 2:
        raise ValueError(f"batches must be >= 2 to estimate a variance, got {batches}")
    g = torch.Generator().manual_seed(seed)
    grads = torch.stack(
        [_flat_grad(learner, family.sample(meta_batch_size, g)) for _ in range(batches)]
    )
    mean = grads.mean(0)
    variance = float(grads.var(0, unbiased=True).sum())
    return GradientStats(
        batches, float(mean.norm()), variance, float(mean.norm() ** 2) / max(variance, 1e-30)
    )


@dataclass
class OrderGap:
    cosine: float
    relative_difference: float  # ||g_2 - g_1|| / ||g_2||
    second_order_norm: float
    first_order_norm: float


def first_second_order_gap(learner: GradientMetaLearner, batch: TaskBatch) -> OrderGap:
    """Compare the exact and first-order meta-gradients of a MAML-family learner on one batch."""
    if learner.first_order is None:
        raise TypeError(f"{type(learner).__name__} has no first_order switch (use a MAML learner)")
    original = learner.first_order
    try:
        learner.first_order = False
        g2 = _flat_grad(learner, batch)
        learner.first_order = True
        g1 = _flat_grad(learner, batch)
    finally:
        learner.first_order = original
    cos = float(torch.nn.functional.cosine_similarity(g1, g2, dim=0))
    return OrderGap(
        cos,
        float((g2 - g1).norm() / g2.norm().clamp_min(1e-30)),
        float(g2.norm()),
        float(g1.norm()),
    )


@dataclass
class LeaveOneOut:
    train_loss: float
    held_out_loss: float
    per_task: list[tuple[float, float]]

    @property
    def gap(self) -> float:
        return self.held_out_loss - self.train_loss


def leave_one_task_out(
    make_learner: Callable[[], MetaLearner],
    tasks: TaskBatch,
    iterations: int = 200,
    outer_lr: float = 1e-3,
    steps: Sequence[int] | None = None,
    max_folds: int | None = None,
) -> LeaveOneOut:
    """Meta-overfitting on a finite task set.

    For each fold ``j``: build a fresh learner, meta-train it (full-batch Adam) on all tasks
    but ``j``, then record its post-adaptation query loss on the training tasks and on task
    ``j``.  A held-out loss far above the training loss means the learner memorised the
    task set instead of learning to adapt.
    """
    n = len(tasks)
    if n < 2:
        raise ValueError(f"leave-one-task-out needs at least 2 tasks, got {n}")
    folds = range(n if max_folds is None else min(n, max_folds))
    results = []
    for j in folds:
        keep = [i for i in range(n) if i != j]
        train = TaskBatch(
            tasks.support_x[keep],
            tasks.support_y[keep],
            tasks.query_x[keep],
            tasks.query_y[keep],
            tasks.ways,
        )
        held = TaskBatch(
            tasks.support_x[j : j + 1],
            tasks.support_y[j : j + 1],
            tasks.query_x[j : j + 1],
            tasks.query_y[j : j + 1],
            tasks.ways,
        )
        learner = make_learner()
        adam_meta_train(learner, lambda batch=train: batch, iterations, outer_lr)
        last = lambda r: r[max(r)]["loss"]  # noqa: E731
        results.append(
            (
                float(last(learner.evaluate_batch(train, steps)).mean()),
                float(last(learner.evaluate_batch(held, steps)).mean()),
            )
        )
    return LeaveOneOut(
        sum(r[0] for r in results) / len(results),
        sum(r[1] for r in results) / len(results),
        results,
    )


def adam_meta_train(
    learner: MetaLearner, sample_batch: Callable[[], TaskBatch], iterations: int, outer_lr: float
) -> list[float]:
    """Meta-train ``learner`` in place, the outer loop every analysis that trains shares:
    ``iterations`` Adam steps (rate ``outer_lr``) on ``grad_theta meta_loss(B_t)`` with
    ``B_t = sample_batch()`` drawn afresh each step (or the same batch every step).
    Returns the meta-losses, one per step."""
    opt = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], outer_lr)
    losses = []
    for _ in range(iterations):
        opt.zero_grad()
        loss, _ = learner.meta_loss(sample_batch())
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def linear_regression_oracle(family: LinearRegression, batch: TaskBatch) -> Tensor:
    """Per-task query MSE of the Bayes posterior-mean predictor for ``LinearRegression``.

    Prior ``w ~ N(m, S)`` with ``m = w_mean`` and ``S = w_std^2 B B^T`` (plus a tiny jitter
    where the prior is degenerate), likelihood ``y = Xw + e``, ``e ~ N(0, s^2)``.  With
    ``s > 0`` the posterior mean is ``m + S X^T (X S X^T + s^2 I)^-1 (y - X m)``; with
    ``s = 0`` the same formula with a ``1e-8`` noise floor (exact interpolation).
    """
    x, y = batch.support_x.double(), batch.support_y.double().squeeze(-1)
    m = family.w_mean.double()
    basis = family.basis.double()
    prior = family.w_std**2 * basis @ basis.T
    noise = max(family.noise_std**2, 1e-8)
    gram = x @ prior @ x.transpose(1, 2) + noise * torch.eye(x.shape[1], dtype=torch.float64)
    resid = (y - x @ m).unsqueeze(-1)
    w = m + (prior @ x.transpose(1, 2) @ torch.linalg.solve(gram, resid)).squeeze(-1)
    prediction = torch.einsum("tnd,td->tn", batch.query_x.double(), w)
    return ((prediction - batch.query_y.double().squeeze(-1)) ** 2).mean(-1)


def sinusoid_oracle_mse() -> float:
    """Knowing amplitude and phase, a sinusoid task's query MSE is zero (noise-free family)."""
    return 0.0


def parameter_distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Euclidean distance between two modules' parameters (e.g. before and after adaptation)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return math.sqrt(sum(float(((pa[k] - pb[k]) ** 2).sum()) for k in pa))


def adapted_copy(
    learner: GradientMetaLearner, support: tuple[Tensor, Tensor], steps: int
) -> torch.nn.Module:
    """A copy of the learner's model with the adapted parameters loaded (for inspection)."""
    params, buffers = split_module(learner.model)
    adapted = detach(learner.adapt_params(params, buffers, *support, steps, "first_order"))
    model = copy.deepcopy(learner.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(adapted[name])
    return model
