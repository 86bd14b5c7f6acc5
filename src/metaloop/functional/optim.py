"""Differentiable inner-loop optimizers as pure transformations.

An ``InnerOptimizer`` is a pair of pure functions in the style of optax:

* ``init(params) -> state``
* ``update(grads, state, params) -> (new_params, new_state)``

No tensor is modified in place, so every update stays on the autograd graph and a
meta-gradient can flow through any number of steps, through the optimizer's state
(momentum buffers, Adam moments) as well as through the parameters.  Learning rates may
be Python floats, scalar tensors, or dicts of tensors shaped like the parameters
(Meta-SGD's per-parameter rates); tensors that require grad receive hypergradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from metaloop.functional.params import Params

LearningRate = float | Tensor | Mapping[str, Tensor]
State = Any


class InnerOptimizer(NamedTuple):
    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Params, State]]


def _lr_for(lr: LearningRate, name: str) -> float | Tensor:
    if isinstance(lr, Mapping):
        return lr[name]
    return lr


def sgd(lr: LearningRate) -> InnerOptimizer:
    """Plain gradient descent: ``theta_{t+1} = theta_t - alpha * g_t``.

    ``alpha`` is a float, a scalar tensor, or a dict of tensors (one per parameter,
    broadcastable to it) for per-parameter rates.
    """

    def init(params: Params) -> State:
        return ()

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        return {k: p - _lr_for(lr, k) * grads[k] for k, p in params.items()}, state

    return InnerOptimizer(init, update)


def momentum(lr: LearningRate, beta: float = 0.9, nesterov: bool = False) -> InnerOptimizer:
    """Heavy-ball momentum: ``v_{t+1} = beta v_t + g_t``, ``theta_{t+1} = theta_t - alpha v_{t+1}``.

    With ``nesterov=True`` the step uses ``g_t + beta v_{t+1}`` instead of ``v_{t+1}``.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"momentum beta must lie in [0, 1), got {beta}")

    def init(params: Params) -> State:
        return {k: torch.zeros_like(p) for k, p in params.items()}

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        velocity = {k: beta * state[k] + grads[k] for k in params}
        direction = {k: grads[k] + beta * velocity[k] for k in params} if nesterov else velocity
        new = {k: p - _lr_for(lr, k) * direction[k] for k, p in params.items()}
        return new, velocity

    return InnerOptimizer(init, update)


def adam(
    lr: LearningRate,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 1e-12,
) -> InnerOptimizer:
    """Adam (Kingma and Ba 2015), differentiable through its moments.

    ``m_t = b1 m + (1-b1) g``, ``v_t = b2 v + (1-b2) g^2``,
    ``theta_t = theta - alpha * m_hat / (sqrt(v_hat + eps_root) + eps)`` with bias-corrected
    ``m_hat = m_t / (1 - b1^t)``, ``v_hat = v_t / (1 - b2^t)``.  ``eps_root > 0`` keeps the
    derivative of the square root finite where a gradient is exactly zero, which matters
    only when differentiating through the update.
    """
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"adam {name} must lie in [0, 1), got {b}")

    def init(params: Params) -> State:
        zeros = {k: torch.zeros_like(p) for k, p in params.items()}
        return {"step": 0, "m": zeros, "v": dict(zeros)}

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        t = state["step"] + 1
        m = {k: beta1 * state["m"][k] + (1 - beta1) * grads[k] for k in params}
        v = {k: beta2 * state["v"][k] + (1 - beta2) * grads[k] ** 2 for k in params}
        c1, c2 = 1 - beta1**t, 1 - beta2**t
        new = {
            k: p - _lr_for(lr, k) * (m[k] / c1) / (torch.sqrt(v[k] / c2 + eps_root) + eps)
            for k, p in params.items()
        }
        return new, {"step": t, "m": m, "v": v}

    return InnerOptimizer(init, update)


#: ``rule(features [N, F]) -> [N]``: a learned per-coordinate correction to the step
UpdateRule = Callable[[Tensor], Tensor]


def learned(lr: LearningRate, rule: UpdateRule, beta: float = 0.9) -> InnerOptimizer:
    """A learned update rule, applied coordinate-wise (Andrychowicz et al. 2016; the
    feed-forward per-parameter form of Metz et al. 2019):

        m_{t+1} = beta m_t + (1 - beta) g_t,
        theta_{t+1} = theta_t - alpha * (g_t + rule([g_t, m_{t+1}])),

    where ``rule`` maps the features of every coordinate (its gradient and its running
    mean) to a correction of the step.  A ``rule`` that returns zeros makes this plain
    gradient descent; the rule's own parameters receive their meta-gradient through the
    inner loop like every other quantity here.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"learned optimizer beta must lie in [0, 1), got {beta!r}")

    def init(params: Params) -> State:
        return {k: torch.zeros_like(p) for k, p in params.items()}

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        mean = {k: beta * state[k] + (1 - beta) * grads[k] for k in params}
        new = {}
        for k, p in params.items():
            features = torch.stack([grads[k].reshape(-1), mean[k].reshape(-1)], -1)
            correction = rule(features).reshape(p.shape)
            new[k] = p - _lr_for(lr, k) * (grads[k] + correction)
        return new, mean

    return InnerOptimizer(init, update)


INNER_OPTIMIZERS: dict[str, Callable[..., InnerOptimizer]] = {
    "sgd": sgd,
    "momentum": momentum,
    "adam": adam,
}


def make_inner_optimizer(name: str, lr: LearningRate, **kwargs: Any) -> InnerOptimizer:
    """Build an inner optimizer by name (``sgd``, ``momentum``, ``adam``)."""
    if name not in INNER_OPTIMIZERS:
        raise ValueError(
            f"unknown inner optimizer {name!r}; choose one of {', '.join(INNER_OPTIMIZERS)}"
        )
    return INNER_OPTIMIZERS[name](lr, **kwargs)
