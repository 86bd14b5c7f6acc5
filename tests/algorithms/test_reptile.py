"""Reptile against a hand-written SGD loop: the gradient of its surrogate is
``(1/T) sum_i (theta - theta'_i)``, the paper's meta-update direction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.algorithms import Reptile
from metaloop.models import MLP
from metaloop.tasks import Sinusoid

torch.set_num_threads(1)


def hand_sgd(model: nn.Module, x, y, lr: float, steps: int) -> list[torch.Tensor]:
    """``steps`` plain SGD steps on MSE from the module's parameters, with torch.autograd."""
    names = [n for n, _ in model.named_parameters()]
    fast = [p.detach().clone().requires_grad_() for p in model.parameters()]
    for _ in range(steps):
        pred = torch.func.functional_call(model, dict(zip(names, fast)), (x,))
        grads = torch.autograd.grad(nn.functional.mse_loss(pred, y), fast)
        fast = [(f - lr * g).detach().requires_grad_() for f, g in zip(fast, grads)]
    return [f.detach() for f in fast]


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = MLP(1, 1, hidden=(8, 8)).double()
    batch = Sinusoid(shots=5, queries=6, dtype=torch.float64).sample(
        4, torch.Generator().manual_seed(seed)
    )
    return model, batch


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("use_query", [True, False])
def test_reptile_gradient_is_mean_of_theta_minus_adapted(steps, use_query):
    model, batch = setup(steps)
    lr = 0.02
    learner = Reptile(model, inner_lr=lr, inner_steps=steps, use_query=use_query)
    surrogate, metrics = learner.meta_loss(batch)
    params = list(model.parameters())
    grads = torch.autograd.grad(surrogate, params)

    expected = [torch.zeros_like(p) for p in params]
    expected_surrogate = 0.0
    for task in batch:
        x = torch.cat([task.support_x, task.query_x]) if use_query else task.support_x
        y = torch.cat([task.support_y, task.query_y]) if use_query else task.support_y
        adapted = hand_sgd(model, x, y, lr, steps)
        for e, p, a in zip(expected, params, adapted):
            e += (p.detach() - a) / len(batch)
            expected_surrogate += 0.5 * float(((p.detach() - a) ** 2).sum()) / len(batch)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14)
    assert float(surrogate.detach()) == pytest.approx(expected_surrogate, rel=1e-10)
    assert metrics["loss"] == pytest.approx(expected_surrogate, rel=1e-10)
    assert "query_loss_trained_on" in metrics


def test_reptile_outer_sgd_step_is_paper_update():
    """One outer SGD step with rate ``epsilon`` on the surrogate is
    ``theta <- theta + epsilon (1/T) sum_i (theta'_i - theta)``."""
    model, batch = setup(5)
    eps, lr, steps = 0.5, 0.05, 2
    before = [p.detach().clone() for p in model.parameters()]
    targets = [
        hand_sgd(
            model,
            torch.cat([t.support_x, t.query_x]),
            torch.cat([t.support_y, t.query_y]),
            lr,
            steps,
        )
        for t in batch
    ]
    learner = Reptile(model, inner_lr=lr, inner_steps=steps)
    outer = torch.optim.SGD(learner.parameters(), lr=eps)
    loss, _ = learner.meta_loss(batch)
    outer.zero_grad()
    loss.backward()
    outer.step()
    for j, (b, p) in enumerate(zip(before, model.parameters())):
        mean_target = sum(t[j] for t in targets) / len(targets)
        torch.testing.assert_close(p.detach(), b + eps * (mean_target - b), rtol=1e-10, atol=1e-14)


def test_reptile_adapting_only_the_head_moves_only_the_head():
    model, batch = setup(7)
    learner = Reptile(model, inner_lr=0.05, inner_steps=2, adapt="layers.4")
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("layers.4"):
            assert p.grad is not None and float(p.grad.abs().max()) > 0
        else:
            assert p.grad is None or float(p.grad.abs().max()) == 0
