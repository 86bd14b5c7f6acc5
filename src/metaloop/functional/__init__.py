"""The functional engine: pure functions over parameter dicts on ``torch.func``."""

from metaloop.functional.adversarial import fgsm
from metaloop.functional.assignment import balance_log_probs
from metaloop.functional.batching import VectorizePolicy, map_tasks
from metaloop.functional.inner import GRADIENT_MODES, inner_loop, inner_steps_iter
from metaloop.functional.losses import accuracy, cross_entropy, get_loss, mse
from metaloop.functional.optim import (
    InnerOptimizer,
    adam,
    learned,
    make_inner_optimizer,
    momentum,
    sgd,
)
from metaloop.functional.params import Params, call, detach, split_module

__all__ = [
    "GRADIENT_MODES",
    "InnerOptimizer",
    "Params",
    "VectorizePolicy",
    "accuracy",
    "adam",
    "balance_log_probs",
    "call",
    "cross_entropy",
    "detach",
    "fgsm",
    "get_loss",
    "inner_loop",
    "inner_steps_iter",
    "learned",
    "make_inner_optimizer",
    "map_tasks",
    "momentum",
    "mse",
    "sgd",
    "split_module",
]
