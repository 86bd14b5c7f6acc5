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
* ``group_pools`` and ``family_pool_sweep``: the same for image families, a pool being the
  classes of ``N`` whole groups (Omniglot: alphabets) and the held-out tasks another
  family (the evaluation alphabets).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metaloop.algorithms.base import MetaLearner
from metaloop.data.episodes import EpisodicFamily
from metaloop.diagnostics.core import LeaveOneOut, adam_meta_train
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


def _episode_metrics(
    learner: MetaLearner, family: TaskFamily | TaskPool, episodes: int, steps: int | None, seed: int
) -> dict[str, Tensor]:
    """Per-episode post-adaptation metrics (``loss``; ``accuracy`` for classification) on
    ``episodes`` episodes of ``family``, the learner in ``eval()`` mode."""
    batch = family.sample(episodes, torch.Generator().manual_seed(seed))
    was_training = learner.training
    learner.eval()
    try:
        result = learner.evaluate_batch(batch, None if steps is None else (steps,))
    finally:
        learner.train(was_training)
    return {k: v.detach() for k, v in result[max(result)].items()}


def _episode_losses(
    learner: MetaLearner, family: TaskFamily | TaskPool, episodes: int, steps: int | None, seed: int
) -> Tensor:
    return _episode_metrics(learner, family, episodes, steps, seed)["loss"]


def _meta_train(
    make_learner: Callable[[], MetaLearner],
    family: TaskFamily | TaskPool,
    iterations: int,
    meta_batch_size: int,
    outer_lr: float,
    seed: int,
) -> MetaLearner:
    """A fresh learner (torch seeded with ``seed``) after ``iterations`` Adam steps on
    meta-batches of ``family`` drawn from ``torch.Generator().manual_seed(seed + 2)``."""
    torch.manual_seed(seed)
    learner = make_learner()
    gen = torch.Generator().manual_seed(seed + 2)
    adam_meta_train(learner, lambda: family.sample(meta_batch_size, gen), iterations, outer_lr)
    return learner


@dataclass
class PoolPoint:
    pool_size: int
    iterations: int
    risk: RiskInflation
    train_accuracy: float | None = None  # classification families only
    held_out_accuracy: float | None = None


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
        learner = _meta_train(make_learner, pool, iterations, meta_batch_size, outer_lr, seed)
        train = _episode_losses(learner, pool, episodes, steps, seed + 3)
        held = _episode_losses(learner, held_out, episodes, steps, seed + 4)
        points.append(PoolPoint(n, iterations, risk_inflation(train, held)))
        _log_point(log, points[-1])
    return points


def _log_point(log: Callable[[str], None] | None, point: PoolPoint) -> None:
    if log is None:
        return
    r = point.risk
    text = (
        f"pool {point.pool_size:>5}: train {r.train_loss:.4g}, held-out {r.held_out_loss:.4g}, "
        f"ratio {r.ratio:.3g} [{r.low:.3g}, {r.high:.3g}]"
    )
    if point.train_accuracy is not None:
        text += f"; accuracy {point.train_accuracy:.3f} / {point.held_out_accuracy:.3f}"
    log(text)


def group_pools(
    family: EpisodicFamily,
    sizes: Sequence[int],
    key: str = "alphabet",
    seed: int | None = None,
) -> dict[int, EpisodicFamily]:
    """Pools of whole class groups: for each ``N`` in ``sizes``, ``family`` restricted to
    the classes of ``N`` groups of the metadata field ``key`` (Omniglot: alphabets, rotated
    copies included with their alphabet).  The groups are taken in sorted order of their
    names (``seed=None``: the first ``N``, so pools are nested) or in a seeded random order
    (nested too).  A group with fewer classes than ``family.ways`` still counts; the pool
    must have ``ways`` usable classes in all."""
    groups = family.dataset.groups(key)
    names = sorted(groups, key=str)
    if not sizes or any(n < 1 or n > len(names) for n in sizes):
        raise ValueError(
            f"pool sizes must lie in 1..{len(names)} (the {key} groups of "
            f"{family.dataset.name!r}), got {list(sizes)}"
        )
    if seed is not None:
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))
        names = [names[i] for i in order.tolist()]
    pools = {}
    for n in sizes:
        classes = sorted(c for name in names[:n] for c in groups[name])
        pools[n] = EpisodicFamily(
            family.dataset.subset(classes, name=f"{family.dataset.name}:{n} {key} groups"),
            family.ways,
            family.shots,
            family.queries,
            family.transform,
            normalize=family.normalize,
            dtype=family.dtype,
        )
    return pools


def family_pool_sweep(
    make_learner: Callable[[], MetaLearner],
    pools: Mapping[int, TaskFamily],
    held_out: TaskFamily,
    iterations: int = 500,
    meta_batch_size: int = 10,
    outer_lr: float = 1e-3,
    episodes: int = 200,
    steps: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    train_eval: Callable[[TaskFamily], TaskFamily] | None = None,
) -> list[PoolPoint]:
    """Risk inflation ratio against the size of the meta-training pool, for pools given as
    task families (e.g. ``group_pools``: Omniglot episodes over the first ``N`` alphabets).

    For each ``N``: meta-train a fresh learner on ``pools[N]`` (``_meta_train``, the same
    seed for every ``N``), then compare the post-adaptation query loss on ``episodes`` new
    episodes of the pool (``train_eval(pools[N])`` when given, e.g. the pool without its
    augmentation) with that on ``episodes`` episodes of ``held_out`` (the same for every
    ``N``).  Classification families also report the two accuracies.
    """
    if not pools:
        raise ValueError("family_pool_sweep needs at least one pool")
    points = []
    for n, pool in sorted(pools.items()):
        learner = _meta_train(make_learner, pool, iterations, meta_batch_size, outer_lr, seed)
        scored = train_eval(pool) if train_eval is not None else pool
        train = _episode_metrics(learner, scored, episodes, steps, seed + 3)
        held = _episode_metrics(learner, held_out, episodes, steps, seed + 4)
        accuracy = (
            (float(train["accuracy"].mean()), float(held["accuracy"].mean()))
            if "accuracy" in train and "accuracy" in held
            else (None, None)
        )
        points.append(
            PoolPoint(n, iterations, risk_inflation(train["loss"], held["loss"]), *accuracy)
        )
        _log_point(log, points[-1])
    return points
