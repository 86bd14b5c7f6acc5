"""Inner-loop overfitting curves against hand-iterated gradient descent on linear regression."""

from __future__ import annotations

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.diagnostics import inner_curve
from metaloop.models import MLP
from metaloop.tasks import LinearRegression

torch.set_num_threads(1)
F64 = torch.float64


def _closed_form_curve(batch, alpha, steps):
    """Query MSE of ``theta_{k+1} = theta_k - alpha (A_s theta_k - b_s)`` from 0, per step."""
    xs, ys = batch.support_x, batch.support_y.squeeze(-1)
    xq, yq = batch.query_x, batch.query_y.squeeze(-1)
    s = xs.shape[1]
    a = 2 / s * xs.transpose(1, 2) @ xs
    b = 2 / s * (xs.transpose(1, 2) @ ys.unsqueeze(-1)).squeeze(-1)
    theta = torch.zeros(len(batch), xs.shape[-1], dtype=F64)
    out = []
    for _ in range(steps + 1):
        out.append(float(((torch.einsum("tnd,td->tn", xq, theta) - yq) ** 2).mean()))
        theta = theta - alpha * ((a @ theta.unsqueeze(-1)).squeeze(-1) - b)
    return out


def test_curves_match_hand_iterated_descent_and_show_the_u():
    family = LinearRegression(dim=8, shots=10, queries=50, w_std=1.0, noise_std=2.0, dtype=F64)
    batch = family.sample(32, torch.Generator().manual_seed(0))
    model = MLP(8, 1, hidden=(), bias=False).double()
    torch.nn.init.zeros_(next(model.parameters()))
    learner = MAML(model, inner_lr=0.01)
    curves = inner_curve.inner_step_curves(learner, batch, 60, inner_lrs=(0.02, 0.1))
    assert learner.inner_lr == 0.01  # untouched
    for alpha, curve in curves.items():
        assert curve.query_loss == pytest.approx(_closed_form_curve(batch, alpha, 60), rel=1e-9)
    fast = inner_curve.overfitting_summary(curves[0.1])
    slow = inner_curve.overfitting_summary(curves[0.02])
    # the larger rate reaches the bottom of the U sooner and climbs back out of it
    assert 0 < fast.best_step < 60 and fast.rise > 1.1 and fast.support_fell
    assert fast.best_step < slow.best_step
    with pytest.raises(ValueError, match="inner_lrs"):
        inner_curve.inner_step_curves(learner, batch, 5, inner_lrs=(0.1, -1.0))
