"""Implicit MAML against closed forms (linear regression, 1-D quadratics) and a dense
Hessian solve (small MLP), all in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian

from metaloop.algorithms import IMAML, MAML
from metaloop.functional.implicit import conjugate_gradient
from metaloop.functional.params import split_module
from metaloop.models import MLP
from metaloop.tasks import LinearRegression, Quadratic, Sinusoid

torch.set_num_threads(1)


def test_implicit_gradient_on_linear_regression_equals_closed_form():
    """Linear model, MSE: ``L_s(phi) = (1/S) ||X_s phi - y_s||^2`` has Hessian
    ``A_s = (2/S) X_s^T X_s`` and gradient ``A_s phi - b_s`` (``b_s = (2/S) X_s^T y_s``).  The
    proximal problem ``L_s(phi) + lam/2 ||phi - theta||^2`` is solved exactly by
    ``phi* = (A_s + lam I)^{-1} (b_s + lam theta)``, so ``d phi*/d theta = lam (A_s + lam I)^{-1}
    = (I + A_s/lam)^{-1}`` and the exact implicit meta-gradient is
    ``(1/T) sum_i (I + A_s/lam)^{-1} grad L_q(phi*_i)`` with
    ``grad L_q(phi) = (2/Q) X_q^T (X_q phi - y_q)``.  The learner (60 inner steps, CG with
    as many iterations as dimensions) must reproduce it, and its loss value the query loss
    at ``phi*``."""
    dim, lam = 4, 2.0
    family = LinearRegression(dim=dim, shots=10, queries=8, noise_std=0.1, dtype=torch.float64)
    batch = family.sample(5, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = nn.Linear(dim, 1, bias=False).double()
    # strongly convex inner problem: eigenvalues of A_s + lam I lie in about [2.3, 7.3]
    learner = IMAML(model, inner_lr=0.2, inner_steps=60, lam=lam, cg_steps=dim)
    loss, metrics = learner.meta_loss(batch)
    (got,) = torch.autograd.grad(loss, model.weight)

    theta = model.weight.detach().reshape(-1)
    eye = torch.eye(dim, dtype=torch.float64)
    expected = torch.zeros(dim, dtype=torch.float64)
    expected_loss = 0.0
    for task in batch:
        xs, ys = task.support_x, task.support_y.reshape(-1)
        xq, yq = task.query_x, task.query_y.reshape(-1)
        a_s = 2 / len(xs) * xs.T @ xs
        b_s = 2 / len(xs) * xs.T @ ys
        phi = torch.linalg.solve(a_s + lam * eye, b_s + lam * theta)
        g_q = 2 / len(xq) * xq.T @ (xq @ phi - yq)
        expected += torch.linalg.solve(eye + a_s / lam, g_q) / len(batch)
        expected_loss += float(((xq @ phi - yq) ** 2).mean()) / len(batch)
    torch.testing.assert_close(got.reshape(-1), expected, rtol=1e-9, atol=1e-12)
    assert float(loss.detach()) == pytest.approx(expected_loss, rel=1e-10)
    assert metrics["query_loss"] == pytest.approx(expected_loss, rel=1e-10)
    assert metrics["cg_residual"] < 1e-10
    # discriminative: one CG step is not enough, and MAML's gradient is something else
    rough, _ = IMAML(model, inner_lr=0.2, inner_steps=60, lam=lam, cg_steps=1).meta_loss(batch)
    assert float((torch.autograd.grad(rough, model.weight)[0].reshape(-1) - expected).norm()) > 1e-4
    maml, _ = MAML(model, inner_lr=0.15, inner_steps=1).meta_loss(batch)
    assert float((torch.autograd.grad(maml, model.weight)[0].reshape(-1) - expected).norm()) > 1e-2


def test_imaml_on_quadratics_converges_to_closed_form():
    """1-D quadratics, ``L_s = h/2 (phi - theta*)^2``: the proximal solution is
    ``phi* = (h theta* + lam theta) / (h + lam)``, so ``phi* - theta* = lam/(h + lam)
    (theta - theta*)`` and the iMAML objective ``E 1/2 (phi* - theta*)^2`` is minimised at
    ``theta_0 = sum_i p_i w_i theta*_i / sum_i p_i w_i`` with ``w_i = (lam/(h_i + lam))^2``."""
    h, opt, lam = [0.5, 2.0, 4.0], [1.0, -2.0, 0.5], 1.5
    family = Quadratic(curvatures=h, optima=opt, dtype=torch.float64)
    batch = family.make_batch(torch.tensor(h), torch.tensor(opt))
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(4.0)
    # inner: the proximal curvature h + lam lies in [2, 5.5], lr 0.27 contracts by 0.48 a step;
    # outer: the objective's curvature is mean(w) = 0.27, lr 3.5 contracts by 0.05 a step
    learner = IMAML(model, inner_lr=0.27, inner_steps=45, lam=lam, cg_steps=1)
    outer = torch.optim.SGD(learner.parameters(), lr=3.5)
    for _ in range(12):
        loss, _ = learner.meta_loss(batch)
        outer.zero_grad()
        loss.backward()
        outer.step()
    w = [(lam / (hi + lam)) ** 2 for hi in h]
    closed_form = sum(wi * o for wi, o in zip(w, opt)) / sum(w)
    assert float(model.weight.detach()) == pytest.approx(closed_form, abs=1e-9)


def test_implicit_gradient_on_mlp_equals_dense_solve():
    """Nonlinear model: the learner's gradient equals ``(I + H/lam)^{-1} grad L_q(phi)`` with
    ``H`` formed densely by ``torch.autograd.functional.hessian`` at the learner's own
    ``phi`` (CG run for as many iterations as parameters)."""
    torch.manual_seed(1)
    model = MLP(1, 1, hidden=(4,), activation="tanh").double()
    batch = Sinusoid(shots=6, queries=6, dtype=torch.float64).sample(
        2, torch.Generator().manual_seed(1)
    )
    n = sum(p.numel() for p in model.parameters())
    lam = 5.0
    learner = IMAML(model, inner_lr=0.05, inner_steps=20, lam=lam, cg_steps=3 * n)
    loss, _ = learner.meta_loss(batch)
    got = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])

    params, buffers = split_module(model)
    names = list(params)
    shapes = [p.shape for p in params.values()]
    plain = MAML(model).task_loss(buffers)

    def unflat(flat):
        out, i = {}, 0
        for name, shape in zip(names, shapes):
            k = shape.numel()
            out[name] = flat[i : i + k].reshape(shape)
            i += k
        return out

    expected = torch.zeros(n, dtype=torch.float64)
    for task in batch:
        phi = learner.adapt_params(
            {k: v.detach() for k, v in params.items()},
            buffers,
            task.support_x,
            task.support_y,
            20,
            "first_order",
        )
        phi_flat = torch.cat([phi[k].detach().reshape(-1) for k in names])
        h = hessian(lambda f, t=task: plain(unflat(f), t.support_x, t.support_y), phi_flat)
        g_q = torch.func.grad(lambda f, t=task: plain(unflat(f), t.query_x, t.query_y))(phi_flat)
        expected += torch.linalg.solve(torch.eye(n, dtype=torch.float64) + h / lam, g_q) / 2
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-10)


def test_vmap_and_loop_agree_and_adaptation_is_proximal():
    torch.manual_seed(2)
    model = MLP(1, 1, hidden=(16,))
    batch = Sinusoid(shots=5, queries=5).sample(4, torch.Generator().manual_seed(2))
    # lam large enough that I + H/lam is positive definite (CG is then stable in float32)
    a = IMAML(model, inner_lr=0.01, inner_steps=3, lam=10.0, vectorize="vmap")
    b = IMAML(copy.deepcopy(model), inner_lr=0.01, inner_steps=3, lam=10.0, vectorize="loop")
    la, metrics = a.meta_loss(batch)
    lb, _ = b.meta_loss(batch)
    assert metrics["cg_residual"] < 1e-2
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    for ga, gb in zip(
        torch.autograd.grad(la, list(a.parameters())), torch.autograd.grad(lb, list(b.parameters()))
    ):
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-6)
    ra, rb = a.evaluate_batch(batch, steps=(0, 3)), b.evaluate_batch(batch, steps=(0, 3))
    torch.testing.assert_close(ra[3]["loss"], rb[3]["loss"], rtol=1e-6, atol=1e-6)
    # with a huge lam the proximal term pins phi to theta: adaptation changes nothing
    stiff = IMAML(model, inner_lr=1e-7, inner_steps=3, lam=1e6)
    result = stiff.evaluate_batch(batch, steps=(0, 3))
    torch.testing.assert_close(result[0]["loss"], result[3]["loss"], rtol=1e-4, atol=1e-6)


def test_conjugate_gradient_solves_spd_systems():
    g = torch.Generator().manual_seed(3)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = {"x": torch.randn(6, generator=g, dtype=torch.float64)}
    x, residual = conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, steps=6)
    torch.testing.assert_close(x["x"], torch.linalg.solve(a, b["x"]), rtol=1e-8, atol=1e-10)
    assert float(residual) < 1e-8
    # an exactly converged system does not produce NaN in later iterations
    x, _ = conjugate_gradient(lambda v: {"x": 2 * v["x"]}, b, steps=4)
    torch.testing.assert_close(x["x"], b["x"] / 2)
    with pytest.raises(ValueError, match="steps >= 1"):
        conjugate_gradient(lambda v: v, b, steps=0)


def test_arguments():
    model = MLP(1, 1, hidden=(4,))
    with pytest.raises(ValueError, match="lam must be a positive"):
        IMAML(model, lam=0.0)
    with pytest.raises(ValueError, match="cg_steps must be a positive integer"):
        IMAML(model, cg_steps=0)
    with pytest.raises(TypeError, match="adapt= is not accepted"):
        IMAML(model, adapt="layers.2")
    assert "lam=2.0" in repr(IMAML(model, lam=2.0))
