"""Balanced assignment of a task's queries to its classes (Sinkhorn-Knopp).

A classifier scores every query ``j`` of a task against every class ``k``:
``log p_jk = log p(y_j = k | x_j)``.  When the queries are known to be spread evenly over
the ``W`` classes (``Q / W`` each, as in N-way K-shot Q-query episodes and in Lake's 20
runs, one test image per class), the predictions of all queries can be made jointly under
that constraint.  ``balance_log_probs`` returns the matrix closest to ``p`` (in KL) with
those marginals,

    P = diag(a) p^(1/tau) diag(b),   sum_k P_jk = 1,   sum_j P_jk = Q / W,

found by Sinkhorn-Knopp's alternating row and column normalisation in the log domain (the
entropic optimal-transport view of PT-MAP, Hu et al. 2021, and of balanced transductive
few-shot inference).  ``tau = 1`` keeps the classifier's confidence; ``tau -> 0`` tends to
the hard optimal assignment (for ``Q = W`` the permutation maximising
``sum_j log p_{j, pi(j)}``).

This is *transductive* and assumes balance: a query's prediction depends on the other
queries of its task, and on query sets that are not balanced it is biased (Veilleux et al.,
2021, "Realistic evaluation of transductive few-shot learning").  Report figures obtained
with it as such.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metaloop.validate import is_int


def check_balance_options(iterations: object, temperature: object) -> None:
    """Raise ``ValueError`` unless ``iterations`` is an int >= 1 and ``temperature`` a
    positive finite number."""
    if not is_int(iterations) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")


def balance_log_probs(
    log_p: Tensor, iterations: int = 100, temperature: float = 1.0, tolerance: float = 1e-6
) -> Tensor:
    """Sinkhorn-balanced log-probabilities (module docstring).

    Args:
        log_p: ``[..., Q, W]`` log-probabilities (or logits: each row is normalised first)
            of the ``Q`` queries of a task over its ``W`` classes; leading dimensions are
            independent tasks.
        iterations: the most column-then-row normalisation sweeps.
        temperature: ``tau > 0``; the scores are divided by it before balancing.
        tolerance: stop once every column mass is within this (relative) of ``Q / W``.

    Returns:
        ``[..., Q, W]`` log of ``P``: every row a distribution over classes (it sums to 1
        exactly, the last normalisation being by rows), columns summing to ``Q / W`` up to
        ``tolerance`` once converged.
    """
    if log_p.dim() < 2:
        raise ValueError(
            f"balance_log_probs takes [..., queries, ways] scores, got shape {tuple(log_p.shape)}"
        )
    check_balance_options(iterations, temperature)
    queries, ways = log_p.shape[-2:]
    log_column_mass = math.log(queries / ways)
    x = torch.log_softmax(log_p / temperature, -1)
    for _ in range(iterations):
        column = x.logsumexp(-2, keepdim=True)
        if float((column - log_column_mass).abs().max()) < tolerance:
            break
        x = x - (column - log_column_mass)
        x = x - x.logsumexp(-1, keepdim=True)
    return x


__all__ = ["balance_log_probs", "check_balance_options"]
