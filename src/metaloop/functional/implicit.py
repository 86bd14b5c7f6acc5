"""Implicit meta-gradients (iMAML): conjugate gradient with Hessian-vector products.

For the proximal inner problem ``phi*(theta) = argmin_phi L_s(phi) + lam/2 ||phi - theta||^2``
the stationarity condition ``grad L_s(phi*) + lam (phi* - theta) = 0`` gives, by the
implicit function theorem, ``d phi*/d theta = (I + H/lam)^{-1}`` with
``H = hess L_s(phi*)``.  The meta-gradient of ``L_q(phi*(theta))`` is therefore the
solution ``v`` of

    (I + H / lam) v = grad L_q(phi*),

found here by conjugate gradient, touching ``H`` only through Hessian-vector products
(no Hessian is formed).  Everything is a pure function of parameter dicts with a fixed
number of iterations, so it runs per task under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, vjp

from metaloop.functional.params import Params


def tree_dot(a: Params, b: Params) -> Tensor:
    """``sum_k <a_k, b_k>`` over dicts of tensors sharing keys."""
    return sum((a[k] * b[k]).sum() for k in a)


def hvp_fn(loss: Callable[[Params], Tensor], params: Params) -> Callable[[Params], Params]:
    """``v -> H v`` with ``H`` the Hessian of ``loss`` at ``params``.

    Reverse over reverse: the gradient's graph is built once and every product is one
    vector-Jacobian product of the gradient (``H`` is symmetric, so ``v^T H = (H v)^T``).
    """
    _, pullback = vjp(grad(loss), params)

    def hvp(v: Params) -> Params:
        return pullback(v)[0]

    return hvp


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # an exactly converged residual gives 0/0; the step is then 0, not NaN
    return num / torch.where(den == 0, torch.ones_like(den), den)


def conjugate_gradient(
    matvec: Callable[[Params], Params], b: Params, steps: int
) -> tuple[Params, Tensor]:
    """``steps`` iterations of conjugate gradient for ``A x = b`` from ``x = 0``.

    ``A`` (given as ``matvec``) must be symmetric positive definite.  Returns ``x`` and the
    relative residual ``||b - A x|| / ||b||`` (as tracked by the recursion).
    """
    if steps < 1:
        raise ValueError(f"conjugate gradient needs steps >= 1, got {steps}")
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = dict(b)
    p = dict(b)
    rs = tree_dot(r, r)
    b_norm = rs.sqrt()
    for _ in range(steps):
        ap = matvec(p)
        alpha = _safe_div(rs, tree_dot(p, ap))
        x = {k: x[k] + alpha * p[k] for k in x}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rs_new = tree_dot(r, r)
        beta = _safe_div(rs_new, rs)
        p = {k: r[k] + beta * p[k] for k in p}
        rs = rs_new
    return x, _safe_div(rs.sqrt(), b_norm)


def implicit_meta_gradient(
    support_loss: Callable[[Params], Tensor],
    adapted: Params,
    query_grad: Params,
    lam: float,
    steps: int,
) -> tuple[Params, Tensor]:
    """Solve ``(I + H/lam) v = query_grad`` with ``H`` the Hessian of ``support_loss`` at
    ``adapted``; returns ``v`` (the implicit meta-gradient) and CG's relative residual."""
    hvp = hvp_fn(support_loss, adapted)

    def matvec(v: Params) -> Params:
        hv = hvp(v)
        return {k: v[k] + hv[k] / lam for k in v}

    return conjugate_gradient(matvec, query_grad, steps)
