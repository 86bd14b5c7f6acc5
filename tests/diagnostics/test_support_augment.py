"""Inner-loop support augmentation: exact effect of duplicating points and of jitter."""

from __future__ import annotations

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.models import MLP
from metaloop.tasks import LinearRegression
from metaloop.tasks.augment import SupportJitter

torch.set_num_threads(1)
F64 = torch.float64


def _learner(**kwargs) -> MAML:
    model = MLP(3, 1, hidden=(), bias=False).double()
    torch.nn.init.constant_(next(model.parameters()), 0.2)
    return MAML(model, inner_lr=0.1, inner_steps=2, **kwargs)


def test_duplicated_support_changes_nothing_and_zero_jitter_is_duplication():
    """A mean-reduced loss over a support set and its exact copy is the same loss, so the
    meta-loss, its gradient and the evaluation curve are unchanged."""
    batch = LinearRegression(dim=3, shots=4, queries=5, noise_std=0.5, dtype=F64).sample(
        6, torch.Generator().manual_seed(0)
    )
    grads, curves = [], []
    for learner in (_learner(), _learner(support_transform=SupportJitter(0.0, copies=2))):
        loss, _ = learner.meta_loss(batch)
        grads.append(torch.autograd.grad(loss, next(learner.parameters()))[0])
        curves.append(learner.evaluate_batch(batch, (0, 1, 5))[5]["loss"])
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(curves[1], curves[0])


def test_jitter_acts_like_ridge_on_the_inner_step():
    """One inner step of a bias-free linear model on ``x + e`` copies: in expectation the
    support gradient gains ``2 std^2 w`` per noisy share (``E[(x+e)(x+e)^T] = x x^T + std^2 I``),
    so with many copies the adapted weights approach the ridge step."""
    torch.manual_seed(0)
    batch = LinearRegression(dim=3, shots=4, queries=5, dtype=F64).sample(
        1, torch.Generator().manual_seed(1)
    )
    std, copies = 0.5, 4000
    learner = _learner(support_transform=SupportJitter(std, copies=copies))
    w = torch.full((3,), 0.2, dtype=F64)
    x, y = batch.support_x[0], batch.support_y[0].squeeze(-1)
    grad = 2 / 4 * x.T @ (x @ w - y) + 2 * std**2 * w * copies / (copies + 1)
    expected = w - 0.1 * grad
    task = batch[0]
    predicted = learner.adapt(task, steps=1)(torch.eye(3, dtype=F64)).squeeze(-1)
    torch.testing.assert_close(predicted, expected, rtol=0, atol=3e-3)
    with pytest.raises(ValueError, match="copies"):
        SupportJitter(0.1, copies=0)
    with pytest.raises(ValueError, match="support_transform must be callable"):
        _learner(support_transform=3)
