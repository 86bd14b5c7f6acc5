"""Meta-overfitting: how much worse a meta-learner does on tasks it was not meta-trained on.

* ``risk_inflation``: the risk inflation ratio ``R = E[held-out-task loss] / E[training-task
  loss]`` (post-adaptation query losses) with a 95% confidence interval from the delta
  method on ``log R``.  ``R = 1``: the learner adapts as well to new tasks as to the tasks
  it saw; ``R >> 1``: it memorised its task set.
* ``loto_risk_inflation``: the same ratio from a ``leave_one_task_out`` result, paired by
  fold (the covariance of the two losses across folds enters the interval).
* ``TaskPool``: a fixed, finite pool of tasks (each with a fixed set of points) that samples
  episodes like a task family: the meta-training set of the pool-size experiment.
* ``pool_size_sweep``: meta-train a fresh learner on pools of ``N`` tasks for each ``N`` and
  report the ratio against ``N`` (held-out tasks drawn fresh from the family).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metaloop.algorithms.base import MetaLearner
from metaloop.diagnostics.core import LeaveOneOut
from metaloop.tasks.base import TaskBatch, TaskFamily

_Z95 = 1.959963984540054


@dataclass
class RiskInflation:
    ratio: float  # mean held-out loss / mean training-task loss
    low: float  # 95% confidence interval of the ratio
    high: float
    train_loss: float
    held_out_loss: float
    train_tasks: int
    held_out_tasks: int


def _log_ratio_interval(
    ratio: float, log_variance: float, train: float, held: float, n_train: int, n_held: int
) -> RiskInflation:
    half = _Z95 * math.sqrt(max(log_variance, 0.0))
    return RiskInflation(
        ratio, ratio * math.exp(-half), ratio * math.exp(half), train, held, n_train, n_held
    )


def risk_inflation(train_losses: Tensor, held_out_losses: Tensor) -> RiskInflation:
    """``R = mean(held_out) / mean(train)`` for two independent samples of per-task losses.

    95% interval: ``log R +- 1.96 sqrt(s_h^2 / (n_h m_h^2) + s_t^2 / (n_t m_t^2))`` (delta
    method on the log of a ratio of two independent means ``m`` with sample variances
    ``s^2``), mapped back by ``exp``.
    """
    t, h = train_losses.double().reshape(-1), held_out_losses.double().reshape(-1)
    if len(t) < 2 or len(h) < 2:
        raise ValueError(
            f"risk_inflation needs at least 2 losses on each side, got {len(t)} and {len(h)}"
        )
    mt, mh = float(t.mean()), float(h.mean())
    if mt <= 0 or mh <= 0:
        raise ValueError(f"losses must have positive means, got train {mt}, held-out {mh}")
    var = float(h.var()) / (len(h) * mh**2) + float(t.var()) / (len(t) * mt**2)
    return _log_ratio_interval(mh / mt, var, mt, mh, len(t), len(h))


def loto_risk_inflation(result: LeaveOneOut) -> RiskInflation:
    """The risk inflation ratio of a ``leave_one_task_out`` result, paired by fold.

    Fold ``j`` gives a training loss ``t_j`` and a held-out loss ``h_j`` from the same
    learner, so ``Var(log R) ~ [s_h^2 / m_h^2 + s_t^2 / m_t^2 - 2 s_ht / (m_h m_t)] / n``
    (``s_ht`` the covariance across folds).
    """
    pairs = torch.tensor(result.per_task, dtype=torch.float64)
    n = len(pairs)
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 folds, got {n}")
    t, h = pairs[:, 0], pairs[:, 1]
    mt, mh = float(t.mean()), float(h.mean())
    if mt <= 0 or mh <= 0:
        raise ValueError(f"losses must have positive means, got train {mt}, held-out {mh}")
    cov = float(((t - mt) * (h - mh)).sum()) / (n - 1)
    var = (float(h.var()) / mh**2 + float(t.var()) / mt**2 - 2 * cov / (mh * mt)) / n
    return _log_ratio_interval(mh / mt, var, mt, mh, n, n)


class TaskPool:
    """A finite pool of tasks that samples episodes like a task family.

    ``tasks`` holds ``N`` tasks whose support and query points together form each task's
    fixed set of ``P`` points.  ``sample(T, g)`` draws ``T`` pool tasks uniformly with
    replacement and, for each, ``shots + queries`` distinct points of that task at random
    (first ``shots`` for the support set, the rest for the query set).
    """

    def __init__(self, tasks: TaskBatch, shots: int, queries: int) -> None:
        self.x = torch.cat([tasks.support_x, tasks.query_x], 1)
        self.y = torch.cat([tasks.support_y, tasks.query_y], 1)
        points = self.x.shape[1]
        if shots < 1 or queries < 1 or shots + queries > points:
            raise ValueError(
                f"shots and queries must be >= 1 with shots + queries <= {points} points per "
                f"pool task, got shots={shots}, queries={queries}"
            )
        self.shots, self.queries, self.ways = shots, queries, tasks.ways

    def __len__(self) -> int:
        return self.x.shape[0]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        n, points = self.x.shape[:2]
        idx = torch.randint(n, (batch_size,), generator=generator)
        order = torch.rand(batch_size, points, generator=generator).argsort(1)
        order = order[:, : self.shots + self.queries]
        x = self.x[idx.unsqueeze(1), order]
        y = self.y[idx.unsqueeze(1), order]
        s = self.shots
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:], self.ways, {"pool_index": idx})


def _episode_losses(
    learner: MetaLearner, family: TaskFamily | TaskPool, episodes: int, steps: int | None, seed: int
) -> Tensor:
    batch = family.sample(episodes, torch.Generator().manual_seed(seed))
    result = learner.evaluate_batch(batch, None if steps is None else (steps,))
    return result[max(result)]["loss"].detach()


@dataclass
class PoolPoint:
    pool_size: int
    iterations: int
    risk: RiskInflation


def pool_size_sweep(
    make_learner: Callable[[], MetaLearner],
    pool_family: TaskFamily,
    pool_sizes: Sequence[int],
    shots: int,
    queries: int,
    iterations: int = 500,
    meta_batch_size: int = 10,
    outer_lr: float = 1e-3,
    episodes: int = 200,
    steps: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[PoolPoint]:
    """Risk inflation ratio against the size ``N`` of the meta-training pool.

    ``pool_family`` samples tasks with ``P >= shots + queries`` points each.  For each
    ``N``: draw a pool of ``N`` tasks (``TaskPool``), meta-train ``make_learner()`` for
    ``iterations`` Adam steps on meta-batches of ``meta_batch_size`` pool episodes, then
    compare the post-adaptation query loss on ``episodes`` episodes of the pool's tasks
    (training tasks, fresh subsets of their points) with that on ``episodes`` tasks drawn
    fresh from ``pool_family`` (the same held-out tasks for every ``N``).
    """
    if not pool_sizes or any(n < 1 for n in pool_sizes):
        raise ValueError(f"pool_sizes must be positive integers, got {list(pool_sizes)}")
    held_out = TaskPool(
        pool_family.sample(episodes, torch.Generator().manual_seed(seed + 1)), shots, queries
    )
    points = []
    for n in pool_sizes:
        pool = TaskPool(
            pool_family.sample(n, torch.Generator().manual_seed(seed + 1000 + n)), shots, queries
        )
        torch.manual_seed(seed)
        learner = make_learner()
        opt = torch.optim.Adam(learner.parameters(), outer_lr)
        gen = torch.Generator().manual_seed(seed + 2)
        for _ in range(iterations):
            opt.zero_grad()
            learner.meta_loss(pool.sample(meta_batch_size, gen))[0].backward()
            opt.step()
        train = _episode_losses(learner, pool, episodes, steps, seed + 3)
        held = _episode_losses(learner, held_out, episodes, steps, seed + 4)
        points.append(PoolPoint(n, iterations, risk_inflation(train, held)))
        if log is not None:
            r = points[-1].risk
            log(
                f"pool {n:>5}: train {r.train_loss:.4g}, held-out {r.held_out_loss:.4g}, "
                f"ratio {r.ratio:.3g} [{r.low:.3g}, {r.high:.3g}]"
            )
    return points
