"""Normalization policies side by side: the same learner, seed, episodes and iterations,
only the backbone's normalization changes.

``norm_policy_sweep`` meta-trains ``make_learner(policy)`` for each policy (torch seeded
identically before each build, so every convolution starts from the same weights; the
meta-batches come from one generator seed, so every policy sees the same episodes) and
evaluates it on the same test episodes.  Per policy it reports

* the test accuracy after adaptation, ``mean +- 1.96 std / sqrt(n)`` over ``episodes``;
* the same on query sets of ``small_queries`` images per class (``small_family``): a
  policy that normalises the query set with its own batch statistics (transductive) is
  scored on noisier statistics there, a per-image policy on the same footing;
* for policies with running statistics (``batch_running``), the accuracy of the same
  trained weights normalised with each batch's own statistics instead
  (``without_running_statistics``): the gap is what the running averages cost or buy;
* CPU seconds of meta-training and of evaluation (``time.process_time``).

The trade-off this measures (``metaloop.models.norm``): batch statistics of a 5-image
support set adapt to the task but are noisy (variance) and make query predictions depend
on the other query images; running statistics are stable but average over tasks and lag
the weights (bias); per-image normalizations (layer, instance, group) avoid both and lose
per-image scale information.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from metaloop.algorithms.base import MetaLearner
from metaloop.diagnostics.core import adam_meta_train
from metaloop.tasks.base import TaskFamily


@dataclass
class Accuracy:
    mean: float
    ci95: float  # 1.96 std / sqrt(episodes)
    std: float  # across episodes
    episodes: int


@dataclass
class PolicyResult:
    policy: str
    iterations: int
    meta_batch_size: int
    accuracy: Accuracy
    loss: float  # mean query loss after adaptation on the test episodes
    train_loss: float  # mean meta-loss over the last tenth of meta-training
    train_seconds: float  # CPU seconds of meta-training
    eval_seconds: float  # CPU seconds of all evaluations of this policy
    small_query_accuracy: Accuracy | None = None
    episode_statistics_accuracy: Accuracy | None = None  # running-stats policies only
    extra: dict[str, float] = field(default_factory=dict)


def has_running_statistics(model: nn.Module) -> bool:
    """Whether any batch-norm layer of ``model`` keeps running statistics."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
        for m in model.modules()
    )


def without_running_statistics(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (a model or a whole learner) whose batch-norm layers drop their
    running statistics, so that they normalise with the current batch's statistics in
    ``eval()`` mode too (PyTorch's batch norm uses batch statistics whenever both running
    buffers are ``None``)."""
    out = copy.deepcopy(module)
    for m in out.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    return out


def _accuracy(
    learner: MetaLearner, family: TaskFamily, episodes: int, steps: int | None, seed: int
) -> tuple[Accuracy, float]:
    from metaloop.evaluation import evaluate

    result = evaluate(learner, family, episodes, None if steps is None else (steps,), seed=seed)
    metrics = result[max(result.metrics)]
    if "accuracy" not in metrics:
        raise ValueError(
            f"norm_policy_sweep needs a classification family (accuracy), "
            f"got metrics {sorted(metrics)}"
        )
    a = metrics["accuracy"]
    return Accuracy(a.mean, a.ci95, a.std, a.episodes), metrics["loss"].mean


def norm_policy_sweep(
    make_learner: Callable[[str], MetaLearner],
    policies: Sequence[str],
    train_family: TaskFamily,
    test_family: TaskFamily,
    iterations: int,
    meta_batch_size: int,
    outer_lr: float = 1e-3,
    episodes: int = 600,
    steps: int | None = None,
    small_family: TaskFamily | None = None,
    seed: int = 0,
    eval_seed: int = 12345,
    log: Callable[[str], None] | None = None,
) -> list[PolicyResult]:
    """Meta-train and evaluate one learner per normalization policy (module docstring).

    ``make_learner(policy)`` builds a fresh learner whose backbone uses ``policy``; it is
    called right after ``torch.manual_seed(seed)``.  Training: ``iterations`` Adam steps
    (rate ``outer_lr``) on meta-batches of ``meta_batch_size`` episodes of
    ``train_family`` from ``torch.Generator().manual_seed(seed + 1)``.  Evaluation:
    ``episodes`` episodes of ``test_family`` (and of ``small_family`` when given) drawn
    with ``eval_seed``, accuracy after ``steps`` inner steps (the learner's default when
    ``None``).
    """
    if not policies:
        raise ValueError("norm_policy_sweep needs at least one policy")
    if len(set(policies)) != len(policies):
        raise ValueError(f"policies must be distinct, got {list(policies)}")
    if iterations < 1 or meta_batch_size < 1 or episodes < 2:
        raise ValueError(
            f"iterations and meta_batch_size must be >= 1 and episodes >= 2, got "
            f"{iterations}, {meta_batch_size}, {episodes}"
        )
    results = []
    for policy in policies:
        torch.manual_seed(seed)
        learner = make_learner(policy)
        learner.train()
        gen = torch.Generator().manual_seed(seed + 1)
        start = time.process_time()
        sample = lambda g=gen: train_family.sample(meta_batch_size, g)  # noqa: E731
        losses = adam_meta_train(learner, sample, iterations, outer_lr)
        train_seconds = time.process_time() - start
        tail = losses[-max(1, iterations // 10) :]
        start = time.process_time()
        accuracy, test_loss = _accuracy(learner, test_family, episodes, steps, eval_seed)
        small = None
        if small_family is not None:
            small = _accuracy(learner, small_family, episodes, steps, eval_seed)[0]
        episode_stats = None
        if has_running_statistics(learner):
            stripped = without_running_statistics(learner)
            episode_stats = _accuracy(stripped, test_family, episodes, steps, eval_seed)[0]
        results.append(
            PolicyResult(
                policy,
                iterations,
                meta_batch_size,
                accuracy,
                test_loss,
                sum(tail) / len(tail),
                train_seconds,
                time.process_time() - start,
                small,
                episode_stats,
            )
        )
        if log is not None:
            r = results[-1]
            text = f"{policy:>15}: accuracy {100 * accuracy.mean:.2f} +- {100 * accuracy.ci95:.2f}%"
            if small is not None:
                text += f", small query sets {100 * small.mean:.2f} +- {100 * small.ci95:.2f}%"
            if episode_stats is not None:
                text += f", with episode statistics {100 * episode_stats.mean:.2f}%"
            log(f"{text}; train {r.train_seconds:.0f} s CPU, eval {r.eval_seconds:.0f} s")
    return results
