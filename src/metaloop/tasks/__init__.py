"""Tasks, task batches and the synthetic task families of the literature."""

from metaloop.tasks.base import Task, TaskBatch, TaskError, TaskFamily, validate_batch
from metaloop.tasks.registry import FamilyContext, TaskSpec, register_family
from metaloop.tasks.synthetic import (
    BernoulliBandit,
    GaussianMean,
    LinearRegression,
    Quadratic,
    RotatingBoundary,
    Sinusoid,
)

__all__ = [
    "BernoulliBandit",
    "FamilyContext",
    "GaussianMean",
    "LinearRegression",
    "Quadratic",
    "RotatingBoundary",
    "Sinusoid",
    "Task",
    "TaskBatch",
    "TaskError",
    "TaskFamily",
    "TaskSpec",
    "register_family",
    "validate_batch",
]
