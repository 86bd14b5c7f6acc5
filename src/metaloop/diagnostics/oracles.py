"""Analytic oracles: closed-form answers a meta-learner can be compared with.

Three settings where the optimum of the meta-objective is known exactly:

* ``maml_linear_regression_optimum``: the minimiser of one-step MAML's objective for a
  bias-free linear model with the MSE loss, on a fixed batch of tasks (normal equations).
* ``maml_quadratic_optimum``: one-step MAML on 1-D quadratics ``h_i/2 (theta - theta*_i)^2``
  learns a weighted mean of the task optima, weights ``p_i (1 - alpha h_i)^2``.
* ``gaussian_mean_posterior`` / ``gaussian_mean_map_inner_lr``: for Gaussian-mean tasks one
  inner step from the prior mean *is* the Bayesian posterior mean (MAP) when the inner rate
  is scaled as stated there (Grant et al. 2018's view of MAML as hierarchical Bayes).

``compare_with_oracle`` puts a learner's ``theta_0`` next to the oracle for its family;
``metaloop diagnose --oracle`` prints it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metaloop.tasks.base import TaskBatch
from metaloop.tasks.synthetic import GaussianMean, LinearRegression, Quadratic

_F64 = torch.float64


def _check_rate(inner_lr: float) -> float:
    if not isinstance(inner_lr, (int, float)) or isinstance(inner_lr, bool) or inner_lr < 0:
        raise ValueError(f"inner_lr must be a number >= 0, got {inner_lr!r}")
    return float(inner_lr)


def maml_linear_regression_optimum(batch: TaskBatch, inner_lr: float) -> Tensor:
    """The ``theta`` minimising one-step MAML's objective for ``f(x) = theta . x`` with MSE.

    Task ``i`` has support ``(X_s, y_s)`` (``S`` rows) and query ``(X_q, y_q)`` (``Q`` rows).
    ``L_s(theta) = (1/S) ||X_s theta - y_s||^2`` has gradient ``A_s theta - b_s`` with
    ``A_s = (2/S) X_s^T X_s``, ``b_s = (2/S) X_s^T y_s``, so one step gives the affine map
    ``theta' = (I - alpha A_s) theta + alpha b_s`` and the query loss is
    ``(1/Q) ||M_i theta - r_i||^2`` with ``M_i = X_q (I - alpha A_s)``,
    ``r_i = y_q - alpha X_q b_s``.  The objective ``(1/T) sum_i (1/Q) ||M_i theta - r_i||^2``
    is minimised by the normal equations ``(sum_i M_i^T M_i) theta = sum_i M_i^T r_i``
    (float64).  Returns ``theta`` of shape ``[dim]``.
    """
    alpha = _check_rate(inner_lr)
    if batch.support_x.dim() != 3 or batch.support_y.shape[-1:] != (1,):
        raise ValueError(
            "maml_linear_regression_optimum needs inputs [T, n, dim] and scalar targets "
            f"[T, n, 1], got {tuple(batch.support_x.shape)} and {tuple(batch.support_y.shape)}"
        )
    xs, ys = batch.support_x.to(_F64), batch.support_y.to(_F64).squeeze(-1)
    xq, yq = batch.query_x.to(_F64), batch.query_y.to(_F64).squeeze(-1)
    s, q, dim = xs.shape[1], xq.shape[1], xs.shape[-1]
    a_s = 2.0 / s * xs.transpose(1, 2) @ xs  # [T, d, d]
    b_s = 2.0 / s * (xs.transpose(1, 2) @ ys.unsqueeze(-1)).squeeze(-1)  # [T, d]
    m = xq @ (torch.eye(dim, dtype=_F64) - alpha * a_s)  # [T, Q, d]
    r = yq - alpha * (xq @ b_s.unsqueeze(-1)).squeeze(-1)  # [T, Q]
    lhs = (m.transpose(1, 2) @ m).sum(0) / q
    rhs = (m.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1).sum(0) / q
    return torch.linalg.solve(lhs, rhs)


def quadratic_task_weights(
    curvatures: Sequence[float] | Tensor,
    inner_lr: float,
    probs: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Normalised weights ``w_i = p_i (1 - alpha h_i)^2 / sum_j p_j (1 - alpha h_j)^2``.

    After one step on ``h_i/2 (theta - theta*_i)^2`` the distance to the optimum is
    ``(1 - alpha h_i)(theta - theta*_i)``: a task the step already solves
    (``alpha h_i = 1``) gets weight zero, a task the step barely moves keeps its full weight.
    """
    alpha = _check_rate(inner_lr)
    h = torch.as_tensor(curvatures, dtype=_F64).reshape(-1)
    p = (
        torch.full_like(h, 1.0 / len(h))
        if probs is None
        else torch.as_tensor(probs, dtype=_F64).reshape(-1)
    )
    if p.shape != h.shape:
        raise ValueError(f"probs must have one entry per curvature ({len(h)}), got {len(p)}")
    raw = p * (1 - alpha * h) ** 2
    if float(raw.sum()) <= 0:
        raise ValueError(
            "every task is solved in one step (alpha * h = 1 for all): the MAML optimum is "
            "not unique"
        )
    return raw / raw.sum()


def maml_quadratic_optimum(
    curvatures: Sequence[float] | Tensor,
    optima: Sequence[float] | Tensor,
    inner_lr: float,
    probs: Sequence[float] | Tensor | None = None,
) -> float:
    """One-step MAML's ``theta_0`` on 1-D quadratics: ``sum_i w_i theta*_i`` with the
    weights of ``quadratic_task_weights``.

    The objective is ``E_i 1/2 ((1 - alpha h_i)(theta - theta*_i))^2``, a weighted least
    squares in ``theta``; it differs from the plain mean of the optima unless all
    curvatures are equal.
    """
    weights = quadratic_task_weights(curvatures, inner_lr, probs)
    opt = torch.as_tensor(optima, dtype=_F64).reshape(-1)
    if opt.shape != weights.shape:
        raise ValueError(f"optima must have one entry per curvature ({len(weights)})")
    return float((weights * opt).sum())


def gaussian_mean_shrinkage(family: GaussianMean) -> float:
    """The posterior weight on the data, ``w = S tau^2 / (S tau^2 + sigma^2)``.

    Prior ``mu ~ N(m, tau^2 I)``, ``S`` observations ``z ~ N(mu, sigma^2 I)``: the posterior
    mean (= MAP) is ``(1 - w) m + w zbar`` with ``zbar`` the support mean.
    """
    tau2, sigma2, s = family.prior_std**2, family.noise_std**2, family.shots
    if tau2 == 0:
        return 0.0
    return s * tau2 / (s * tau2 + sigma2)


def gaussian_mean_map_inner_lr(family: GaussianMean) -> float:
    """The inner rate for which one MAML step from the prior mean is the MAP estimate.

    The learner's MSE is *mean-reduced* over the ``S x D`` entries of the support targets:
    ``L_s(theta) = 1/(S D) sum_n ||z_n - theta||^2``, gradient ``(2/D)(theta - zbar)``.  One
    step gives ``theta' = (1 - 2 alpha / D) theta + (2 alpha / D) zbar``, which equals the
    posterior mean ``(1 - w) m + w zbar`` at ``theta = m`` iff

        alpha = D w / 2,   w = S tau^2 / (S tau^2 + sigma^2).

    (With the sum-reduced, halved loss ``1/2 sum_n ||z_n - theta||^2`` the gradient is
    ``S (theta - zbar)`` and the rate would be ``w / S``; the mean reduction removes the
    ``S`` and adds the factor ``2/D``.)  This rate also minimises the expected one-step
    query loss over ``alpha`` (the shrinkage ``c = 2 alpha / D`` minimising
    ``(1 - c)^2 tau^2 + c^2 sigma^2 / S`` is ``c = w``), and at any rate with ``c != 1``
    MAML's optimal ``theta_0`` is the prior mean ``m``.
    """
    return family.dim * gaussian_mean_shrinkage(family) / 2.0


def gaussian_mean_posterior(family: GaussianMean, batch: TaskBatch) -> Tensor:
    """Per-task posterior mean ``(1 - w) m + w zbar_s`` of ``mu``, shape ``[T, dim]``."""
    w = gaussian_mean_shrinkage(family)
    zbar = batch.support_y.to(_F64).mean(1)
    return (1 - w) * family.prior_mean + w * zbar


def gaussian_mean_expected_query_mse(family: GaussianMean, inner_lr: float) -> float:
    """Expected per-entry query MSE after one step from ``theta = m`` at rate ``alpha``.

    With ``c = 2 alpha / D``: ``theta' - mu = (1 - c)(m - mu) + c (zbar - mu)`` so
    ``E (theta' - z_q)^2 = (1 - c)^2 tau^2 + c^2 sigma^2 / S + sigma^2`` per entry; at the
    MAP rate it is the posterior variance plus the noise, ``w sigma^2 / S + sigma^2``.
    """
    c = 2.0 * _check_rate(inner_lr) / family.dim
    tau2, sigma2 = family.prior_std**2, family.noise_std**2
    return (1 - c) ** 2 * tau2 + c**2 * sigma2 / family.shots + sigma2


@dataclass
class OracleComparison:
    family: str
    learned: list[float]  # the learner's theta_0 (flattened weight)
    oracle: list[float]  # the closed-form optimum for its inner rate
    distance: float  # ||learned - oracle||
    oracle_scale: float  # ||oracle||, to read the distance against
    note: str


def _linear_weight(model: nn.Module) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    if len(params) != 1 or params[0].dim() != 2:
        raise ValueError(
            "the analytic oracles need a bias-free linear model (one 2-D weight tensor, e.g. "
            f"MLP(hidden=(), bias=False)), got {type(model).__name__} with "
            f"{len(params)} parameter tensors"
        )
    return params[0].detach().to(_F64).reshape(-1)


def compare_with_oracle(
    model: nn.Module,
    family: LinearRegression | Quadratic | GaussianMean,
    inner_lr: float,
    tasks: int = 4000,
    seed: int = 0,
) -> OracleComparison:
    """A learned ``theta_0`` (the single weight of a bias-free linear ``model``) against the
    closed-form one-step MAML optimum for ``family`` at ``inner_lr``.

    Linear regression: the normal-equation optimum on ``tasks`` sampled tasks (a Monte-Carlo
    stand-in for the expectation).  Quadratics: the weighted mean of the optima, exact for a
    finite task set, over ``tasks`` samples otherwise.  Gaussian means: the prior mean.
    """
    if not isinstance(family, (LinearRegression, Quadratic, GaussianMean)):
        raise ValueError(
            "analytic oracles exist for LinearRegression, Quadratic and GaussianMean "
            f"families, got {type(family).__name__}"
        )
    learned = _linear_weight(model)
    batch = family.sample(tasks, torch.Generator().manual_seed(seed))
    if isinstance(family, LinearRegression):
        oracle = maml_linear_regression_optimum(batch, inner_lr)
        note = f"one-step MAML normal equations on {tasks} sampled tasks"
    elif isinstance(family, Quadratic):
        if family.curvatures is not None:
            value = maml_quadratic_optimum(family.curvatures, family.optima, inner_lr, family.probs)
            note = "weighted mean of the optima, weights p_i (1 - alpha h_i)^2 (exact)"
        else:
            value = maml_quadratic_optimum(batch.info["curvature"], batch.info["optimum"], inner_lr)
            note = f"weighted mean of the optima over {tasks} sampled tasks"
        oracle = torch.tensor([value], dtype=_F64)
    else:
        oracle = torch.full((family.dim,), float(family.prior_mean), dtype=_F64)
        note = (
            f"prior mean; the MAP inner rate for this family is "
            f"{gaussian_mean_map_inner_lr(family):.4g} (mean-reduced MSE)"
        )
    if learned.shape != oracle.shape:
        raise ValueError(
            f"the model's weight has {learned.numel()} entries but the oracle has "
            f"{oracle.numel()} (use a bias-free nn.Linear matching the family)"
        )
    return OracleComparison(
        type(family).__name__,
        learned.tolist(),
        oracle.tolist(),
        float((learned - oracle).norm()),
        float(oracle.norm()),
        note,
    )
