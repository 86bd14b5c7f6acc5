"""Conditional Neural Process: the equations (mean and attention aggregation) against a
hand computation, order invariance, the likelihood against torch.distributions, the
meta-gradient against central differences, learning on sinusoids and rotating boundaries,
and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaloop.algorithms import ConditionalNeuralProcess
from metaloop.algorithms.cnp import gaussian_nll
from metaloop.evaluation import evaluate
from metaloop.tasks import RotatingBoundary, Sinusoid
from metaloop.tasks.base import TaskError
from metaloop.train import Trainer

torch.set_num_threads(1)


def cnp(seed: int = 0, **kwargs) -> ConditionalNeuralProcess:
    torch.manual_seed(seed)
    options = {"representation": 8, "hidden": (16,), **kwargs}
    return ConditionalNeuralProcess(nn.Identity(), x_dim=1, y_dim=1, **options)


def test_prediction_is_the_decoded_mean_representation():
    learner = cnp(likelihood="deterministic")
    batch = Sinusoid(shots=5, queries=7).sample(3, torch.Generator().manual_seed(1))
    for t in range(3):
        xs, ys, xq = batch.support_x[t], batch.support_y[t], batch.query_x[t]
        r = torch.stack([learner.context_net(torch.cat([x, y])) for x, y in zip(xs, ys)]).mean(0)
        expected = torch.stack([learner.decoder(torch.cat([x, r])) for x in xq])
        got = learner.adapt((xs, ys))(xq)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_attention_reads_a_weighted_sum_per_query():
    learner = cnp(aggregation="attention", likelihood="deterministic")
    task = Sinusoid(shots=6, queries=4).sample(1, torch.Generator().manual_seed(9))[0]
    xs, ys, xq = task.support_x, task.support_y, task.query_x
    encoded = torch.stack([learner.context_net(torch.cat([x, y])) for x, y in zip(xs, ys)])
    expected = []
    for x in xq:
        scores = torch.stack([learner.query_key(x) @ learner.support_key(s) for s in xs])
        weights = torch.softmax(scores / 8**0.5, 0)  # representation = 8
        r = (weights[:, None] * encoded).sum(0)
        expected.append(learner.decoder(torch.cat([x, r])))
    got = learner.adapt((xs, ys))(xq)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["mean", "attention"])
def test_order_of_the_support_set_does_not_matter(aggregation):
    learner = cnp(aggregation=aggregation)
    task = Sinusoid(shots=10, queries=5).sample(1, torch.Generator().manual_seed(2))[0]
    xs, ys = task.support
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    a = learner.adapt((xs, ys))(task.query_x)
    b = learner.adapt((xs[order], ys[order]))(task.query_x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and any support size works: the mean is defined for one point as for ten
    assert learner.adapt((xs[:1], ys[:1]))(task.query_x).shape == (5, 1)


def test_gaussian_nll_against_torch_distributions():
    g = torch.Generator().manual_seed(4)
    mu, y = torch.randn(3, 6, 2, generator=g), torch.randn(3, 6, 2, generator=g)
    sigma = torch.rand(3, 6, 2, generator=g) + 0.1
    reference = -torch.distributions.Normal(mu, sigma).log_prob(y).sum(-1).mean()
    torch.testing.assert_close(gaussian_nll(mu, sigma, y), reference)


def test_batch_evaluation_matches_adapt_task_by_task():
    learner = cnp()
    batch = Sinusoid(shots=5, queries=4).sample(4, torch.Generator().manual_seed(5))
    metrics = learner.evaluate_batch(batch, steps=(0, 3))
    assert set(metrics) == {0, 3}
    per_task = torch.stack(
        [F.mse_loss(learner.adapt(task.support)(task.query_x), task.query_y) for task in batch]
    )
    torch.testing.assert_close(metrics[0]["loss"], per_task)


@pytest.mark.parametrize(
    ("likelihood", "support_in_loss", "aggregation"),
    [
        ("gaussian", True, "mean"),
        ("gaussian", False, "mean"),
        ("deterministic", True, "mean"),
        ("gaussian", True, "attention"),
    ],
)
def test_meta_gradient_against_central_differences(
    likelihood, support_in_loss, aggregation, numeric_gradient
):
    learner = cnp(
        likelihood=likelihood, support_in_loss=support_in_loss, aggregation=aggregation
    ).double()
    batch = Sinusoid(shots=3, queries=2, dtype=torch.float64).sample(
        2, torch.Generator().manual_seed(6)
    )
    params = list(learner.parameters())
    loss, metrics = learner.meta_loss(batch)
    analytic = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)
    assert metrics["loss"] == pytest.approx(loss.item())


def test_learns_sinusoids_from_the_support_set():
    learner = cnp(representation=64, hidden=(64, 64))
    optimizer = torch.optim.Adam(learner.parameters(), 3e-3)
    trainer = Trainer(learner, optimizer, meta_batch_size=16, progress=False)
    test = Sinusoid(shots=10, queries=10)
    before = evaluate(learner, test, episodes=100, seed=0)[0]["loss"].mean
    trainer.fit(Sinusoid(shots=10, queries=10), iterations=1000)
    after = evaluate(learner, test, episodes=100, seed=0)[0]["loss"].mean
    # zero everywhere scores E[A^2] / 2 = 4.2 on these tasks; the task-blind optimum too
    assert after < 1.0 < before


def test_classification_reads_labels_from_the_support_set():
    torch.manual_seed(0)
    learner = ConditionalNeuralProcess(
        nn.Identity(), x_dim=2, y_dim=2, representation=32, hidden=(32, 32), loss="cross_entropy"
    )
    assert learner.likelihood == "deterministic"
    # boundaries at any angle: the label of a point is only known from the support set
    family = RotatingBoundary(shots=10, queries=20, angle_mean=0.0, angle_std=180.0)
    optimizer = torch.optim.Adam(learner.parameters(), 3e-3)
    trainer = Trainer(learner, optimizer, meta_batch_size=16, progress=False)
    trainer.fit(family, iterations=800)
    accuracy = evaluate(learner, family, episodes=200, seed=0)[0]["accuracy"].mean
    assert accuracy > 0.8  # chance: 0.5


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="x_dim must be a positive integer"):
        ConditionalNeuralProcess(nn.Identity(), x_dim=0, y_dim=1)
    with pytest.raises(ValueError, match="likelihood must be 'gaussian' or 'deterministic'"):
        ConditionalNeuralProcess(nn.Identity(), x_dim=1, y_dim=1, likelihood="laplace")
    with pytest.raises(ValueError, match="aggregation must be 'mean' or 'attention'"):
        ConditionalNeuralProcess(nn.Identity(), x_dim=1, y_dim=1, aggregation="max")
    with pytest.raises(ValueError, match=r"min_std must lie in \(0, 1\)"):
        ConditionalNeuralProcess(nn.Identity(), x_dim=1, y_dim=1, min_std=1.5)
    batch = Sinusoid(shots=3, queries=2).sample(2, torch.Generator().manual_seed(7))
    with pytest.raises(TaskError, match=r"the encoder gives 1 features per input .* x_dim=3"):
        ConditionalNeuralProcess(nn.Identity(), x_dim=3, y_dim=1).meta_loss(batch)
    with pytest.raises(TaskError, match=r"targets have 1 dimensions .* y_dim=2"):
        ConditionalNeuralProcess(nn.Identity(), x_dim=1, y_dim=2).meta_loss(batch)
    classifier = ConditionalNeuralProcess(nn.Identity(), x_dim=2, y_dim=2, loss="cross_entropy")
    task = RotatingBoundary(shots=3, queries=2).sample(1, torch.Generator().manual_seed(8))[0]
    with pytest.raises(TaskError, match=r"labels must lie in 0\.\.1"):
        classifier.adapt((task.support_x, task.support_y + 2))
