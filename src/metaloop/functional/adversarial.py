"""Adversarial examples for adversarial meta-learning and robustness evaluation.

The fast gradient sign method (FGSM; Goodfellow, Shlens and Szegedy, 2015) moves every
input one step of size ``epsilon`` in the sign of the loss gradient,

    x_adv = x + epsilon * sign(grad_x L(x)),

the largest first-order increase of ``L`` within the L-infinity ball of radius
``epsilon``.  The result is detached: it is data for the outer loop, not a function of the
parameters that made it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metaloop.validate import is_number


def check_epsilon(epsilon: float) -> float:
    """``epsilon`` as a float, or a ``ValueError`` naming what is allowed."""
    if not is_number(epsilon):
        raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
    if not 0 <= epsilon < float("inf"):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    return float(epsilon)


def fgsm(loss_of_inputs: Callable[[Tensor], Tensor], x: Tensor, epsilon: float) -> Tensor:
    """``x + epsilon * sign(d loss_of_inputs(x) / dx)``, detached.

    ``loss_of_inputs`` maps a tensor shaped like ``x`` to a scalar; gradients are taken
    with ``torch.autograd`` even under ``torch.no_grad``, and no parameter's ``.grad`` is
    touched.  ``epsilon = 0`` returns ``x`` unchanged (without a forward pass).
    """
    epsilon = check_epsilon(epsilon)
    if epsilon == 0:
        return x.detach()
    with torch.enable_grad():
        inputs = x.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss_of_inputs(inputs), inputs)
    return (x.detach() + epsilon * gradient.sign()).detach()


__all__ = ["check_epsilon", "fgsm"]
