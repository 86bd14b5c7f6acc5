"""Differentiable inner optimizers as composable pure transforms (``init`` / ``update``).

``transforms`` holds the pieces (``chain``, ``scale_by_learning_rate``, ``trace``,
``scale_by_adam``, ``scale_by_learned``, ``add_decayed_weights``), ``alias`` the usual
optimizers built from them and their config names, ``rates`` the module of learned rates
(Meta-SGD, LSLR).  An optimizer's ``update`` returns the *updates*; the inner loop applies
them with ``apply_updates`` (``theta_{t+1} = theta_t + u_t``).
"""

from metaloop.functional.optim.alias import INNER_OPTIMIZERS, adam, by_name, learned, momentum, sgd
from metaloop.functional.optim.rates import GRANULARITIES, LearnedRates
from metaloop.functional.optim.transforms import (
    ChainState,
    InnerOptimizer,
    LearningRate,
    RateState,
    Schedule,
    State,
    UpdateRule,
    add_decayed_weights,
    apply_updates,
    chain,
    current_rate,
    scale_by_adam,
    scale_by_learned,
    scale_by_learning_rate,
    step_count,
    trace,
)

__all__ = [
    "GRANULARITIES",
    "INNER_OPTIMIZERS",
    "ChainState",
    "InnerOptimizer",
    "LearnedRates",
    "LearningRate",
    "RateState",
    "Schedule",
    "State",
    "UpdateRule",
    "adam",
    "add_decayed_weights",
    "apply_updates",
    "by_name",
    "chain",
    "current_rate",
    "learned",
    "momentum",
    "scale_by_adam",
    "scale_by_learned",
    "scale_by_learning_rate",
    "sgd",
    "step_count",
    "trace",
]
