"""Helpers shared by the test modules, as pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch


@torch.no_grad()
def central_differences(
    fn: Callable[[], torch.Tensor | float], params: Sequence[torch.Tensor], eps: float = 1e-6
) -> torch.Tensor:
    """The gradient of the scalar ``fn()`` with respect to ``params`` by central differences,

        d fn / d p_i ~ (fn(p + eps e_i) - fn(p - eps e_i)) / (2 eps),

    one coordinate at a time, perturbing the tensors in place and restoring them; the
    coordinates of all ``params`` flattened in order, float64.  Use float64 parameters."""
    out = []
    for p in params:
        view = p.view(-1)
        for i in range(view.numel()):
            orig = view[i].item()
            view[i] = orig + eps
            plus = float(fn())
            view[i] = orig - eps
            minus = float(fn())
            view[i] = orig
            out.append((plus - minus) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def numeric_gradient() -> Callable[..., torch.Tensor]:
    """``central_differences(fn, params, eps=1e-6)``: the independent truth of the gradient
    tests."""
    return central_differences
