"""Evaluation: many test episodes, mean and 95% confidence interval; ensembles;
test-time shift averaging; balanced (transductive) assignment; adversarial (FGSM) queries;
saved predictions that combine into ensembles later."""

from metaloop.evaluation.adversarial import AdversarialQueries
from metaloop.evaluation.balanced import BalancedAssignment
from metaloop.evaluation.ensemble import Ensemble
from metaloop.evaluation.evaluate import Estimate, EvalResult, estimate, evaluate
from metaloop.evaluation.predictions import (
    Predictions,
    collect_predictions,
    combine_predictions,
    load_predictions,
    save_predictions,
)
from metaloop.evaluation.shift import ShiftAveraged
from metaloop.evaluation.tails import TailSummary, divergent_episodes, tail_summary
from metaloop.evaluation.wrapper import EvaluationWrapper

__all__ = [
    "AdversarialQueries",
    "BalancedAssignment",
    "Ensemble",
    "Estimate",
    "EvalResult",
    "EvaluationWrapper",
    "Predictions",
    "ShiftAveraged",
    "TailSummary",
    "collect_predictions",
    "combine_predictions",
    "divergent_episodes",
    "estimate",
    "evaluate",
    "load_predictions",
    "save_predictions",
    "tail_summary",
]
