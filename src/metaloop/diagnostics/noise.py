"""Where the meta-gradient's noise comes from, and how second order amplifies it.

A one-task meta-gradient ``g`` depends on three random draws: the task ``i``, its support
set ``j`` and its query set ``k``.  By the law of total variance its covariance splits as

    Cov(g) = Cov_i(E[g | i])                  (task sampling)
           + E_i Cov_j(E[g | i, j])           (support sampling)
           + E_ij Cov_k(g | i, j)             (query sampling),

and a meta-batch of ``T`` tasks divides each term by ``T``.  ``decompose_meta_gradient_noise``
estimates the three traces by nested resampling: ``tasks`` tasks, each with a fixed set of
points; for each, ``supports`` support sets and for each of those ``queries`` query sets,
drawn with replacement from the task's points (so the conditional distributions are the
points' empirical ones).  With ``g_ijk`` the flattened meta-gradient, the unbiased
balanced nested-ANOVA estimates are

    query   = mean_ij  var_k g_ijk
    support = mean_i   var_j gbar_ij.  -  query / K
    task    = var_i    gbar_i..       -  support / J  -  query / (J K)

(traces of sample covariances; an estimate may come out slightly negative by chance).

Second order vs first order.  For one inner step the exact meta-gradient is
``(I - alpha H_s) grad L_q(theta')`` and the first-order one ``grad L_q(theta')``; where the
Hessian is constant (quadratics, linear models with MSE) the query-sampling part of the
second-order covariance is ``(I - alpha H_s) C_q (I - alpha H_s)``: it gains
``-alpha (H C + C H)`` and ``+alpha^2 H C H`` over the first-order ``C_q``.
``order_amplification`` reports the ratio per source; ``quadratic_meta_gradient_variance``
is the closed form on 1-D quadratics with ``h ~ U[a, b]``, ``theta* ~ N(0, s^2)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from metaloop.algorithms.base import MetaLearner
from metaloop.diagnostics.core import _flat_grad
from metaloop.tasks.base import TaskBatch, TaskFamily


@dataclass
class NoiseDecomposition:
    task: float  # trace of Cov_i(E[g | i])
    support: float  # trace of E_i Cov_j(E[g | i, j])
    query: float  # trace of E_ij Cov_k(g | i, j)
    total: float  # task + support + query: a one-task meta-batch's covariance trace
    tasks: int
    supports: int
    queries: int

    def for_meta_batch(self, meta_batch_size: int) -> float:
        """Trace of the covariance of the mean meta-gradient over ``meta_batch_size`` tasks."""
        return self.total / meta_batch_size


def _points_family(family: TaskFamily, points: int) -> TaskFamily:
    """A copy of ``family`` whose tasks have ``points`` points (support and query together)."""
    if not (hasattr(family, "shots") and hasattr(family, "queries")):
        raise ValueError(
            f"{type(family).__name__} has no shots/queries to enlarge; nested resampling needs "
            "a family like Sinusoid, LinearRegression or GaussianMean"
        )
    big = copy.copy(family)
    big.shots, big.queries = points // 2, points - points // 2
    return big


def nested_gradients(
    learner: MetaLearner,
    family: TaskFamily,
    tasks: int,
    supports: int,
    queries: int,
    points: int = 200,
    seed: int = 0,
) -> Tensor:
    """One-task meta-gradients ``g[i, j, k]`` (flattened, float64) by nested resampling.

    With ``supports = queries = 1`` the family's own episodes are used (task sampling only);
    otherwise each task gets ``points`` points and its support (``family.shots`` points)
    and query sets (``family.queries``) are drawn from them with replacement.
    """
    for name, value in (("tasks", tasks), ("supports", supports), ("queries", queries)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    if supports == 1 and queries == 1:
        for _ in range(tasks):
            out.append(_flat_grad(learner, family.sample(1, gen)).double().reshape(1, 1, -1))
        return torch.stack(out)
    shots, n_query = family.shots, family.queries
    pool = _points_family(family, points).sample(tasks, gen)
    x = torch.cat([pool.support_x, pool.query_x], 1)
    y = torch.cat([pool.support_y, pool.query_y], 1)
    total = x.shape[1]
    for i in range(tasks):
        per_task = []
        for _ in range(supports):
            s = torch.randint(total, (shots,), generator=gen)
            per_support = []
            for _ in range(queries):
                q = torch.randint(total, (n_query,), generator=gen)
                batch = TaskBatch(
                    x[i, s].unsqueeze(0),
                    y[i, s].unsqueeze(0),
                    x[i, q].unsqueeze(0),
                    y[i, q].unsqueeze(0),
                    pool.ways,
                )
                per_support.append(_flat_grad(learner, batch).double())
            per_task.append(torch.stack(per_support))
        out.append(torch.stack(per_task))
    return torch.stack(out)


def decompose(grads: Tensor) -> NoiseDecomposition:
    """The nested-ANOVA estimates (module docstring) from ``grads [I, J, K, P]``."""
    n_task, n_support, n_query = grads.shape[:3]
    query = float(grads.var(2).sum(-1).mean()) if n_query > 1 else 0.0
    support = 0.0
    if n_support > 1:
        support = float(grads.mean(2).var(1).sum(-1).mean()) - query / n_query
    task = 0.0
    if n_task > 1:
        task = float(grads.mean((1, 2)).var(0).sum()) - support / n_support
        task -= query / (n_support * n_query)
    return NoiseDecomposition(
        task, support, query, task + support + query, n_task, n_support, n_query
    )


def decompose_meta_gradient_noise(
    learner: MetaLearner,
    family: TaskFamily,
    tasks: int = 8,
    supports: int = 4,
    queries: int = 4,
    points: int = 200,
    seed: int = 0,
) -> NoiseDecomposition:
    """Trace of the one-task meta-gradient covariance by source (module docstring)."""
    return decompose(nested_gradients(learner, family, tasks, supports, queries, points, seed))


@dataclass
class OrderAmplification:
    first_order: NoiseDecomposition
    second_order: NoiseDecomposition

    @property
    def ratios(self) -> dict[str, float]:
        """Second-order over first-order covariance trace, per source."""
        out = {}
        for key in ("task", "support", "query", "total"):
            fo = getattr(self.first_order, key)
            out[key] = getattr(self.second_order, key) / fo if fo else float("nan")
        return out


def order_amplification(
    learner: MetaLearner,
    family: TaskFamily,
    tasks: int = 8,
    supports: int = 4,
    queries: int = 4,
    points: int = 200,
    seed: int = 0,
) -> OrderAmplification:
    """The noise decomposition of the same draws with first- and second-order meta-gradients
    (the learner's ``first_order`` switch; restored afterwards)."""
    if learner.first_order is None:
        raise ValueError(f"{type(learner).__name__} has no first_order switch (use MAML)")
    original = learner.first_order
    try:
        parts = {}
        for first in (True, False):
            learner.first_order = first
            parts[first] = decompose_meta_gradient_noise(
                learner, family, tasks, supports, queries, points, seed
            )
    finally:
        learner.first_order = original
    return OrderAmplification(parts[True], parts[False])


def _uniform_moment(low: float, high: float, alpha: float, power: int) -> float:
    """``E[(1 - alpha h)^power]`` for ``h ~ U[low, high]``."""
    if alpha == 0:
        return 1.0
    a, b = 1 - alpha * low, 1 - alpha * high
    return (a ** (power + 1) - b ** (power + 1)) / (alpha * (power + 1) * (high - low))


def quadratic_meta_gradient_variance(
    theta: float,
    inner_lr: float,
    curvature_range: tuple[float, float],
    optimum_std: float,
    second_order: bool,
) -> float:
    """Closed-form variance over tasks of one-step MAML's meta-gradient on 1-D quadratics.

    Task ``L_s = h/2 (theta - theta*)^2``, query ``1/2 (theta' - theta*)^2`` (the
    ``Quadratic`` family): ``theta' - theta* = u (theta - theta*)`` with ``u = 1 - alpha h``,
    so the first-order meta-gradient is ``u (theta - theta*)`` and the second-order one
    ``u^2 (theta - theta*)``.  With ``m = 1`` (first) or ``2`` (second order), ``h``
    uniform and ``theta* ~ N(0, s^2)`` independent:

        Var = E[u^(2m)] (theta^2 + s^2) - E[u^m]^2 theta^2.
    """
    low, high = curvature_range
    m = 2 if second_order else 1
    second = _uniform_moment(low, high, inner_lr, 2 * m) * (theta**2 + optimum_std**2)
    return second - _uniform_moment(low, high, inner_lr, m) ** 2 * theta**2


@dataclass
class BatchSizePoint:
    meta_batch_size: int
    trace: float  # trace of the covariance of the mean meta-gradient over the meta-batch
    ci95: float  # 1.96 sqrt(2 tr(S^2) / (n - 1)): the Gaussian approximation
    batches: int


@dataclass
class BatchSizeScaling:
    points: list[BatchSizePoint]
    slope: float  # least-squares slope of log trace against log B (1/B: -1)
    one_task_trace: float  # B * trace extrapolated by the fit at B = 1 with slope -1


def mean_gradient_covariance(grads: Tensor) -> tuple[float, float]:
    """``(tr S, half-width)`` for the rows of ``grads [n, P]``: ``S`` the unbiased sample
    covariance; the 95% half-width ``1.96 sqrt(2 tr(S^2) / (n - 1))`` is the Gaussian
    approximation of the estimator's spread (``Var tr S = 2 tr(Sigma^2) / (n - 1)`` for
    normal rows), with ``tr(S^2) = ||C C^T||_F^2 / (n - 1)^2``, ``C`` the centred rows."""
    n = grads.shape[0]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 gradients, got {n}")
    centred = grads.double() - grads.double().mean(0)
    trace = float((centred**2).sum()) / (n - 1)
    gram = centred @ centred.T
    trace_sq = float((gram**2).sum()) / (n - 1) ** 2
    return trace, 1.96 * (2 * trace_sq / (n - 1)) ** 0.5


def meta_batch_scaling(
    learner: MetaLearner,
    family: TaskFamily,
    batch_sizes: list[int],
    batches: int = 50,
    seed: int = 0,
) -> BatchSizeScaling:
    """Trace of the covariance of the meta-gradient (the mean over a meta-batch of ``B``
    tasks) against ``B``, measured directly from ``batches`` independent meta-batches per
    size (no decomposition), with its Gaussian 95% interval and the log-log slope.

    With independent tasks the meta-gradient of ``B`` tasks is a mean of ``B``
    independent one-task gradients, so ``tr Cov = tr Cov_1 / B`` (slope -1); a batch
    whose tasks share draws (or a learner whose loss couples tasks) would bend it.
    """
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {batch_sizes}")
    if batches < 2:
        raise ValueError(f"batches must be >= 2 to estimate a covariance, got {batches}")
    gen = torch.Generator().manual_seed(seed)
    points = []
    for size in batch_sizes:
        grads = torch.stack([_flat_grad(learner, family.sample(size, gen)) for _ in range(batches)])
        trace, half = mean_gradient_covariance(grads)
        points.append(BatchSizePoint(size, trace, half, batches))
    logs = torch.tensor(
        [[float(torch.tensor(p.meta_batch_size).log()), max(p.trace, 1e-300)] for p in points],
        dtype=torch.float64,
    )
    x, y = logs[:, 0], logs[:, 1].log()
    slope = float(
        ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum().clamp_min(1e-30)
    )
    one_task = float(torch.exp((y + x).mean()))  # the fit with slope -1 through the points
    return BatchSizeScaling(points, slope if len(points) > 1 else float("nan"), one_task)
