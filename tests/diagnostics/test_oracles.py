"""The analytic oracles against independent computations and against trained learners."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.algorithms import MAML, MetaSGD
from metaloop.diagnostics import oracles
from metaloop.models import MLP
from metaloop.tasks import GaussianMean, LinearRegression, Quadratic

torch.set_num_threads(1)
F64 = torch.float64


def test_linear_regression_optimum_is_stationary_for_the_learner():
    """The closed form zeroes the real learner's meta-gradient and beats nearby points."""
    family = LinearRegression(dim=3, shots=4, queries=6, w_mean=1.5, noise_std=0.1, dtype=F64)
    batch = family.sample(8, torch.Generator().manual_seed(5))
    alpha = 0.15
    theta = oracles.maml_linear_regression_optimum(batch, alpha)
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(theta.reshape(1, -1))
    learner = MAML(model, inner_lr=alpha)
    loss, _ = learner.meta_loss(batch)
    (g,) = torch.autograd.grad(loss, model.weight)
    assert float(g.norm()) < 1e-10
    with torch.no_grad():
        model.weight.add_(0.05)
    assert float(learner.meta_loss(batch)[0].detach()) > float(loss.detach()) + 1e-6
    # alpha = 0: plain least squares on the query sets
    x, y = batch.query_x.reshape(-1, 3), batch.query_y.reshape(-1, 1)
    ols = torch.linalg.lstsq(x, y).solution.reshape(-1)
    torch.testing.assert_close(oracles.maml_linear_regression_optimum(batch, 0.0), ols)


def test_trained_maml_reaches_the_linear_regression_optimum():
    family = LinearRegression(dim=2, shots=5, queries=5, w_mean=1.0, noise_std=0.2, dtype=F64)
    batch = family.sample(16, torch.Generator().manual_seed(1))
    model = MLP(2, 1, hidden=(), bias=False).double()
    learner = MAML(model, inner_lr=0.1)
    outer = torch.optim.LBFGS(learner.parameters(), max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        outer.zero_grad()
        loss, _ = learner.meta_loss(batch)
        loss.backward()
        return loss

    outer.step(closure)
    expected = oracles.maml_linear_regression_optimum(batch, 0.1)
    learned = next(model.parameters()).detach().reshape(-1)
    torch.testing.assert_close(learned, expected, rtol=1e-6, atol=1e-7)


def test_quadratic_weights_and_optimum():
    h, opt, p = [0.5, 2.0, 3.5], [1.0, -2.0, 0.5], [0.5, 0.25, 0.25]
    w = oracles.quadratic_task_weights(h, 0.4, p)
    raw = torch.tensor([0.5 * 0.8**2, 0.25 * 0.2**2, 0.25 * 0.4**2], dtype=F64)
    torch.testing.assert_close(w, raw / raw.sum())
    theta = oracles.maml_quadratic_optimum(h, opt, 0.4, p)
    assert theta == pytest.approx(float((raw * torch.tensor(opt, dtype=F64)).sum() / raw.sum()))
    # differs from the plain mean of the optima, and alpha = 0 gives the plain mean
    assert abs(theta - sum(pi * o for pi, o in zip(p, opt))) > 0.1
    assert oracles.maml_quadratic_optimum(h, opt, 0.0, p) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="every task is solved"):
        oracles.quadratic_task_weights([2.0], 0.5)


def test_trained_maml_on_quadratics_reaches_the_weighted_mean():
    h, opt, p = [0.5, 2.0, 3.5], [1.0, -2.0, 0.5], [0.5, 0.25, 0.25]
    family = Quadratic(curvatures=h, optima=opt, probs=p, dtype=F64)
    batch = family.make_batch(torch.tensor([0.5, 0.5, 2.0, 3.5]), torch.tensor([1.0, 1, -2, 0.5]))
    model = MLP(1, 1, hidden=(), bias=False).double()
    learner = MAML(model, inner_lr=0.4)
    outer = torch.optim.SGD(learner.parameters(), lr=2.0)
    for _ in range(60):
        outer.zero_grad()
        learner.meta_loss(batch)[0].backward()
        outer.step()
    result = oracles.compare_with_oracle(model, family, 0.4)
    assert result.distance < 1e-10
    assert result.oracle[0] == pytest.approx(oracles.maml_quadratic_optimum(h, opt, 0.4, p))


def test_gaussian_mean_one_step_from_prior_is_the_posterior_mean():
    """At the stated rate ``alpha = D w / 2`` (mean-reduced MSE) the learner's one inner step
    from the prior mean lands exactly on the posterior mean; at ``w / S`` (the rate a
    sum-reduced loss would need) it does not."""
    family = GaussianMean(dim=3, shots=4, queries=5, prior_mean=0.7, prior_std=1.3, dtype=F64)
    batch = family.sample(6, torch.Generator().manual_seed(2))
    w = oracles.gaussian_mean_shrinkage(family)
    assert w == pytest.approx(4 * 1.69 / (4 * 1.69 + 1.0))
    alpha = oracles.gaussian_mean_map_inner_lr(family)
    assert alpha == pytest.approx(3 * w / 2)
    posterior = oracles.gaussian_mean_posterior(family, batch)
    # independent: precision-weighted combination of prior and data
    prec = 1 / 1.3**2 + 4 / 1.0
    expected = (0.7 / 1.3**2 + batch.support_y.sum(1) / 1.0) / prec
    torch.testing.assert_close(posterior, expected)

    def one_step(rate):
        model = MLP(1, 3, hidden=(), bias=False).double()
        with torch.no_grad():
            next(model.parameters()).fill_(0.7)
        learner = MAML(model, inner_lr=rate)
        return torch.stack([learner.adapt(t, steps=1)(t.support_x[:1])[0] for t in batch])

    torch.testing.assert_close(one_step(alpha), posterior)
    assert float((one_step(w / 4) - posterior).abs().max()) > 1e-2


def test_meta_sgd_learns_the_map_rate_on_gaussian_means():
    """Meta-learning the rate (Meta-SGD, one scalar per entry) on many tasks recovers the MAP
    rate, the minimiser of the expected query MSE (closed form checked too)."""
    family = GaussianMean(dim=1, shots=3, queries=30, prior_mean=0.0, prior_std=1.0, noise_std=1.0)
    alpha_map = oracles.gaussian_mean_map_inner_lr(family)  # = 0.375
    grid = torch.linspace(0.05, 0.8, 301).tolist()
    best = min(grid, key=lambda a: oracles.gaussian_mean_expected_query_mse(family, a))
    assert best == pytest.approx(alpha_map, abs=0.003)
    torch.manual_seed(0)
    model = MLP(1, 1, hidden=(), bias=False)
    learner = MetaSGD(model, inner_lr=0.1)
    outer = torch.optim.Adam(learner.parameters(), lr=0.03)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        outer.zero_grad()
        learner.meta_loss(family.sample(200, gen))[0].backward()
        outer.step()
    rates = learner.lrs()  # the learned rates, name -> tensor
    rate = float(next(iter(rates.values())).detach().reshape(-1)[0])
    assert rate == pytest.approx(alpha_map, rel=0.15)
    assert abs(float(next(model.parameters()))) < 0.1  # theta_0 at the prior mean


def test_compare_with_oracle_rejects_other_models_and_families():
    with pytest.raises(ValueError, match="bias-free linear model"):
        oracles.compare_with_oracle(MLP(1, 1, hidden=(4,)), GaussianMean(), 0.1)
    with pytest.raises(ValueError, match="analytic oracles exist"):
        oracles.compare_with_oracle(MLP(1, 1, hidden=(), bias=False), object(), 0.1)
    with pytest.raises(ValueError, match="inner_lr"):
        oracles.maml_quadratic_optimum([1.0], [1.0], -0.1)
