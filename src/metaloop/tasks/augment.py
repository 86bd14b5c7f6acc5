"""Support-set augmentation for the inner loop (``GradientMetaLearner(support_transform=)``).

A transform maps a batch's support tensors ``(x [T, S, ...], y [T, S, ...])`` to new ones;
the inner loop then adapts on the result.  Randomness comes from ``torch``'s global
generator (seeded by the trainer), so a transform changes the draws of what follows it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaloop.validate import is_int


class SupportJitter:
    """Append ``copies`` noisy copies of every support point: ``x + e``, ``e ~ N(0, std^2)``,
    with the same target.  For regression this is input-noise regularisation: in
    expectation over ``e`` the MSE of a linear model gains ``std^2 ||w||^2`` per copy's share
    (ridge), so it flattens the inner loop's fit of noisy targets.
    """

    def __init__(self, std: float, copies: int = 1) -> None:
        if not (isinstance(std, (int, float)) and std >= 0):
            raise ValueError(f"std must be a number >= 0, got {std!r}")
        if not is_int(copies) or copies < 1:
            raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
        self.std, self.copies = float(std), copies

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        noisy = [x + self.std * torch.randn_like(x) for _ in range(self.copies)]
        return torch.cat([x, *noisy], 1), torch.cat([y] * (self.copies + 1), 1)

    def __repr__(self) -> str:
        return f"SupportJitter(std={self.std}, copies={self.copies})"
