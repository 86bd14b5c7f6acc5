"""The functional inner loop against hand-written loops, exact Jacobians and finite
differences (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian

from metaloop.functional import inner_loop, inner_steps_iter, momentum, sgd
from metaloop.functional.params import name_filter

torch.set_num_threads(1)


def loss_fn(params, x, y):
    """A small two-layer regression model ``v . tanh(W x)`` with MSE (non-quadratic)."""
    hidden = torch.tanh(x @ params["W"].T)
    return ((hidden @ params["v"] - y) ** 2).mean()


def make_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = {
        "W": torch.randn(3, 2, generator=g, dtype=torch.float64),
        "v": torch.randn(3, generator=g, dtype=torch.float64),
    }
    xs = torch.randn(6, 2, generator=g, dtype=torch.float64)
    ys = torch.randn(6, generator=g, dtype=torch.float64)
    xq = torch.randn(7, 2, generator=g, dtype=torch.float64)
    yq = torch.randn(7, generator=g, dtype=torch.float64)
    return params, xs, ys, xq, yq


def flatten(p):
    return torch.cat([p["W"].reshape(-1), p["v"]])


def unflatten(flat):
    return {"W": flat[:6].reshape(3, 2), "v": flat[6:]}


@torch.no_grad()
def finite_difference(fn, flat: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    out = torch.zeros_like(flat)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        out[i] = (fn(flat + e) - fn(flat - e)) / (2 * eps)
    return out


def test_inner_loop_equals_hand_written_sgd_and_reports_support_losses():
    params, xs, ys, _, _ = make_problem()
    alpha, steps = 0.1, 4
    fast = {k: v.clone().requires_grad_() for k, v in params.items()}
    expected, expected_losses = [], []
    for _ in range(steps):
        loss = loss_fn(fast, xs, ys)
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {
            k: (v - alpha * g).detach().requires_grad_() for (k, v), g in zip(fast.items(), grads)
        }
        expected.append({k: v.detach() for k, v in fast.items()})
        expected_losses.append(float(loss.detach()))
    got = list(inner_steps_iter(loss_fn, params, xs, ys, sgd(alpha), steps))
    assert len(got) == steps
    for (p, loss), e, el in zip(got, expected, expected_losses):
        for k in e:
            torch.testing.assert_close(p[k], e[k], rtol=1e-12, atol=1e-14)
        assert float(loss) == pytest.approx(el, rel=1e-12)  # L_support(theta_{t-1})
    final = inner_loop(loss_fn, params, xs, ys, sgd(alpha), steps)
    for k in final:
        torch.testing.assert_close(final[k], expected[-1][k], rtol=1e-12, atol=1e-14)


def test_zero_steps_return_the_parameters():
    params, xs, ys, _, _ = make_problem()
    assert inner_loop(loss_fn, params, xs, ys, sgd(0.1), 0) is params


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_jacobian_is_product_of_i_minus_alpha_h(steps):
    """``d theta_K / d theta = prod_k (I - alpha H(theta_k))`` (latest step on the left), with
    the Hessians from ``torch.autograd.functional.hessian`` at the iterates."""
    params, xs, ys, _, _ = make_problem(1)
    alpha = 0.2

    def adapted(flat):
        return flatten(inner_loop(loss_fn, unflatten(flat), xs, ys, sgd(alpha), steps))

    theta = flatten(params)
    got = jacobian(adapted, theta)
    expected = torch.eye(theta.numel(), dtype=torch.float64)
    point = theta
    for _ in range(steps):
        h = hessian(lambda f: loss_fn(unflatten(f), xs, ys), point)
        expected = (torch.eye(theta.numel(), dtype=torch.float64) - alpha * h) @ expected
        g = torch.func.grad(lambda f: loss_fn(unflatten(f), xs, ys))(point)
        point = point - alpha * g
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_first_order_jacobian_is_identity():
    params, xs, ys, _, _ = make_problem(2)

    def adapted(flat):
        return flatten(
            inner_loop(loss_fn, unflatten(flat), xs, ys, momentum(0.1), 3, mode="first_order")
        )

    theta = flatten(params)
    identity = torch.eye(theta.numel(), dtype=torch.float64)
    torch.testing.assert_close(jacobian(adapted, theta), identity)
    # the values are still those of the real inner loop
    torch.testing.assert_close(
        adapted(theta), flatten(inner_loop(loss_fn, params, xs, ys, momentum(0.1), 3))
    )


@pytest.mark.parametrize("opt", ["sgd", "momentum"])
def test_partial_adaptation_second_order_meta_gradient_matches_finite_differences(opt):
    """Adapting only ``v`` (an ANIL-style head): ``W`` stays fixed in the loop, yet its
    meta-gradient includes how ``W`` changes the inner gradients of ``v``."""
    params, xs, ys, xq, yq = make_problem(3)
    optimizer = sgd(0.3) if opt == "sgd" else momentum(0.3, 0.5)

    def meta(flat):
        p = unflatten(flat)
        adapted = inner_loop(loss_fn, p, xs, ys, optimizer, 3, adapt=["v"])
        assert adapted["W"] is p["W"]
        return loss_fn(adapted, xq, yq)

    theta = flatten(params).requires_grad_()
    (got,) = torch.autograd.grad(meta(theta), theta)
    numeric = finite_difference(meta, theta.detach())
    assert float((got - numeric).norm() / numeric.norm()) < 1e-6


def test_partial_adaptation_first_order_treats_inner_gradients_as_constants():
    """First order with ``adapt=["v"]``: ``v' = v - alpha g`` with ``g`` constant, so
    ``dL_q/dW`` is the partial derivative at ``(W, v')`` and ``dL_q/dv`` the query gradient
    at ``v'``."""
    params, xs, ys, xq, yq = make_problem(4)
    alpha = 0.3
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    adapted = inner_loop(loss_fn, p, xs, ys, sgd(alpha), 1, mode="first_order", adapt=["v"])
    got = torch.autograd.grad(loss_fn(adapted, xq, yq), [p["W"], p["v"]])

    g_v = torch.func.grad(loss_fn)(params, xs, ys)["v"]
    v_new = params["v"] - alpha * g_v
    expected = torch.func.grad(loss_fn)({"W": params["W"], "v": v_new}, xq, yq)
    torch.testing.assert_close(got[0], expected["W"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[1], expected["v"], rtol=1e-12, atol=1e-14)


def test_unknown_gradient_mode_raises():
    params, xs, ys, _, _ = make_problem()
    with pytest.raises(ValueError, match="unknown gradient mode 'third_order'"):
        inner_loop(loss_fn, params, xs, ys, sgd(0.1), 1, mode="third_order")


def test_name_filter_prefixes_name_whole_submodules():
    """``"layers.1"`` must not pick ``layers.10``: a prefix names a submodule or parameter."""
    model = nn.Module()
    model.layers = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])
    model.head = nn.Linear(2, 1)
    assert name_filter(model, "layers.1") == ["layers.1.weight", "layers.1.bias"]
    assert name_filter(model, "layers.1.") == ["layers.1.weight", "layers.1.bias"]
    assert name_filter(model, "head.weight") == ["head.weight"]
    assert name_filter(model, ["head", "layers.0"]) == [
        "layers.0.weight",
        "layers.0.bias",
        "head.weight",
        "head.bias",
    ]
    assert name_filter(model, lambda n: n.endswith("bias"))[-1] == "head.bias"
    assert len(name_filter(model, None)) == 24
    with pytest.raises(ValueError, match="no parameter matches 'hea'"):
        name_filter(model, "hea")


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("mode", ["second_order", "first_order"])
@pytest.mark.parametrize("adapt", [None, ["v"]])
def test_autograd_backend_gives_the_func_backend_meta_gradient(opt, mode, adapt):
    """``backend="autograd"`` (the loop engine's fast path) differentiates exactly like
    ``torch.func.grad``; second order also checked against finite differences."""
    from metaloop.functional import adam

    params, xs, ys, xq, yq = make_problem(5)
    make = {"sgd": lambda: sgd(0.2), "momentum": lambda: momentum(0.2, 0.6)}
    make["adam"] = lambda: adam(0.05)

    def meta(flat, backend):
        adapted = inner_loop(
            loss_fn, unflatten(flat), xs, ys, make[opt](), 3, mode, adapt, backend=backend
        )
        return loss_fn(adapted, xq, yq)

    theta = flatten(params).requires_grad_()
    (via_func,) = torch.autograd.grad(meta(theta, "func"), theta)
    (via_autograd,) = torch.autograd.grad(meta(theta, "autograd"), theta)
    torch.testing.assert_close(via_autograd, via_func, rtol=1e-12, atol=1e-14)
    if mode == "second_order":
        numeric = finite_difference(lambda f: meta(f, "autograd"), theta.detach())
        assert float((via_autograd - numeric).norm() / numeric.norm()) < 1e-6
    with pytest.raises(ValueError, match="backend must be 'func' or 'autograd'"):
        inner_loop(loss_fn, params, xs, ys, sgd(0.1), 1, backend="jax")
