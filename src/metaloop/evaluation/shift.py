"""Test-time augmentation by translation for any trained classifier.

The metric learners average *embeddings* over translated views (``test_time_shift`` on
``MetricMetaLearner``).  Learners that adapt by gradient steps have no embedding to
average, so ``ShiftAveraged`` averages *predictions* instead: the wrapped learner adapts
once to the support set as it is, and a query ``x`` is scored by the mean of its
log-probabilities over the translated views ``x_v`` (every offset in
``[-s, s]^2``, ``(2s + 1)^2`` views),

    log p(y | x) = (1/V) sum_v log softmax(f_theta'(x_v))_y    (up to normalisation),

which makes the comparison of a query with the support less sensitive to how the two
images are aligned.  It costs ``V`` query forwards per task and no extra adaptation, except
for a transductive learner (``transductive_entropy``, Proto-MAML's ``transductive_steps``),
whose predictor adapts anew on each call: there every view adapts with that view's
queries, ``V`` adaptations per task.  An evaluation wrapper (no ``meta_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.algorithms.base import Adaptable, Predictor
from metaloop.data.transforms import shift_views, translate
from metaloop.evaluation.wrapper import EvaluationWrapper
from metaloop.tasks.base import Task, TaskError
from metaloop.validate import is_int


class ShiftAveraged(EvaluationWrapper):
    """``learner`` with its query predictions averaged over translated views.

    Args:
        learner: a trained classifier (any ``MetaLearner`` with a classification loss) on
            image inputs ``[C, H, W]``.
        shift: the largest offset in pixels, an integer >= 1 (``shift=2``: 25 views).
    """

    def __init__(self, learner: Adaptable, shift: int) -> None:
        super().__init__(
            learner,
            "cross_entropy",
            needs_classifier="test-time shift averages class probabilities",
        )
        if not is_int(shift) or shift < 1:
            raise ValueError(f"shift must be an integer >= 1, got {shift!r}")
        self.shift = shift
        self.views = shift_views(shift)

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        """Adapt the wrapped learner; the predictor returns mean log-probabilities."""
        predictor = self.learner.adapt(support, steps)
        views = self.views

        def predict(x: Tensor) -> Tensor:
            if x.dim() != 4:
                raise TaskError(
                    "test-time shift translates images: queries must be [Q, C, H, W], got "
                    f"shape {tuple(x.shape)}"
                )
            logps = [F.log_softmax(predictor(translate(x, dx, dy)), -1) for dx, dy in views]
            return torch.stack(logps).mean(0)

        return predict

    def extra_repr(self) -> str:
        return f"shift={self.shift}, views={len(self.views)}"


__all__ = ["ShiftAveraged"]
