"""Diagnostics: adaptation curves, meta-gradient statistics, order gap, oracles."""

from metaloop.diagnostics.core import (
    Curve,
    GradientStats,
    LeaveOneOut,
    OrderGap,
    adaptation_curve,
    adapted_copy,
    first_second_order_gap,
    leave_one_task_out,
    linear_regression_oracle,
    meta_gradient_stats,
    parameter_distance,
)
from metaloop.diagnostics.feature_reuse import feature_reuse_experiment
from metaloop.diagnostics.sharpness import Sharpness, sharpness, support_sharpness

__all__ = [
    "Curve",
    "GradientStats",
    "LeaveOneOut",
    "OrderGap",
    "Sharpness",
    "adaptation_curve",
    "adapted_copy",
    "feature_reuse_experiment",
    "first_second_order_gap",
    "leave_one_task_out",
    "linear_regression_oracle",
    "meta_gradient_stats",
    "parameter_distance",
    "sharpness",
    "support_sharpness",
]
