"""Ensembles of trained meta-learners, for evaluation.

An ensemble of ``M`` classifiers adapts every member to the same support set and scores a
query ``x`` by the mean of the members' log-probabilities,

    log p(y | x) = (1/M) sum_m log softmax(f_m(x))_y    (up to a normalising constant),

the normalised geometric mean of the members' predictive distributions.  Members may mix
families (a ProtoNet with a Proto-MAML): metric learners score a whole task batch with one
encoder pass (``episode_scores``, the numbers their own ``evaluate_batch`` reports),
gradient-based learners adapt per task with the requested number of inner steps.

Ensembling trades compute at test time (``M`` adaptations) for accuracy: models trained from
different starts make partly independent errors.  It is an evaluation construct (an
``Adaptable`` with no ``meta_loss``): train the members separately.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.base import Adaptable, Predictor, StepMetrics, as_support
from metaloop.evaluation.scoring import (
    classification_metrics,
    ensemble_log_probs,
    evaluation_steps,
)
from metaloop.tasks.base import Task, TaskBatch


class Ensemble(Adaptable):
    """Mean log-probability of several trained classifiers (see the module docstring).

    Args:
        members: two or more ``MetaLearner``s trained on classification; they must accept
            the same inputs (image size, channels).
    """

    def __init__(self, members: Sequence[Adaptable]) -> None:
        super().__init__("cross_entropy")
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        for i, member in enumerate(members):
            if not isinstance(member, Adaptable):
                raise TypeError(f"member {i} is a {type(member).__name__}, not a MetaLearner")
            if not member.classification:
                raise ValueError(
                    f"member {i} ({type(member).__name__}) is trained with the "
                    f"{member.loss_name!r} loss; ensembles average class probabilities, so "
                    "every member must be a classifier"
                )
        self.members = nn.ModuleList(members)
        stepped = [m for m in members if m.adapts_by_steps]
        # members without steps score alike at every count; the others report at their own
        self.default_eval_steps = tuple(stepped[0].default_eval_steps) if stepped else (0,)

    @property
    def adapts_by_steps(self) -> bool:  # type: ignore[override]
        return any(member.adapts_by_steps for member in self.members)

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        """Adapt every member; the predictor returns the mean log-probabilities ``[Q, ways]``."""
        support = as_support(support)
        predictors = [member.adapt(support, steps) for member in self.members]

        def predict(x: Tensor) -> Tensor:
            return torch.stack([F.log_softmax(p(x), -1) for p in predictors]).mean(0)

        return predict

    def query_log_probs(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        """``{s: [T, Q, ways]}`` log of the ensemble's renormalised geometric-mean
        probabilities after ``s`` inner steps (metric members are scored once)."""
        per_member = [m.query_log_probs(batch, steps) for m in self.members]
        return {s: ensemble_log_probs([lp[s] for lp in per_member]) for s in steps}

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """Per-task query loss (negative log of the ensemble's normalised probability) and
        accuracy for every step count in ``steps``."""
        steps = evaluation_steps(steps, self.default_eval_steps)
        log_ps = self.query_log_probs(batch, steps)
        return {s: classification_metrics(log_ps[s], batch.query_y) for s in steps}

    def extra_repr(self) -> str:
        return f"members={len(self.members)}"
