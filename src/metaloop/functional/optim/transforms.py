"""Gradient transforms: the pieces inner optimizers are composed of, in the spirit of optax.

A transform is a pair of pure functions over parameter dicts,

* ``init(params) -> state``
* ``update(updates, state, params) -> (updates, state)``,

where ``updates`` enter as the support-loss gradients ``g_t`` and leave as the step to add,
``theta_{t+1} = theta_t + u_t`` (``apply_updates``).  ``chain(a, b, ...)`` feeds the updates
of ``a`` into ``b`` and so on; its state carries the **step count** ``t`` (the number of
updates made so far) beside the states of its parts.  No tensor is modified in place, so a
meta-gradient flows through any number of steps, through the states (momentum, Adam
moments, decay anchors) and into any learning rate that requires grad; nothing here
depends on a batch dimension, so every transform runs unchanged under ``torch.func.vmap``.

Everything a transform needs to be differentiated with respect to is put in its *state*
by ``init`` (the current learning rates, the anchor ``theta_0``): a caller that
rematerialises a step (``functional.checkpoint.remat``) passes the state in explicitly and
so gives those tensors their meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from metaloop.functional.params import Params

#: a scalar, a scalar tensor, or one tensor per parameter name (broadcastable to it)
LearningRate = float | Tensor | Mapping[str, Tensor]
#: ``step -> rate`` (``step`` counts from 0)
Schedule = Callable[[int], LearningRate]
State = Any


class InnerOptimizer(NamedTuple):
    """A gradient transform (see the module docstring); composed ones come from ``chain``."""

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Params, State]]


class ChainState(NamedTuple):
    """State of ``chain``: the number of updates made so far and the parts' states."""

    step: int
    states: tuple[State, ...]


def apply_updates(params: Params, updates: Params) -> Params:
    """``theta + u`` for every entry of ``params`` (names missing from ``updates`` stay)."""
    return {k: p + updates[k] if k in updates else p for k, p in params.items()}


def chain(*transforms: InnerOptimizer) -> InnerOptimizer:
    """The composition ``u = T_n(... T_2(T_1(g)))``, in the order given, with a step count.

    ``update`` returns ``ChainState(step + 1, new_states)``; a step-dependent part
    (``scale_by_learning_rate`` with per-step rates) keeps its own count, equal to it.
    """
    if not transforms or not all(isinstance(t, InnerOptimizer) for t in transforms):
        raise ValueError(f"chain takes one or more InnerOptimizer transforms, got {transforms!r}")

    def init(params: Params) -> ChainState:
        return ChainState(0, tuple(t.init(params) for t in transforms))

    def update(updates: Params, state: ChainState, params: Params) -> tuple[Params, ChainState]:
        new_states = []
        for transform, sub in zip(transforms, state.states):
            updates, sub = transform.update(updates, sub, params)
            new_states.append(sub)
        return updates, ChainState(state.step + 1, tuple(new_states))

    return InnerOptimizer(init, update)


def step_count(state: State) -> int:
    """The number of updates made by an optimizer built with ``chain`` (its state's step)."""
    if not isinstance(state, ChainState):
        raise ValueError(f"step_count needs the state of a chain, got {type(state).__name__}")
    return state.step


# -- learning rates ---------------------------------------------------------------------------
class RateState(NamedTuple):
    """State of ``scale_by_learning_rate``: step count and the rates resolved at ``init``
    (``None`` for a schedule), with or without a leading step axis (``per_step``)."""

    step: int
    rate: LearningRate | None
    per_step: bool = False


def current_rate(state: State) -> LearningRate:
    """The learning rate(s) the next update of an optimizer in ``state`` will use: per-step
    rates at the state's step (the last row past the end), e.g. the rates a learner's inner
    loop starts with, ``current_rate(learner.inner_optimizer.init(params))``."""
    states = state.states if isinstance(state, ChainState) else (state,)
    found = [s for s in states if isinstance(s, RateState)]
    if len(found) != 1 or found[0].rate is None:
        raise ValueError(
            "current_rate needs the state of an optimizer with one scale_by_learning_rate "
            "given fixed or learned rates (not a schedule)"
        )
    rate, step, per_step = found[0].rate, found[0].step, found[0].per_step
    if not per_step:
        return rate
    if isinstance(rate, Mapping):
        return {k: _at_step(torch.as_tensor(v), step) for k, v in rate.items()}
    return _at_step(torch.as_tensor(rate), step)


def _check_rate(lr: object) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float, Tensor, Mapping, nn.Module)):
        if not callable(lr):
            raise ValueError(
                "learning rate must be a number, a tensor, a dict of tensors per parameter, "
                f"a module returning one, or a schedule step -> rate; got {type(lr).__name__}"
            )
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        if not 0 <= lr < float("inf"):
            raise ValueError(f"learning rate must be a finite number >= 0, got {lr!r}")


def _at_step(rate: Tensor, step: int) -> Tensor:
    """Row ``min(step, S - 1)`` of per-step ``rate [S, ...]``: past the last trained step
    the last step's rate is reused."""
    if rate.dim() == 0:
        raise ValueError("per-step learning rates need a leading step axis, got a 0-d tensor")
    return rate[min(step, rate.shape[0] - 1)]


def _rate_for(rate: LearningRate, name: str) -> float | Tensor:
    if isinstance(rate, Mapping):
        if name not in rate:
            raise ValueError(
                f"no learning rate for parameter {name!r}; rates are given for "
                f"{', '.join(rate) or 'none'}"
            )
        return rate[name]
    return rate


def scale_by_learning_rate(
    lr: LearningRate | Schedule | nn.Module, per_step: bool = False
) -> InnerOptimizer:
    """``u_t = -alpha_t * u`` (descent), with the rate ``alpha_t`` given as:

    * a number or scalar tensor (one rate);
    * a dict of tensors, one per adapted parameter, each a scalar (per tensor) or shaped
      like the parameter (per element, Meta-SGD);
    * an ``nn.Module`` whose call ``lr()`` returns one of those: read at ``init``, so that a
      learner's learned rates are taken as they are at the time of the inner loop (and
      through ``torch.func.functional_call`` substitutions);
    * a schedule, any other callable ``step -> rate``, called at every update.

    With ``per_step=True`` each rate tensor (or dict value) has a leading step axis of
    length ``S`` and step ``t`` uses row ``min(t, S - 1)``: past the steps it was given
    for, the last row is reused (MAML++'s LSLR).  Rates that require grad receive their
    hypergradient; fixed rates are stored in the state too, so a rematerialised step sees
    them as inputs.
    """
    _check_rate(lr)
    schedule = callable(lr) and not isinstance(lr, (nn.Module, Tensor))

    def init(params: Params) -> RateState:
        if schedule:
            return RateState(0, None, per_step)
        if isinstance(lr, nn.ParameterDict):  # a Module holding a dict of rates, as a dict
            return RateState(0, dict(lr.items()), per_step)
        return RateState(0, lr() if isinstance(lr, nn.Module) else lr, per_step)

    def update(updates: Params, state: RateState, params: Params) -> tuple[Params, RateState]:
        rate = lr(state.step) if schedule else state.rate
        out = {}
        for k, u in updates.items():
            alpha = _rate_for(rate, k)
            if per_step:
                alpha = _at_step(torch.as_tensor(alpha), state.step)
            out[k] = -(alpha * u)
        return out, RateState(state.step + 1, state.rate, per_step)

    return InnerOptimizer(init, update)


# -- direction transforms ---------------------------------------------------------------------
def trace(beta: float = 0.9, nesterov: bool = False) -> InnerOptimizer:
    """Heavy-ball momentum: ``v_{t+1} = beta v_t + g_t``, ``u = v_{t+1}`` (Nesterov:
    ``u = g_t + beta v_{t+1}``)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"momentum beta must lie in [0, 1), got {beta!r}")

    def init(params: Params) -> State:
        return {k: torch.zeros_like(p) for k, p in params.items()}

    def update(updates: Params, state: State, params: Params) -> tuple[Params, State]:
        velocity = {k: beta * state[k] + g for k, g in updates.items()}
        if nesterov:
            return {k: g + beta * velocity[k] for k, g in updates.items()}, velocity
        return velocity, velocity

    return InnerOptimizer(init, update)


def scale_by_adam(
    beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, eps_root: float = 1e-12
) -> InnerOptimizer:
    """Adam's direction (Kingma and Ba 2015): ``m_t = b1 m + (1-b1) g``,
    ``v_t = b2 v + (1-b2) g^2``, ``u = m_hat / (sqrt(v_hat + eps_root) + eps)`` with
    ``m_hat = m_t / (1 - b1^t)``, ``v_hat = v_t / (1 - b2^t)``.  ``eps_root > 0`` keeps the
    derivative of the square root finite where a gradient is exactly zero."""
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
            raise ValueError(f"adam {name} must lie in [0, 1), got {b!r}")

    def init(params: Params) -> State:
        zeros = {k: torch.zeros_like(p) for k, p in params.items()}
        return {"step": 0, "m": zeros, "v": dict(zeros)}

    def update(updates: Params, state: State, params: Params) -> tuple[Params, State]:
        t = state["step"] + 1
        m = {k: beta1 * state["m"][k] + (1 - beta1) * g for k, g in updates.items()}
        v = {k: beta2 * state["v"][k] + (1 - beta2) * g**2 for k, g in updates.items()}
        c1, c2 = 1 - beta1**t, 1 - beta2**t
        out = {k: (m[k] / c1) / (torch.sqrt(v[k] / c2 + eps_root) + eps) for k in updates}
        return out, {"step": t, "m": m, "v": v}

    return InnerOptimizer(init, update)


#: ``rule(features [N, F]) -> [N]``: a learned per-coordinate correction to the step
UpdateRule = Callable[[Tensor], Tensor]


def scale_by_learned(rule: UpdateRule, beta: float = 0.9) -> InnerOptimizer:
    """A learned update rule, coordinate-wise (Andrychowicz et al. 2016; the feed-forward
    per-parameter form of Metz et al. 2019): ``m_{t+1} = beta m_t + (1 - beta) g_t``,
    ``u = g_t + rule([g_t, m_{t+1}])``.  A rule returning zeros leaves ``g_t`` unchanged."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"learned optimizer beta must lie in [0, 1), got {beta!r}")

    def init(params: Params) -> State:
        return {k: torch.zeros_like(p) for k, p in params.items()}

    def update(updates: Params, state: State, params: Params) -> tuple[Params, State]:
        mean = {k: beta * state[k] + (1 - beta) * g for k, g in updates.items()}
        out = {}
        for k, g in updates.items():
            features = torch.stack([g.reshape(-1), mean[k].reshape(-1)], -1)
            out[k] = g + rule(features).reshape(g.shape)
        return out, mean

    return InnerOptimizer(init, update)


DECAY_TARGETS = ("zero", "init")


def add_decayed_weights(coef: float | Tensor, toward: str = "zero") -> InnerOptimizer:
    """Inner-loop weight decay: ``u = g + coef * (theta_t - a)`` with the anchor ``a = 0``
    (``toward="zero"``, L2 decay) or ``a = theta_0`` (``toward="init"``, the parameters the
    inner loop started from, kept in the state so that they receive meta-gradient).  Put it
    before the learning rate: ``chain(add_decayed_weights(c), scale_by_learning_rate(a))``
    steps ``theta - a (g + c (theta - anchor))``, gradient descent on
    ``L + c/2 ||theta - anchor||^2``."""
    if toward not in DECAY_TARGETS:
        raise ValueError(f"toward must be one of {', '.join(DECAY_TARGETS)}, got {toward!r}")
    if isinstance(coef, bool) or not isinstance(coef, (int, float, Tensor)):
        raise ValueError(f"weight decay coef must be a number >= 0 or a tensor, got {coef!r}")
    if isinstance(coef, (int, float)) and not 0 <= coef < float("inf"):
        raise ValueError(f"weight decay coef must be a finite number >= 0, got {coef!r}")

    def init(params: Params) -> State:
        return dict(params) if toward == "init" else ()

    def update(updates: Params, state: State, params: Params) -> tuple[Params, State]:
        if toward == "init":
            return {k: g + coef * (params[k] - state[k]) for k, g in updates.items()}, state
        return {k: g + coef * params[k] for k, g in updates.items()}, state

    return InnerOptimizer(init, update)
