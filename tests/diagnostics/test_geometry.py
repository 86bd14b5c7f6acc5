"""Geometry of the initialisation against closed forms on linear models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.algorithms import MAML
from metaloop.diagnostics import geometry
from metaloop.models import MLP
from metaloop.tasks import LinearRegression

torch.set_num_threads(1)
F64 = torch.float64


def _linear_learner(dim: int, theta0: torch.Tensor) -> MAML:
    model = MLP(dim, 1, hidden=(), bias=False).double()
    with torch.no_grad():
        next(model.parameters()).copy_(theta0.reshape(1, -1))
    return MAML(model, inner_lr=0.1)


def test_alignment_matches_the_closed_form_on_linear_regression():
    """Noise-free: ``-grad L_s(theta_0) = A_s (w - theta_0)`` with ``A_s = (2/S) X^T X``, so the
    cosine is ``d^T A d / (|A d| |d|)`` for ``d = w - theta_0``; many shots make ``A ~ 2I``."""
    family = LinearRegression(dim=4, shots=3, queries=3, dtype=F64)
    batch = family.sample(5, torch.Generator().manual_seed(0))
    theta0 = torch.tensor([0.5, -0.2, 0.1, 0.3], dtype=F64)
    learner = _linear_learner(4, theta0)
    result = geometry.gradient_alignment(learner, batch, batch.info["weights"])
    for task, w, cos in zip(batch, batch.info["weights"], result.cosines):
        a = 2 / 3 * task.support_x.T @ task.support_x
        d = w - theta0
        assert cos == pytest.approx(float(d @ a @ d / ((a @ d).norm() * d.norm())), rel=1e-10)
    many = LinearRegression(dim=4, shots=2000, queries=3, dtype=F64)
    big = many.sample(3, torch.Generator().manual_seed(1))
    assert geometry.gradient_alignment(learner, big, big.info["weights"]).mean > 0.99
    # with 3 shots in 4 dimensions the step misses part of the direction
    assert result.mean < 0.95


def test_default_optima_by_descent_recover_the_true_weights():
    family = LinearRegression(dim=2, shots=6, queries=6, dtype=F64)
    batch = family.sample(3, torch.Generator().manual_seed(2))
    learner = _linear_learner(2, torch.zeros(2, dtype=F64))
    optima = geometry.task_optima(learner, batch, steps=40, inner_lr=0.3)
    torch.testing.assert_close(optima, batch.info["weights"], rtol=1e-4, atol=1e-4)


def test_dead_relu_units_counts_constructed_dead_units():
    torch.manual_seed(0)
    model = MLP(2, 1, hidden=(6, 4))
    with torch.no_grad():
        first = model.layers[0]
        first.weight[:2] = 0.0
        first.bias[:2] = -1.0  # units 0 and 1 of layer 1 output 0 for every input
        first.bias[2:] = 50.0  # the others are on for inputs in [-1, 1]
        model.layers[2].weight.fill_(-1.0)
        model.layers[2].bias[:1] = 1000.0  # second layer: only unit 0 alive
    x = torch.rand(64, 2) * 2 - 1
    dead = geometry.dead_relu_units(model, x)
    assert dead.per_layer == [2 / 6, 3 / 4]
    assert (dead.dead, dead.units) == (5, 10) and dead.fraction == 0.5
    with pytest.raises(ValueError, match=r"no nn\.ReLU"):
        geometry.dead_relu_units(nn.Linear(2, 1), x)


def test_subspace_distance_is_zero_on_the_subspace_and_the_orthogonal_part_off_it():
    family = LinearRegression(dim=5, subspace_dim=2, w_mean=0.5, dtype=F64)
    batch = family.sample(50, torch.Generator().manual_seed(3))
    on = family.w_mean + family.basis @ torch.tensor([0.3, -1.0], dtype=F64)
    assert geometry.subspace_distance(on, family, batch).to_subspace < 1e-12
    normal = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(4))
    normal -= family.basis @ (family.basis.T @ normal)
    off = family.w_mean + 0.7 * normal / normal.norm()
    result = geometry.subspace_distance(off, family, batch)
    assert result.to_subspace == pytest.approx(0.7)
    assert result.to_center == pytest.approx(0.7)
    assert result.to_optima > result.to_subspace
