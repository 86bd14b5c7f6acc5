"""Pair verification: ROC AUC and equal error rate against hand-worked values."""

from __future__ import annotations

import pytest
import torch

from metaloop.evaluation.verification import (
    all_pairs,
    equal_error_rate,
    roc_auc,
    roc_curve,
    score_pairs,
    verify,
)


def test_perfect_model_has_auc_one_and_eer_zero() -> None:
    same = torch.tensor([1, 0, 1, 1, 0, 0, 0], dtype=torch.bool)
    truth = same.double()  # a model that returns the true answer
    assert roc_auc(truth, same) == 1.0
    assert equal_error_rate(truth, same)[0] == 0.0


def test_constant_model_has_auc_one_half() -> None:
    same = torch.tensor([1, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    assert roc_auc(torch.full((7,), 3.0), same) == 0.5
    assert equal_error_rate(torch.full((7,), 3.0), same)[0] == pytest.approx(0.5)


def test_hand_worked_example() -> None:
    # same pairs score 0.9, 0.8, 0.4; different pairs 0.7, 0.3.
    # AUC: of the 6 (same, different) comparisons, 5 rank the same pair higher -> 5/6.
    # ROC (tau: fpr, fnr): inf (0, 1); 0.9 (0, 2/3); 0.8 (0, 1/3); 0.7 (1/2, 1/3); ...
    # fnr - fpr goes from 1/3 at 0.8 to -1/6 at 0.7: t = (1/3) / (1/2) = 2/3,
    # EER = 0 + 2/3 * 1/2 = 1/3, threshold = 0.8 + 2/3 * (0.7 - 0.8) = 0.7333...
    scores = torch.tensor([0.9, 0.7, 0.8, 0.3, 0.4])
    same = torch.tensor([True, False, True, False, True])
    assert roc_auc(scores, same) == pytest.approx(5 / 6)
    fpr, tpr, thresholds = roc_curve(scores, same)
    assert fpr.tolist() == pytest.approx([0, 0, 0, 0.5, 0.5, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert thresholds[1:].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.4, 0.3])
    eer, threshold = equal_error_rate(scores, same)
    assert eer == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.8 - 0.1 * 2 / 3, abs=1e-6)
    # ties: one same and one different pair at 0.5 count one half
    assert roc_auc(torch.tensor([0.5, 0.5, 0.9]), torch.tensor([True, False, True])) == 0.75


def test_auc_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 8, (60,), generator=g).double()  # many ties
    same = torch.rand(60, generator=g) < 0.3
    pos, neg = scores[same], scores[~same]
    brute = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None])).mean()
    assert roc_auc(scores, same) == pytest.approx(float(brute))
    fpr, tpr, _ = roc_curve(scores, same)
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(float(brute))


def test_verify_on_separable_embeddings_and_errors() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    images = labels[:, None].double() * 10 + torch.tensor([0.0, 0.1, 0.0, 0.1, 0.0, 0.1])[:, None]
    result = verify(lambda x: x, images, labels)
    assert result.auc == 1.0 and result.eer == 0.0
    assert (result.same, result.different) == (3, 12)
    i, j, same = all_pairs(labels)
    assert i.numel() == 15 and bool((i < j).all()) and int(same.sum()) == 3
    cos = score_pairs(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), "cosine")
    assert cos.tolist() == pytest.approx([0.0])
    with pytest.raises(ValueError, match="needs same and different pairs"):
        roc_auc(torch.ones(3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown pair metric 'l1'"):
        verify(lambda x: x, images, labels, metric="l1")
