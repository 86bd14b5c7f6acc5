"""Inner-loop overfitting: the query loss against the number of inner steps.

Adapting on a few noisy support points, gradient descent first fits the signal (the query
loss falls) and then the noise (the query loss rises while the support loss keeps
falling): a U.  ``inner_step_curves`` measures it for several inner learning rates, the
optimum of each curve (``Curve.best_query_step``) is where early stopping would stop, and
``overfitting_summary`` reports how far the curve rises above its minimum by the last step.
The remedies (inner weight decay towards zero or towards ``theta_0``, support-set
augmentation) are options of the gradient learners; comparing curves of learners built
with and without them shows what each does to the U.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.diagnostics.core import Curve, adaptation_curve
from metaloop.tasks.base import TaskBatch


def inner_step_curves(
    learner: GradientMetaLearner,
    batch: TaskBatch,
    max_steps: int,
    inner_lrs: Sequence[float] | None = None,
) -> dict[float, Curve]:
    """Mean support and query loss after ``0..max_steps`` inner steps, one curve per rate.

    For each ``alpha`` in ``inner_lrs`` (default: the learner's own rate) the learner's
    inner loop is run from its ``theta_0`` with ``alpha`` as ``inner_lr`` (restored
    afterwards); everything else (inner optimizer, adapted parameters, weight decay) is the
    learner's.  Learners whose rates are learned (Meta-SGD) ignore ``inner_lr``.
    """
    rates = [learner.inner_lr] if inner_lrs is None else list(inner_lrs)
    if not rates or any(not (isinstance(a, (int, float)) and a > 0) for a in rates):
        raise ValueError(f"inner_lrs must be positive numbers, got {inner_lrs!r}")
    curves, original = {}, learner.inner_lr
    try:
        for alpha in rates:
            learner.inner_lr = float(alpha)
            curves[float(alpha)] = adaptation_curve(learner, batch, max_steps)
    finally:
        learner.inner_lr = original
    return curves


@dataclass
class OverfittingSummary:
    best_step: int  # inner steps with the lowest query loss
    best_query_loss: float
    final_query_loss: float  # at max_steps
    rise: float  # final_query_loss / best_query_loss (1 = no overfitting by max_steps)
    support_fell: bool  # the support loss at max_steps is below its value at 0 steps


def overfitting_summary(curve: Curve) -> OverfittingSummary:
    """Where the query curve bottoms out and how far it climbs back by the last step."""
    best = curve.best_query_step
    lowest = curve.query_loss[curve.steps.index(best)]
    final = curve.query_loss[-1]
    return OverfittingSummary(
        best,
        lowest,
        final,
        final / lowest if lowest > 0 else float("inf"),
        curve.support_loss[-1] < curve.support_loss[0],
    )
