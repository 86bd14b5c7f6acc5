"""Geometry of a meta-learned initialisation ``theta_0``.

* ``gradient_alignment``: per task, the cosine between the first inner step's direction
  ``-grad L_support(theta_0)`` and the direction to the task's optimum
  ``theta*_i - theta_0``.  Near 1: one step heads for the solution; near 0 or negative: the
  support gradient is a poor guide from this initialisation.
* ``dead_relu_units``: the fraction of ReLU units that output zero for every input of a batch
  at ``theta_0`` (they pass no gradient, so the inner loop cannot use them).
* ``subspace_distance``: for ``LinearRegression`` tasks on an ``r``-dimensional subspace
  (``w = w_mean + B z``), the distance from ``theta_0`` to that affine subspace of task
  optima, ``||(I - B B^T)(theta_0 - w_mean)||``, next to the mean distance from ``theta_0``
  to the optima themselves (the solution-manifold check: a good ``theta_0`` lies on the
  manifold, near all optima).
* Sensitivity (``alpha * lambda_max`` of the support loss) is ``diagnostics.sharpness``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.functional.params import detach, split_module
from metaloop.tasks.base import TaskBatch
from metaloop.tasks.synthetic import LinearRegression


def _flat(params: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([params[n].reshape(-1) for n in names])


def support_gradients(learner: GradientMetaLearner, batch: TaskBatch) -> Tensor:
    """``grad L_support_i(theta_0)`` per task, flattened over the adapted parameters
    ``[T, P]`` (learner's loss, no inner step taken)."""
    params, buffers = split_module(learner.model)
    params = detach(params)
    names = list(learner.adapt_names)
    task_loss = learner.task_loss(buffers)
    rows = []
    for task in batch:
        fast = {n: params[n].clone().requires_grad_() for n in names}
        loss = task_loss({**params, **fast}, task.support_x, task.support_y)
        grads = torch.autograd.grad(loss, [fast[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def task_optima(
    learner: GradientMetaLearner, batch: TaskBatch, steps: int = 500, inner_lr: float = 0.01
) -> Tensor:
    """Each task's optimum approximated by ``steps`` of gradient descent (rate ``inner_lr``)
    from ``theta_0`` on the task's support and query points together, ``[T, P]``."""
    params, buffers = split_module(learner.model)
    params = detach(params)
    names = list(learner.adapt_names)
    task_loss = learner.task_loss(buffers)
    rows = []
    for task in batch:
        x = torch.cat([task.support_x, task.query_x])
        y = torch.cat([task.support_y, task.query_y])
        fast = {n: params[n].clone() for n in names}
        for _ in range(steps):
            fast = {n: p.requires_grad_() for n, p in fast.items()}
            loss = task_loss({**params, **fast}, x, y)
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {n: (p - inner_lr * g).detach() for (n, p), g in zip(fast.items(), grads)}
        rows.append(_flat(fast, names))
    return torch.stack(rows)


@dataclass
class Alignment:
    cosines: list[float]  # per task
    mean: float
    fraction_positive: float  # share of tasks whose first step points towards the optimum


def gradient_alignment(
    learner: GradientMetaLearner, batch: TaskBatch, optima: Tensor | None = None
) -> Alignment:
    """``cos(-grad L_s_i(theta_0), theta*_i - theta_0)`` per task.

    ``optima [T, P]`` are the task optima flattened like the adapted parameters; by default
    ``task_optima`` (long descent on all the task's points).  For bias-free linear models on
    ``LinearRegression`` tasks pass ``batch.info["weights"]`` (the true weights).
    """
    params, _ = split_module(learner.model)
    names = list(learner.adapt_names)
    theta0 = _flat(detach(params), names)
    grads = support_gradients(learner, batch)
    if optima is None:
        optima = task_optima(learner, batch)
    optima = optima.to(grads.dtype).reshape(len(batch), -1)
    if optima.shape != grads.shape:
        raise ValueError(
            f"optima must have shape {tuple(grads.shape)} (tasks x adapted parameters), "
            f"got {tuple(optima.shape)}"
        )
    cos = torch.nn.functional.cosine_similarity(-grads, optima - theta0, dim=1)
    return Alignment(cos.tolist(), float(cos.mean()), float((cos > 0).double().mean()))


@dataclass
class DeadUnits:
    per_layer: list[float]  # fraction of dead units of each ReLU, in module order
    dead: int
    units: int

    @property
    def fraction(self) -> float:
        return self.dead / max(self.units, 1)


def dead_relu_units(model: nn.Module, inputs: Tensor) -> DeadUnits:
    """Units of each ``nn.ReLU`` whose output is zero for every row of ``inputs``.

    A unit is a feature of the ReLU's output (last dimension for vectors, channel for
    images, where it is dead if zero at every position too).
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU modules to inspect")
    alive: dict[int, Tensor] = {}

    def hook(module: nn.Module, _: tuple, output: Tensor) -> None:
        out = output.detach()
        active = out > 0
        if out.dim() > 2:  # [N, C, ...] -> per channel
            active = active.transpose(0, 1).reshape(out.shape[1], -1).any(1)
        else:
            active = active.reshape(-1, out.shape[-1]).any(0)
        alive[id(module)] = active

    handles = [m.register_forward_hook(hook) for m in relus]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    per_layer, dead, units = [], 0, 0
    for m in relus:
        active = alive[id(m)]
        n_dead = int((~active).sum())
        per_layer.append(n_dead / active.numel())
        dead, units = dead + n_dead, units + active.numel()
    return DeadUnits(per_layer, dead, units)


@dataclass
class SubspaceDistance:
    to_subspace: float  # ||(I - B B^T)(theta_0 - w_mean)||
    to_optima: float  # mean ||theta_0 - w_i|| over the batch's tasks
    to_center: float  # ||theta_0 - w_mean||


def subspace_distance(
    theta0: Tensor, family: LinearRegression, batch: TaskBatch
) -> SubspaceDistance:
    """Distance from ``theta_0`` (the weight vector ``[dim]``) to the affine subspace of task
    optima ``{w_mean + B z}``, and to the batch's task optima ``batch.info["weights"]``."""
    theta0 = theta0.detach().double().reshape(-1)
    if theta0.shape != (family.dim,):
        raise ValueError(f"theta_0 must have {family.dim} entries, got {theta0.numel()}")
    basis, center = family.basis.double(), family.w_mean.double()
    offset = theta0 - center
    residual = offset - basis @ (basis.T @ offset)
    weights = batch.info["weights"].double()
    return SubspaceDistance(
        float(residual.norm()),
        float((weights - theta0).norm(dim=1).mean()),
        float(offset.norm()),
    )
