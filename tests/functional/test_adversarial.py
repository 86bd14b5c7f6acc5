"""FGSM against the closed-form sign of a linear model's input gradient."""

from __future__ import annotations

import pytest
import torch

from metaloop.functional.adversarial import check_epsilon, fgsm


def test_fgsm_on_a_linear_model_moves_each_input_against_its_residual():
    # L(x) = sum_n (w . x_n + b - y_n)^2, so grad_{x_n} L = 2 (w . x_n + b - y_n) w
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, generator=g, dtype=torch.float64), 0.3
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, generator=g, dtype=torch.float64)
    residual = x @ w + b - y
    expected = x + 0.25 * torch.sign(residual[:, None] * w[None, :])
    got = fgsm(lambda inputs: ((inputs @ w + b - y) ** 2).sum(), x, 0.25)
    torch.testing.assert_close(got, expected)
    assert not got.requires_grad
    # the loss goes up, and by at most the first-order bound plus curvature
    loss = lambda inputs: float(((inputs @ w + b - y) ** 2).sum())  # noqa: E731
    assert loss(got) > loss(x)


def test_fgsm_works_under_no_grad_and_leaves_parameters_alone():
    layer = torch.nn.Linear(2, 1)
    x = torch.randn(4, 2)
    with torch.no_grad():
        out = fgsm(lambda inputs: layer(inputs).sum(), x, 0.1)
    assert layer.weight.grad is None
    torch.testing.assert_close(out - x, 0.1 * layer.weight.detach().sign().expand(4, 2))
    assert torch.equal(fgsm(lambda inputs: layer(inputs).sum(), x, 0), x)


@pytest.mark.parametrize("bad", [-0.1, float("inf"), float("nan"), "0.1", True])
def test_epsilon_must_be_a_finite_non_negative_number(bad):
    with pytest.raises(ValueError, match="epsilon must be a"):
        check_epsilon(bad)
