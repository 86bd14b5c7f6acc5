"""Evaluation: many test episodes, mean and 95% confidence interval."""

from metaloop.evaluation.evaluate import Estimate, EvalResult, estimate, evaluate

__all__ = ["Estimate", "EvalResult", "estimate", "evaluate"]
