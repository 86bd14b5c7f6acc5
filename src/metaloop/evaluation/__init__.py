"""Evaluation: many test episodes, mean and 95% confidence interval; ensembles."""

from metaloop.evaluation.ensemble import Ensemble
from metaloop.evaluation.evaluate import Estimate, EvalResult, estimate, evaluate

__all__ = ["Ensemble", "Estimate", "EvalResult", "estimate", "evaluate"]
