"""Meta-gradient noise by source, against closed forms where the meta-gradient is linear in
the sampled data."""

from __future__ import annotations

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.diagnostics import noise
from metaloop.models import MLP
from metaloop.tasks import GaussianMean, Quadratic

torch.set_num_threads(1)
F64 = torch.float64


def _linear(inputs: int, outputs: int, value: float) -> MLP:
    model = MLP(inputs, outputs, hidden=(), bias=False).double()
    torch.nn.init.constant_(next(model.parameters()), value)
    return model


def test_task_variance_on_quadratics_matches_the_closed_form_for_both_orders():
    family = Quadratic(curvature_range=(0.2, 2.0), optimum_std=1.0, dtype=F64)
    learner = MAML(_linear(1, 1, 0.7), inner_lr=0.6)
    amp = noise.order_amplification(learner, family, tasks=400, supports=1, queries=1)
    assert learner.first_order is False  # restored
    for second, part in ((False, amp.first_order), (True, amp.second_order)):
        exact = noise.quadratic_meta_gradient_variance(0.7, 0.6, (0.2, 2.0), 1.0, second)
        assert part.task == pytest.approx(exact, rel=0.25)  # 400 tasks: ~8% standard error
        assert part.support == part.query == 0.0
    exact_ratio = noise.quadratic_meta_gradient_variance(
        0.7, 0.6, (0.2, 2.0), 1.0, True
    ) / noise.quadratic_meta_gradient_variance(0.7, 0.6, (0.2, 2.0), 1.0, False)
    assert amp.ratios["task"] == pytest.approx(exact_ratio, rel=0.15)
    assert exact_ratio < 0.8  # second order damps this family's noise: the test discriminates


def test_support_and_query_components_on_gaussian_means():
    """``g_FO = (2/D)(theta' - zbar_q)`` with ``theta' = (1 - c) theta + c zbar_s``,
    ``c = 2 alpha / D``; drawing with replacement from a task's points (per-coordinate
    variance ``v_d``): query part ``(2/D)^2 sum_d v_d / Q``, support part
    ``(2c/D)^2 sum_d v_d / S``; second order multiplies every draw by ``1 - c``, so each
    part by ``(1 - c)^2`` exactly (the alpha^2-Hessian amplification, here a damping)."""
    family = GaussianMean(dim=2, shots=4, queries=8, noise_std=1.5, dtype=F64)
    alpha, dim = 0.4, 2
    c = 2 * alpha / dim
    learner = MAML(_linear(1, 2, 0.3), inner_lr=alpha)
    amp = noise.order_amplification(learner, family, tasks=6, supports=10, queries=3, points=60)
    pool = noise._points_family(family, 60).sample(6, torch.Generator().manual_seed(0))
    points = torch.cat([pool.support_y, pool.query_y], 1)
    v = points.var(1, unbiased=False).sum(-1).mean()  # mean over tasks of sum_d v_d
    fo = amp.first_order
    # Monte-Carlo estimates from 6 x 10 x 3 draws: loose bounds (a wrong 1/Q or 1/S is 5-8x)
    assert fo.query == pytest.approx(float((2 / dim) ** 2 * v / 8), rel=0.4)
    assert fo.support == pytest.approx(float((2 * c / dim) ** 2 * v / 4), rel=0.6)
    for key in ("support", "query"):
        assert amp.ratios[key] == pytest.approx((1 - c) ** 2, rel=1e-9)


def test_decompose_recovers_planted_components():
    """Synthetic g_ijk = a_i + b_ij + e_ijk with known variances 4, 1, 0.25 (scalars)."""
    gen = torch.Generator().manual_seed(0)
    a = 2.0 * torch.randn(400, 1, 1, 1, generator=gen, dtype=F64)
    b = 1.0 * torch.randn(400, 6, 1, 1, generator=gen, dtype=F64)
    e = 0.5 * torch.randn(400, 6, 6, 1, generator=gen, dtype=F64)
    d = noise.decompose(a + b + e)
    assert d.task == pytest.approx(4.0, rel=0.15)
    assert d.support == pytest.approx(1.0, rel=0.1)
    assert d.query == pytest.approx(0.25, rel=0.05)
    assert d.for_meta_batch(4) == pytest.approx(d.total / 4)
    with pytest.raises(ValueError, match="tasks must be >= 1"):
        noise.nested_gradients(None, None, 0, 1, 1)


def test_meta_batch_scaling_on_quadratics_follows_the_closed_form_over_b():
    """Independent tasks: the meta-batch mean's variance is the one-task closed form divided
    by ``B`` (``quadratic_meta_gradient_variance``), measured directly, slope -1."""
    family = Quadratic(curvature_range=(0.2, 2.0), optimum_std=1.0, dtype=F64)
    learner = MAML(_linear(1, 1, 0.7), inner_lr=0.6)
    scaling = noise.meta_batch_scaling(learner, family, [1, 4, 16], batches=300)
    exact = noise.quadratic_meta_gradient_variance(0.7, 0.6, (0.2, 2.0), 1.0, True)
    for p in scaling.points:
        # 300 batches: the Gaussian interval is ~16% of the trace; 30% leaves room for
        # the heavier-than-normal tails of this family
        assert p.trace == pytest.approx(exact / p.meta_batch_size, rel=0.3)
        assert p.ci95 > 0
    assert scaling.slope == pytest.approx(-1.0, abs=0.15)
    assert scaling.one_task_trace == pytest.approx(exact, rel=0.3)
    with pytest.raises(ValueError, match="positive integers"):
        noise.meta_batch_scaling(learner, family, [0, 2])


def test_mean_gradient_covariance_trace_and_interval_on_gaussian_rows():
    """Rows ~ N(0, diag(1..P)): ``E tr S = sum_p p``; the half-width estimates
    ``1.96 sqrt(2 tr(Sigma^2) / (n - 1))`` with ``tr(Sigma^2) = sum_p p^2``, and the
    interval covers the truth in most of 50 repetitions."""
    p_dim, n = 5, 200
    scale = torch.arange(1, p_dim + 1, dtype=F64).sqrt()
    gen = torch.Generator().manual_seed(0)
    truth = float(scale.pow(2).sum())
    half_truth = 1.96 * (2 * float(scale.pow(4).sum()) / (n - 1)) ** 0.5
    covered = 0
    for _ in range(50):
        rows = torch.randn(n, p_dim, generator=gen, dtype=F64) * scale
        trace, half = noise.mean_gradient_covariance(rows)
        covered += abs(trace - truth) <= half
        assert half == pytest.approx(half_truth, rel=0.35)
    assert covered >= 42  # nominal 95%: 47.5 of 50
