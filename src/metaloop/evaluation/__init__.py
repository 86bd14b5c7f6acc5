"""Evaluation: many test episodes, mean and 95% confidence interval; ensembles;
test-time shift averaging; balanced (transductive) assignment."""

from metaloop.evaluation.balanced import BalancedAssignment
from metaloop.evaluation.ensemble import Ensemble
from metaloop.evaluation.evaluate import Estimate, EvalResult, estimate, evaluate
from metaloop.evaluation.shift import ShiftAveraged

__all__ = [
    "BalancedAssignment",
    "Ensemble",
    "Estimate",
    "EvalResult",
    "ShiftAveraged",
    "estimate",
    "evaluate",
]
