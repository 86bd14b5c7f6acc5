import torch

import metaloop as ml
from metaloop import diagnostics as dg


def _learner(seed=0, **kw):
    torch.manual_seed(seed)
    return ml.MAML(ml.models.MLP(1, 1, hidden=(16, 16)), inner_lr=0.01, inner_steps=1, **kw)


def test_adaptation_curve_support_loss_falls():
    learner = _learner()
    batch = ml.tasks.Sinusoid(shots=10, queries=10).sample(8, torch.Generator().manual_seed(0))
    curve = dg.adaptation_curve(learner, batch, max_steps=20)
    assert curve.steps == list(range(21))
    # plain gradient descent on the support set with a small step must lower its loss
    assert curve.support_loss[-1] < curve.support_loss[0]
    assert curve.best_query_step in curve.steps


def test_order_gap_is_zero_for_linear_model_with_zero_hessian_term():
    # For a bias-free linear model on MSE, H is constant; with alpha=0 the two orders coincide.
    torch.manual_seed(0)
    learner = ml.MAML(ml.models.MLP(1, 1, hidden=(8,)), inner_lr=1e-12, inner_steps=1)
    batch = ml.tasks.Sinusoid().sample(4, torch.Generator().manual_seed(1))
    gap = dg.first_second_order_gap(learner, batch)
    assert gap.cosine > 1 - 1e-6 and gap.relative_difference < 1e-5
    learner.inner_lr = 0.5
    assert dg.first_second_order_gap(learner, batch).relative_difference > 1e-3
    assert learner.first_order is False  # restored


def test_meta_gradient_variance_shrinks_with_batch_size():
    learner = _learner()
    family = ml.tasks.Sinusoid()
    small = dg.meta_gradient_stats(learner, family, meta_batch_size=2, batches=12)
    large = dg.meta_gradient_stats(learner, family, meta_batch_size=32, batches=12)
    # variance of a mean of n i.i.d. task gradients scales like 1/n
    assert large.variance < small.variance / 4


def test_linear_regression_oracle_beats_least_squares_and_zero():
    family = ml.tasks.LinearRegression(dim=4, shots=3, queries=50, w_std=1.0, noise_std=0.1)
    batch = family.sample(200, torch.Generator().manual_seed(0))
    oracle = dg.linear_regression_oracle(family, batch).mean()
    zero = (batch.query_y.double() ** 2).mean()
    assert oracle < zero  # the posterior mean must beat the prior-mean predictor
    exact = ml.tasks.LinearRegression(dim=3, shots=5, queries=10, noise_std=0.0)
    b2 = exact.sample(10, torch.Generator().manual_seed(1))
    assert dg.linear_regression_oracle(exact, b2).max() < 1e-8  # enough points: exact


def test_leave_one_task_out_runs_and_reports_gap():
    batch = ml.tasks.Sinusoid(shots=5, queries=5).sample(4, torch.Generator().manual_seed(0))
    result = dg.leave_one_task_out(lambda: _learner(), batch, iterations=20, max_folds=2)
    assert len(result.per_task) == 2
    assert result.held_out_loss > 0 and result.train_loss > 0
