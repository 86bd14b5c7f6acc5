"""Sharpness of the support loss at the meta-learned initialisation: will more steps diverge?

A gradient-based learner adapts each task by gradient descent on its support loss
``L_s(theta)`` from ``theta_0`` (the meta-learned initialisation, or ``task_init``'s).
Near ``theta_0`` the loss is close to a quadratic with Hessian ``H``; one step of rate
``alpha`` maps the error along an eigenvector of ``H`` with eigenvalue ``lambda`` to
``(1 - alpha * lambda)`` times itself.  Gradient descent is stable only when

    alpha * lambda_max(H) < 2;

above it the error along the top direction grows by ``|1 - alpha * lambda_max| > 1`` every
step, oscillating in sign: one step may still help (MAML is meta-trained for it), five or
ten blow up.  With per-parameter rates ``D = diag(alpha_i)`` (Meta-SGD) the step matrix is
``I - D H``, whose eigenvalues are those of ``D^(1/2) H D^(1/2)``; the quantity reported is
then ``lambda_max(D^(1/2) H D^(1/2))``, which is ``alpha * lambda_max(H)`` for a scalar rate.

``lambda_max`` is found by power iteration on Hessian-vector products (reverse over
reverse with ``torch.func.grad``; the Hessian is never formed), in two passes: the
first converges to the eigenvalue ``mu`` of largest magnitude, the second runs on
``M - min(mu, 0) I``, whose top eigenvalue ``lambda_max - min(mu, 0) >= 0`` dominates, so a
negative eigenvalue of larger magnitude cannot hide the top one.  The eigenvalue is the
Rayleigh quotient ``v' M v`` of the last unit vector; ``residual`` reports
``||M v - lambda v|| / |lambda|`` so that a run that has not converged says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad

from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.functional.batching import map_tasks
from metaloop.functional.params import detach, split_module
from metaloop.tasks.base import TaskBatch
from metaloop.validate import is_int

#: the gradient-descent stability limit of ``alpha * lambda_max``
STABILITY_LIMIT = 2.0


def _power_iteration(
    matvec: Callable[[Tensor], Tensor], start: Tensor, iterations: int, shift: Tensor | float
) -> tuple[Tensor, Tensor]:
    """``(v' (M - shift) v, v)`` after ``iterations`` normalised products with ``M - shift``."""
    v = start / start.norm()
    for _ in range(iterations):
        w = matvec(v) - shift * v
        v = w / w.norm().clamp_min(1e-30)
    return torch.dot(v, matvec(v) - shift * v), v


def top_eigenvalue(
    matvec: Callable[[Tensor], Tensor], start: Tensor, iterations: int = 100
) -> tuple[Tensor, Tensor]:
    """Largest (algebraic, not absolute) eigenvalue of the symmetric operator ``matvec``
    from the vector ``start``, and the relative residual ``||M v - lambda v|| / |lambda|``.

    Two passes of ``iterations`` products each (see the module docstring); branch-free, so
    it runs under ``torch.func.vmap``.
    """
    _check_iterations(iterations)
    dominant, v = _power_iteration(matvec, start, iterations, 0.0)
    shift = dominant.clamp(max=0.0)
    shifted, v = _power_iteration(matvec, v + 1e-3 * start / start.norm(), iterations, shift)
    value = shifted + shift
    residual = (matvec(v) - value * v).norm() / value.abs().clamp_min(1e-30)
    return value, residual


def _check_iterations(iterations: int) -> None:
    if not is_int(iterations) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")


def hessian_top_eigenvalue(
    loss: Callable[[Tensor], Tensor], theta: Tensor, start: Tensor, iterations: int = 100
) -> tuple[Tensor, Tensor]:
    """``lambda_max`` of the Hessian of the scalar ``loss`` at the flat vector ``theta``
    (and the residual), by power iteration on Hessian-vector products."""

    return top_eigenvalue(_hvp(loss, theta), start, iterations)


def _hvp(loss: Callable[[Tensor], Tensor], theta: Tensor) -> Callable[[Tensor], Tensor]:
    """``v -> H v`` at ``theta``: the gradient of ``grad(loss)(theta) . v`` (reverse over
    reverse; the gradient function is built once and reused for every product)."""
    gradient = grad(loss)

    def directional(t: Tensor, v: Tensor) -> Tensor:
        return torch.dot(gradient(t), v)

    second = grad(directional)
    return lambda v: second(theta, v)


def _step_rates(
    learner: GradientMetaLearner, fast: dict[str, Tensor], inner_lr: float | Tensor | None
) -> Tensor:
    """The per-element rates ``D`` of the learner's first inner step, one flat vector over
    the adapted parameters: ``inner_lr`` when given, else read off the inner optimizer as
    ``-update(1)``, checked to be linear in the gradient (``update(2 g) = 2 update(g)``,
    ``update(0) = 0``): SGD at fixed or learned rates.  Momentum's first step is SGD's;
    Adam's is not linear, and weight decay adds a term, so ``alpha * lambda`` is not their
    stability criterion and they are refused."""
    first = next(iter(fast.values()))
    n = sum(v.numel() for v in fast.values())
    if inner_lr is not None:
        flat = torch.as_tensor(inner_lr, dtype=first.dtype, device=first.device).expand(n)
    else:
        optimizer = learner.inner_optimizer
        state = optimizer.init(fast)

        def update(scale: float) -> Tensor:
            grads = {k: torch.full_like(v, scale) for k, v in fast.items()}
            updates, _ = optimizer.update(grads, state, fast)
            return torch.cat([updates[k].detach().reshape(-1) for k in fast])

        flat = -update(1.0)
        if not (
            torch.allclose(update(2.0), -2 * flat, rtol=1e-5, atol=0)
            and bool((update(0.0) == 0).all())
        ):
            raise ValueError(
                "sharpness needs an inner optimizer whose step is linear in the gradient "
                "(SGD at fixed or learned rates); this learner's is not "
                f"({learner.inner_optimizer_name!r}); pass inner_lr to measure "
                "inner_lr * lambda_max anyway"
            )
    flat = flat.detach().clone()
    if not bool((flat > 0).all()):
        raise ValueError(
            "sharpness needs positive inner learning rates (alpha * lambda is the stability "
            f"criterion of gradient descent only then); the smallest rate is {float(flat.min())}"
        )
    return flat


@dataclass(frozen=True)
class Sharpness:
    """``alpha * lambda_max`` of the support loss at the initialisation, per task.

    ``values`` per task (``lambda_max(D^(1/2) H D^(1/2))`` with per-parameter rates),
    ``top_eigenvalues`` the Hessian's own ``lambda_max`` when the rate is one scalar
    (``None`` otherwise), ``quantiles`` of ``values`` at 0, 10, 25, 50, 75, 90 and 100%,
    ``fraction_above`` the fraction of tasks above ``limit`` (2: gradient descent's
    stability limit), ``max_residual`` the worst relative residual of the power iteration.
    """

    values: list[float]
    top_eigenvalues: list[float] | None
    quantiles: dict[str, float]
    fraction_above: float
    limit: float
    tasks: int
    iterations: int
    max_residual: float

    def __str__(self) -> str:
        q = self.quantiles
        return (
            f"alpha * lambda_max of the support loss at the initialisation, {self.tasks} tasks: "
            f"median {q['50%']:.3g} (10% {q['10%']:.3g}, 90% {q['90%']:.3g}, max "
            f"{q['100%']:.3g}); {100 * self.fraction_above:.1f}% of tasks above "
            f"{self.limit:g}, the gradient-descent stability limit (power iteration, "
            f"{self.iterations} products per pass, worst residual {self.max_residual:.1e})"
        )


def support_sharpness(
    learner: GradientMetaLearner,
    batch: TaskBatch,
    iterations: int = 100,
    seed: int = 0,
    inner_lr: float | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Per task of ``batch``: ``(alpha * lambda_max, lambda_max, residual)`` of the Hessian
    of its support loss with respect to the adapted parameters at ``theta_0``.

    ``inner_lr`` defaults to the rates the learner's inner loop starts with; per-parameter
    rates give ``lambda_max(D^(1/2) H D^(1/2))`` in the first tensor and ``None`` in the
    second.  Start vectors come from ``seed``.
    """
    if not isinstance(learner, GradientMetaLearner):
        raise TypeError(
            f"sharpness applies to gradient-based learners (MAML and relatives), got "
            f"{type(learner).__name__}"
        )
    _check_iterations(iterations)
    params, buffers = split_module(learner.model)
    params = detach(params)
    names = learner.adapt_names
    task_loss = learner.task_loss(buffers)
    shapes = {k: params[k].shape for k in names}
    sizes = [params[k].numel() for k in names]
    dim = sum(sizes)
    rate = _step_rates(learner, {k: params[k] for k in names}, inner_lr)
    root = rate.sqrt()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randn(len(batch), dim, generator=g, dtype=rate.dtype).to(rate.device)

    scalar_rate = bool((rate == rate[0]).all())

    def per_task(sx: Tensor, sy: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
        learner.set_norm_row(0)
        theta0 = learner.task_init(params, buffers, sx, sy)
        fixed = {k: v for k, v in theta0.items() if k not in shapes}
        flat0 = torch.cat([theta0[k].reshape(-1) for k in names])

        def loss(flat: Tensor) -> Tensor:
            pieces = torch.split(flat, sizes)
            fast = {k: p.reshape(shapes[k]) for k, p in zip(names, pieces)}
            return task_loss({**fixed, **fast}, sx, sy)

        hvp = _hvp(loss, flat0)
        if scalar_rate:  # D = alpha I: lambda_max(H), scaled afterwards
            return top_eigenvalue(hvp, start, iterations)
        return top_eigenvalue(lambda v: root * hvp(root * v), start, iterations)

    was_training = learner.training
    learner.eval()
    try:
        with torch.enable_grad():
            value, residual = map_tasks(
                per_task,
                batch.support_x,
                batch.support_y,
                starts,
                policy=learner.policy,
                chunk_size=learner.chunk_size,
            )
    finally:
        learner.train(was_training)
    value, residual = value.detach(), residual.detach()
    if scalar_rate:
        return value * float(rate[0]), value, residual
    return value, None, residual


def sharpness(
    learner: GradientMetaLearner,
    batches: TaskBatch | Iterable[TaskBatch],
    iterations: int = 100,
    limit: float = STABILITY_LIMIT,
    seed: int = 0,
    inner_lr: float | None = None,
) -> Sharpness:
    """The distribution of ``alpha * lambda_max`` over the tasks of ``batches`` (one
    ``TaskBatch`` or several) and the fraction above ``limit`` (``support_sharpness``; see
    the module docstring)."""
    if not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0):
        raise ValueError(f"limit must be a positive number, got {limit!r}")
    parts = [
        support_sharpness(learner, batch, iterations, seed + i, inner_lr)
        for i, batch in enumerate([batches] if isinstance(batches, TaskBatch) else batches)
    ]
    if not parts:
        raise ValueError("sharpness needs at least one task batch")
    v = torch.cat([p[0] for p in parts]).double()
    plain = None if parts[0][1] is None else torch.cat([p[1] for p in parts]).double()
    residual = torch.cat([p[2] for p in parts])
    levels = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    quantiles = {f"{round(100 * q)}%": float(torch.quantile(v, q)) for q in levels}
    return Sharpness(
        values=v.tolist(),
        top_eigenvalues=None if plain is None else plain.tolist(),
        quantiles=quantiles,
        fraction_above=float((v > limit).double().mean()),
        limit=float(limit),
        tasks=len(v),
        iterations=iterations,
        max_residual=float(residual.max()),
    )


class SharpnessLog:
    """A ``Trainer`` callback that adds the sharpness of the learner on fixed tasks to every
    validation record: ``sharpness_median``, ``sharpness_p90`` and ``sharpness_above_2``
    (the fraction of the tasks with ``alpha * lambda_max`` above ``limit``; the key keeps
    its name for any ``limit``).  It reads the learner only (its own generator for the
    start vectors), so training runs exactly as without it.

    Usage: ``trainer.callbacks.append(SharpnessLog(family.sample(100, generator)))``.
    """

    def __init__(
        self, batch: TaskBatch, iterations: int = 50, limit: float = STABILITY_LIMIT
    ) -> None:
        _check_iterations(iterations)
        self.batch, self.iterations, self.limit = batch, iterations, limit

    def __call__(self, trainer: object, record: dict[str, object]) -> None:
        if record.get("split") != "val":
            return
        learner = trainer.learner  # type: ignore[attr-defined]
        batch = self.batch.to(trainer.device)  # type: ignore[attr-defined]
        report = sharpness(learner, batch, self.iterations, self.limit)
        record["sharpness_median"] = report.quantiles["50%"]
        record["sharpness_p90"] = report.quantiles["90%"]
        record["sharpness_above_2"] = report.fraction_above
