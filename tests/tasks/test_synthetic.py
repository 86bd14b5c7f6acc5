"""Synthetic task families: shapes, seeding, ranges, the structure each family promises
(subspace, quadratic encoding, decision boundary), argument checks, and ``validate_batch``."""

from __future__ import annotations

import math

import pytest
import torch

from metaloop.tasks import (
    BernoulliBandit,
    GaussianMean,
    LinearRegression,
    Quadratic,
    RotatingBoundary,
    Sinusoid,
    Task,
    TaskBatch,
    TaskError,
    TaskFamily,
    validate_batch,
)

FAMILIES = {
    "sinusoid": lambda: Sinusoid(shots=4, queries=6),
    "linear": lambda: LinearRegression(dim=3, shots=4, queries=6, noise_std=0.1),
    "linear_subspace": lambda: LinearRegression(dim=5, shots=4, queries=6, subspace_dim=2),
    "quadratic": lambda: Quadratic(),
    "quadratic_finite": lambda: Quadratic(curvatures=[1.0, 2.0], optima=[0.5, -1.0]),
    "gaussian_mean": lambda: GaussianMean(dim=2, shots=4, queries=6),
    "rotating": lambda: RotatingBoundary(shots=4, queries=6),
    "bandit": lambda: BernoulliBandit(arms=3, shots=4, queries=6),
}
# (feature shape, target shape, target dtype is float)
SHAPES = {
    "sinusoid": ((1,), (1,), True),
    "linear": ((3,), (1,), True),
    "linear_subspace": ((5,), (1,), True),
    "quadratic": ((1,), (1,), True),
    "quadratic_finite": ((1,), (1,), True),
    "gaussian_mean": ((1,), (2,), True),
    "rotating": ((2,), (), False),
    "bandit": ((3,), (1,), True),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", FAMILIES)
def test_shapes_protocol_and_validity(name):
    family = FAMILIES[name]()
    assert isinstance(family, TaskFamily)
    batch = family.sample(7, gen(0))
    feature, target, is_float = SHAPES[name]
    s, q = family.shots, family.queries
    assert batch.support_x.shape == (7, s, *feature)
    assert batch.query_x.shape == (7, q, *feature)
    assert batch.support_y.shape == (7, s, *target)
    assert batch.query_y.shape == (7, q, *target)
    assert batch.support_y.is_floating_point() == is_float
    assert len(batch) == batch.num_tasks == 7
    validate_batch(batch)


@pytest.mark.parametrize("name", FAMILIES)
def test_same_generator_state_same_batch_different_state_different_batch(name):
    family = FAMILIES[name]()
    a, b, c = family.sample(5, gen(1)), family.sample(5, gen(1)), family.sample(5, gen(2))
    for field in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert any(
        not torch.equal(getattr(a, f), getattr(c, f))
        for f in ("support_x", "support_y", "query_x", "query_y")
    )
    # consecutive draws from one generator differ too
    g = gen(3)
    first, second = family.sample(5, g), family.sample(5, g)
    assert not torch.equal(
        torch.cat([first.support_y.float().flatten(), first.query_x.flatten()]),
        torch.cat([second.support_y.float().flatten(), second.query_x.flatten()]),
    )
    # and the global RNG plays no part
    torch.manual_seed(0)
    d = family.sample(5, gen(1))
    torch.manual_seed(99)
    e = family.sample(5, gen(1))
    assert torch.equal(d.query_y, e.query_y)


def test_sinusoid_ranges_and_formula():
    family = Sinusoid(
        shots=10, queries=10, amplitude=(0.5, 2.0), phase=(0.2, 1.0), x_range=(-2.0, 3.0)
    )
    batch = family.sample(500, gen(4))
    amp, phase = batch.info["amplitude"], batch.info["phase"]
    assert amp.min() >= 0.5 and amp.max() <= 2.0
    assert phase.min() >= 0.2 and phase.max() <= 1.0
    # the draws spread over the ranges (not a constant)
    assert amp.max() - amp.min() > 1.2 and phase.max() - phase.min() > 0.6
    for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        assert x.min() >= -2.0 and x.max() <= 3.0
        torch.testing.assert_close(y, amp * torch.sin(x - phase))
        assert (y.abs() <= amp + 1e-6).all()
    default = Sinusoid().sample(200, gen(5))
    assert default.info["amplitude"].min() >= 0.1 and default.info["amplitude"].max() <= 5.0
    assert default.info["phase"].min() >= 0 and default.info["phase"].max() <= math.pi
    assert default.support_x.abs().max() <= 5.0


def test_linear_regression_weights_targets_and_subspace():
    family = LinearRegression(
        dim=6, shots=5, queries=5, w_mean=0.5, subspace_dim=2, basis_seed=3, dtype=torch.float64
    )
    batch = family.sample(50, gen(6))
    w = batch.info["weights"]
    basis = family.basis
    assert basis.shape == (6, 2)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2, dtype=torch.float64))
    centred = w - family.w_mean
    projected = centred @ basis @ basis.T
    torch.testing.assert_close(projected, centred, rtol=1e-10, atol=1e-12)  # in the span
    assert torch.linalg.matrix_rank(centred) == 2
    # no noise: y = x . w exactly
    torch.testing.assert_close(
        batch.support_y.squeeze(-1), torch.einsum("tnd,td->tn", batch.support_x, w)
    )
    # the basis depends on basis_seed only, not on the sampling generator
    again = LinearRegression(dim=6, subspace_dim=2, basis_seed=3, dtype=torch.float64)
    assert torch.equal(again.basis, basis)
    other = LinearRegression(dim=6, subspace_dim=2, basis_seed=4, dtype=torch.float64)
    assert not torch.allclose(other.basis, basis)
    # full space by default, and noise shows up in the residual
    noisy = LinearRegression(dim=3, shots=200, queries=1, noise_std=0.5).sample(4, gen(7))
    residual = noisy.support_y.squeeze(-1) - torch.einsum(
        "tnd,td->tn", noisy.support_x, noisy.info["weights"]
    )
    assert 0.4 < float(residual.std()) < 0.6


def test_quadratic_encoding_gives_the_stated_losses():
    """With a bias-free linear model ``f(x) = theta x`` and MSE, the support loss is
    ``h/2 (theta - theta*)^2`` and the query loss ``1/2 (theta - theta*)^2``."""
    family = Quadratic(dtype=torch.float64)
    batch = family.sample(20, gen(8))
    h = batch.info["curvature"].reshape(-1)
    opt = batch.info["optimum"].reshape(-1)
    assert h.min() >= 0.5 and h.max() <= 2.0
    for theta in (-1.3, 0.0, 2.1):
        support = ((theta * batch.support_x - batch.support_y) ** 2).mean(dim=(1, 2))
        query = ((theta * batch.query_x - batch.query_y) ** 2).mean(dim=(1, 2))
        torch.testing.assert_close(support, h / 2 * (theta - opt) ** 2)
        torch.testing.assert_close(query, 0.5 * (theta - opt) ** 2)


def test_quadratic_finite_set_follows_probabilities():
    family = Quadratic(curvatures=[1.0, 2.0, 3.0], optima=[0.0, 1.0, 2.0], probs=[0.6, 0.3, 0.1])
    batch = family.sample(20000, gen(9))
    h = batch.info["curvature"].reshape(-1)
    opt = batch.info["optimum"].reshape(-1)
    torch.testing.assert_close(opt, h - 1)  # pairs stay together
    freq = torch.stack([(h == v).float().mean() for v in (1.0, 2.0, 3.0)])
    torch.testing.assert_close(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.015, rtol=0)
    made = family.make_batch(torch.tensor([2.0]), torch.tensor([1.0]))
    torch.testing.assert_close(made.support_x, torch.ones(1, 1, 1))  # sqrt(2/2)


def test_gaussian_mean_rotating_boundary_and_bandit_structure():
    gm = GaussianMean(dim=2, shots=3, queries=4, prior_mean=1.0, noise_std=0.0).sample(5, gen(10))
    assert torch.all(gm.support_x == 1)
    torch.testing.assert_close(gm.support_y, gm.info["mean"].expand(5, 3, 2))

    rb = RotatingBoundary(shots=8, queries=50, angle_mean=30.0, angle_std=0.0)
    batch = rb.sample(3, gen(11))
    assert batch.ways == 2 and rb.ways == 2
    assert torch.all(batch.info["angle"] == 30.0)
    normal = torch.tensor([math.cos(math.radians(120.0)), math.sin(math.radians(120.0))])
    expected = (batch.query_x @ normal > 0).long()
    assert torch.equal(batch.query_y, expected)
    assert set(batch.query_y.unique().tolist()) <= {0, 1}

    bandit = BernoulliBandit(arms=4, shots=500, queries=1, good_prob=0.9, bad_prob=0.1)
    b = bandit.sample(3, gen(12))
    probs, good = b.info["probs"], b.info["good_arm"]
    assert torch.equal(probs.argmax(-1), good)
    assert torch.all(b.support_x.sum(-1) == 1)
    for t in range(3):
        pulled_good = b.support_x[t, :, good[t]] == 1
        assert float(b.support_y[t, pulled_good].mean()) > 0.75
        assert float(b.support_y[t, ~pulled_good].mean()) < 0.25
    regret = BernoulliBandit.regret(good, probs)
    assert torch.all(regret == 0)
    torch.testing.assert_close(BernoulliBandit.regret((good + 1) % 4, probs), torch.full((3,), 0.8))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Sinusoid(shots=0), "shots must be >= 1"),
        (lambda: Sinusoid(queries=2.5), "queries must be an integer"),
        (lambda: Sinusoid(shots=True), "shots must be an integer"),
        (lambda: Sinusoid(amplitude=(5.0, 0.1)), "amplitude must be an interval"),
        (lambda: Sinusoid(x_range=(1.0, -1.0)), "x_range must be an interval"),
        (lambda: Sinusoid().sample(0), "batch_size must be >= 1"),
        (lambda: LinearRegression(dim=0), "dim must be >= 1"),
        (lambda: LinearRegression(w_std=-1.0), "w_std and noise_std must be >= 0"),
        (lambda: LinearRegression(dim=3, subspace_dim=4), "subspace_dim must be <= dim=3"),
        (lambda: LinearRegression(dim=5, w_mean=torch.ones(3)), "w_mean must be"),
        (lambda: Quadratic(curvatures=[1.0, 2.0], optima=[1.0]), "equal length"),
        (lambda: Quadratic(curvatures=[1.0]), "given together"),
        (lambda: Quadratic(curvatures=[1.0, -2.0], optima=[0.0, 0.0]), "curvatures must be > 0"),
        (
            lambda: Quadratic(curvatures=[1.0, 2.0], optima=[0.0, 0.0], probs=[0.5, 0.6]),
            "summing to 1",
        ),
        (lambda: Quadratic(curvature_range=(0.0, 1.0)), "curvature_range"),
        (lambda: Quadratic(optimum_std=-1.0), "optimum_std must be >= 0"),
        (lambda: GaussianMean(noise_std=-1.0), "noise_std must be >= 0"),
        (lambda: RotatingBoundary(angle_std=-1.0), "angle_std must be >= 0"),
        (lambda: BernoulliBandit(arms=1), "arms >= 2"),
        (lambda: BernoulliBandit(good_prob=1.5), r"good_prob must lie in \[0, 1\]"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, match):
    with pytest.raises(TaskError, match=match):
        make()


# -- validate_batch and TaskBatch ------------------------------------------------------------
def regression_batch() -> TaskBatch:
    return Sinusoid(shots=3, queries=4).sample(2, gen(13))


def replace(batch: TaskBatch, **fields) -> TaskBatch:
    ways = fields.pop("ways", batch.ways)
    kwargs = {f: getattr(batch, f) for f in ("support_x", "support_y", "query_x", "query_y")}
    kwargs.update(fields)
    return TaskBatch(**kwargs, ways=ways)


def test_validate_batch_catches_malformed_batches():
    batch = regression_batch()
    validate_batch(batch)
    nan_x = batch.query_x.clone()
    nan_x[1, 2, 0] = float("nan")
    with pytest.raises(TaskError, match="query_x contains NaN or Inf"):
        validate_batch(replace(batch, query_x=nan_x))
    inf_y = batch.support_y.clone()
    inf_y[0, 0, 0] = float("inf")
    with pytest.raises(TaskError, match="support_y contains NaN or Inf"):
        validate_batch(replace(batch, support_y=inf_y))
    with pytest.raises(TaskError, match="support set is empty"):
        validate_batch(
            replace(batch, support_x=batch.support_x[:, :0], support_y=batch.support_y[:, :0])
        )
    with pytest.raises(TaskError, match="query set is empty"):
        validate_batch(replace(batch, query_x=batch.query_x[:, :0], query_y=batch.query_y[:, :0]))
    with pytest.raises(TaskError, match="features differ in shape"):
        validate_batch(replace(batch, query_x=torch.zeros(2, 4, 2)))
    with pytest.raises(TaskError, match="share the task dimension"):
        validate_batch(replace(batch, query_x=batch.query_x[:1], query_y=batch.query_y[:1]))
    with pytest.raises(TaskError, match="example count"):
        validate_batch(replace(batch, support_y=batch.support_y[:, :2]))
    with pytest.raises(TaskError, match=r"must be a torch\.Tensor"):
        validate_batch(replace(batch, support_x=[[1.0]]))


def test_validate_batch_checks_class_labels():
    batch = RotatingBoundary(shots=4, queries=6).sample(3, gen(14))
    validate_batch(batch)
    bad = batch.query_y.clone()
    bad[0, 0] = 2
    with pytest.raises(TaskError, match=r"labels must lie in 0\.\.1 for a 2-way task"):
        validate_batch(replace(batch, query_y=bad))
    neg = batch.support_y.clone()
    neg[1, 1] = -1
    with pytest.raises(TaskError, match="labels must lie in"):
        validate_batch(replace(batch, support_y=neg))
    with pytest.raises(TaskError, match="integer class labels"):
        validate_batch(replace(batch, support_y=batch.support_y.float()))
    # regression batches are not label-checked unless asked to
    with pytest.raises(TaskError, match="integer class labels"):
        validate_batch(regression_batch(), classification=True)


def test_task_batch_indexing_split_and_stack():
    batch = Sinusoid(shots=3, queries=4).sample(5, gen(15))
    task = batch[2]
    assert isinstance(task, Task)
    assert torch.equal(task.support_x, batch.support_x[2])
    assert task.support == (task.support_x, task.support_y)
    assert len(list(batch)) == 5
    parts = batch.split(2)
    assert [len(p) for p in parts] == [2, 2, 1]
    assert torch.equal(torch.cat([p.query_y for p in parts]), batch.query_y)
    restacked = TaskBatch.stack(list(batch))
    for f in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(restacked, f), getattr(batch, f))
    with pytest.raises(TaskError, match="chunk_size must be a positive integer"):
        batch.split(0)
    with pytest.raises(TaskError, match="empty list"):
        TaskBatch.stack([])
    other = Sinusoid(shots=2, queries=4).sample(1, gen(16))[0]
    with pytest.raises(TaskError, match="must share shapes"):
        TaskBatch.stack([batch[0], other])
