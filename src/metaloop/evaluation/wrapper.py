"""The adapter protocol of evaluation wrappers: a trained learner changed at test time.

An ``EvaluationWrapper`` is an ``Adaptable`` (``metaloop.algorithms.base``) around one
trained learner: it answers ``adapt``, ``evaluate_batch``, ``query_log_probs``,
``task_metrics`` and ``check_batch`` like any learner (so evaluation, ensembles and the CLI
take it unchanged, and wrappers nest), and has no ``meta_loss``: train the wrapped learner
itself.  It reports at the wrapped learner's default step counts and shares its
``adapts_by_steps``.
"""

from __future__ import annotations

from metaloop.algorithms.base import Adaptable
from metaloop.functional.losses import LossFn


class EvaluationWrapper(Adaptable):
    """Base of the single-learner evaluation wrappers (module docstring).

    Args:
        learner: the trained learner (a ``MetaLearner`` or another wrapper).
        loss: the wrapper's query loss; default the wrapped learner's.
        needs_classifier: when given, the reason the wrapper needs class probabilities
            (a learner trained with a regression loss is then refused with it).
    """

    def __init__(
        self,
        learner: Adaptable,
        loss: str | LossFn | None = None,
        needs_classifier: str | None = None,
    ) -> None:
        if not isinstance(learner, Adaptable):
            raise TypeError(
                f"{type(self).__name__} wraps a MetaLearner, got {type(learner).__name__} "
                "(a MetaLearner or another evaluation wrapper)"
            )
        super().__init__(learner.loss_fn if loss is None else loss)
        if loss is None:
            self.loss_name, self.classification = learner.loss_name, learner.classification
        if needs_classifier and not learner.classification:
            raise ValueError(
                f"{needs_classifier}, but {type(learner).__name__} is trained with the "
                f"{learner.loss_name!r} loss"
            )
        self.learner = learner
        self.default_eval_steps = tuple(learner.default_eval_steps)

    @property
    def adapts_by_steps(self) -> bool:  # type: ignore[override]
        return self.learner.adapts_by_steps


__all__ = ["EvaluationWrapper"]
