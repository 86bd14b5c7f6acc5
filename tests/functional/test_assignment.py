"""Sinkhorn balancing of query-class probabilities: marginals, a closed form, the hard
assignment limit, and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from metaloop.functional.assignment import balance_log_probs

torch.set_num_threads(1)


def test_rows_are_distributions_and_columns_get_equal_mass() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, 4, generator=g, dtype=torch.float64) * 3
    p = balance_log_probs(logits, iterations=500, tolerance=1e-10).exp()
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 12, dtype=torch.float64))
    torch.testing.assert_close(p.sum(-2), torch.full((3, 4), 3.0, dtype=torch.float64))


def test_two_by_two_closed_form() -> None:
    """For Q = W = 2 the balanced matrix is [[x, 1-x], [1-x, x]] with the cross ratio of p
    preserved (diagonal scaling keeps p11 p22 / (p12 p21)): x / (1 - x) = sqrt(r)."""
    p = torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64)
    r = float(p[0, 0] * p[1, 1] / (p[0, 1] * p[1, 0]))
    x = math.sqrt(r) / (1 + math.sqrt(r))
    expected = torch.tensor([[x, 1 - x], [1 - x, x]], dtype=torch.float64)
    got = balance_log_probs(p.log(), iterations=1000, tolerance=1e-12).exp()
    torch.testing.assert_close(got, expected)
    # both queries prefer class 0 on their own; balanced, the less sure one takes class 1
    assert p.argmax(-1).tolist() == [0, 0] and got.argmax(-1).tolist() == [0, 1]


def test_balanced_input_is_left_alone() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(balance_log_probs(p.log()).exp(), p)


def test_low_temperature_gives_the_best_permutation() -> None:
    """tau -> 0: the argmax of the balanced matrix is the permutation maximising
    sum_j log p_{j, pi(j)}, found here by brute force over all 6! permutations."""
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        log_p = torch.log_softmax(torch.randn(6, 6, generator=g, dtype=torch.float64) * 2, -1)
        best = max(
            itertools.permutations(range(6)),
            key=lambda perm: sum(float(log_p[j, k]) for j, k in enumerate(perm)),
        )
        got = balance_log_probs(log_p, iterations=5000, temperature=0.02, tolerance=1e-9)
        assert got.argmax(-1).tolist() == list(best)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[\.\.\., queries, ways\]"):
        balance_log_probs(torch.zeros(3))
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        balance_log_probs(torch.zeros(2, 2), iterations=0)
    for tau in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a positive finite number"):
            balance_log_probs(torch.zeros(2, 2), temperature=tau)
