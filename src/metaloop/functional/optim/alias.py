"""The usual inner optimizers as chains of transforms, and their names for configs.

Each is ``chain(direction, [add_decayed_weights], scale_by_learning_rate(lr))``:

* ``sgd``: ``theta_{t+1} = theta_t - alpha_t g_t``;
* ``momentum``: ``v_{t+1} = beta v_t + g_t``, ``theta_{t+1} = theta_t - alpha_t v_{t+1}``;
* ``adam``: ``theta_{t+1} = theta_t - alpha_t m_hat / (sqrt(v_hat + eps_root) + eps)``;
* ``learned``: ``theta_{t+1} = theta_t - alpha_t (g_t + rule([g_t, m_{t+1}]))``.

``alpha_t`` is anything ``scale_by_learning_rate`` takes (a number, per-tensor or
per-element tensors, a module returning them, a schedule; ``per_step=True`` for rates with
a leading step axis).  ``weight_decay = c > 0`` adds ``c (theta_t - anchor)`` to the
direction, with ``decay_toward`` ``"zero"`` or ``"init"`` (``theta_0``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metaloop.functional.optim.transforms import (
    InnerOptimizer,
    LearningRate,
    Schedule,
    UpdateRule,
    add_decayed_weights,
    chain,
    scale_by_adam,
    scale_by_learned,
    scale_by_learning_rate,
    trace,
)

Rate = LearningRate | Schedule | Any


def _with_rate(
    direction: InnerOptimizer | None,
    lr: Rate,
    per_step: bool,
    weight_decay: float,
    decay_toward: str,
) -> InnerOptimizer:
    parts = [] if direction is None else [direction]
    if weight_decay or decay_toward != "zero":
        parts.append(add_decayed_weights(weight_decay, decay_toward))
    parts.append(scale_by_learning_rate(lr, per_step=per_step))
    return chain(*parts)


def sgd(
    lr: Rate, *, per_step: bool = False, weight_decay: float = 0.0, decay_toward: str = "zero"
) -> InnerOptimizer:
    """Gradient descent, ``theta - alpha_t g`` (see the module docstring)."""
    return _with_rate(None, lr, per_step, weight_decay, decay_toward)


def momentum(
    lr: Rate,
    beta: float = 0.9,
    nesterov: bool = False,
    *,
    per_step: bool = False,
    weight_decay: float = 0.0,
    decay_toward: str = "zero",
) -> InnerOptimizer:
    """Heavy-ball (or Nesterov) momentum at rate ``alpha_t``."""
    return _with_rate(trace(beta, nesterov), lr, per_step, weight_decay, decay_toward)


def adam(
    lr: Rate,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 1e-12,
    *,
    per_step: bool = False,
    weight_decay: float = 0.0,
    decay_toward: str = "zero",
) -> InnerOptimizer:
    """Adam at rate ``alpha_t``, differentiable through its moments."""
    direction = scale_by_adam(beta1, beta2, eps, eps_root)
    return _with_rate(direction, lr, per_step, weight_decay, decay_toward)


def learned(
    lr: Rate,
    rule: UpdateRule,
    beta: float = 0.9,
    *,
    per_step: bool = False,
    weight_decay: float = 0.0,
    decay_toward: str = "zero",
) -> InnerOptimizer:
    """A learned coordinate-wise update rule at rate ``alpha_t`` (``scale_by_learned``)."""
    return _with_rate(scale_by_learned(rule, beta), lr, per_step, weight_decay, decay_toward)


#: the optimizers a config may name (``[algorithm] inner_optimizer = "..."``)
INNER_OPTIMIZERS: dict[str, Callable[..., InnerOptimizer]] = {
    "sgd": sgd,
    "momentum": momentum,
    "adam": adam,
}


def by_name(name: str, lr: Rate, **kwargs: Any) -> InnerOptimizer:
    """The inner optimizer called ``name`` (``sgd``, ``momentum``, ``adam``) at rate ``lr``;
    ``kwargs`` go to its function (``beta``, ``beta1``, ``weight_decay``, ``per_step``...)."""
    if not isinstance(name, str) or name not in INNER_OPTIMIZERS:
        raise ValueError(
            f"unknown inner optimizer {name!r}; choose one of {', '.join(INNER_OPTIMIZERS)}"
        )
    try:
        return INNER_OPTIMIZERS[name](lr, **kwargs)
    except TypeError as err:
        raise ValueError(f"inner optimizer {name!r}: {err}") from None
