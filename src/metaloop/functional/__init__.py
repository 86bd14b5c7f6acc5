"""The functional engine: pure functions over parameter dicts on ``torch.func``."""

from metaloop.functional.adversarial import fgsm
from metaloop.functional.assignment import balance_log_probs
from metaloop.functional.batching import VectorizePolicy, map_tasks
from metaloop.functional.inner import GRADIENT_MODES, inner_loop, inner_steps_iter
from metaloop.functional.losses import accuracy, cross_entropy, get_loss, mse
from metaloop.functional.optim import (
    InnerOptimizer,
    LearnedRates,
    adam,
    add_decayed_weights,
    apply_updates,
    chain,
    learned,
    momentum,
    scale_by_learning_rate,
    sgd,
)
from metaloop.functional.params import Params, call, detach, split_module

__all__ = [
    "GRADIENT_MODES",
    "InnerOptimizer",
    "LearnedRates",
    "Params",
    "VectorizePolicy",
    "accuracy",
    "adam",
    "add_decayed_weights",
    "apply_updates",
    "balance_log_probs",
    "call",
    "chain",
    "cross_entropy",
    "detach",
    "fgsm",
    "get_loss",
    "inner_loop",
    "inner_steps_iter",
    "learned",
    "map_tasks",
    "momentum",
    "mse",
    "scale_by_learning_rate",
    "sgd",
    "split_module",
]
