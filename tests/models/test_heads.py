"""CosineClassifier: the CosFace logit against a hand computation, its gradient against
finite differences, and its argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from metaloop.models import CosineClassifier

torch.set_num_threads(1)


def test_logits_are_scaled_cosines_minus_the_margin_on_the_label():
    torch.manual_seed(0)
    head = CosineClassifier(5, 4, scale=8.0, margin=0.3).double()
    z = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2, 0])
    w = head.weight.detach()
    cos = torch.empty(6, 4, dtype=torch.float64)
    for i in range(6):
        for c in range(4):
            cos[i, c] = (z[i] @ w[c]) / (z[i].norm() * w[c].norm())
    torch.testing.assert_close(head(z), 8.0 * cos)  # no labels: no margin
    with_margin = head(z, y).detach()
    for i in range(6):
        for c in range(4):
            expected = 8.0 * (cos[i, c] - (0.3 if c == int(y[i]) else 0.0))
            assert float(with_margin[i, c]) == pytest.approx(float(expected), abs=1e-12)


def test_scale_invariance_of_embeddings_and_weights():
    torch.manual_seed(1)
    head = CosineClassifier(3, 5).double()
    z = torch.randn(4, 3, dtype=torch.float64)
    before = head(z)
    with torch.no_grad():
        head.weight.mul_(7.0)
    torch.testing.assert_close(head(2.5 * z), before)
    assert before.abs().max() <= 10.0 + 1e-12  # |logit| <= s


def test_gradient_matches_finite_differences():
    torch.manual_seed(2)
    head = CosineClassifier(4, 3, scale=5.0, margin=0.2).double()
    y = torch.tensor([2, 0, 1])

    def loss(z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(
            torch.func.functional_call(head, {"weight": weight}, (z, y)), y
        )

    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = head.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (z, w))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_features": 0, "num_classes": 3}, "in_features must be a positive integer"),
        ({"in_features": 4, "num_classes": 2.0}, "num_classes must be a positive integer"),
        ({"in_features": 4, "num_classes": 3, "scale": 0}, "scale must be a positive"),
        ({"in_features": 4, "num_classes": 3, "margin": 1.0}, r"margin must be a number in"),
        ({"in_features": 4, "num_classes": 3, "margin": -0.1}, r"in \[0, 1\)"),
        ({"in_features": 4, "num_classes": 3, "margin": math.nan}, r"in \[0, 1\)"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CosineClassifier(**kwargs)
