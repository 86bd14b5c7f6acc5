"""Out-of-scope rejection: AUROC, threshold choice on validation only, abstention."""

from __future__ import annotations

import itertools

import pytest
import torch

from metaloop.algorithms.protonet import ProtoNet
from metaloop.data.text import TextDataset, TextEpisodicFamily
from metaloop.evaluation.oos import (
    OOSScores,
    auroc,
    choose_threshold,
    collect_scores,
    confidence,
    evaluate_oos,
    with_rejection,
)
from metaloop.models.text import EmbeddingBag
from metaloop.tasks.base import TaskError


def test_auroc_against_pair_counting() -> None:
    assert float(auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0]))) == 1.0
    assert float(auroc(torch.tensor([1.0]), torch.tensor([2.0, 3.0]))) == 0.0
    assert float(auroc(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))) == 0.5
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 5, (7,), generator=g), torch.randint(0, 5, (6,), generator=g)
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert float(auroc(pos.float(), neg.float())) == pytest.approx(sum(pairs) / len(pairs))


def brute_force_threshold(scores: OOSScores) -> float:
    best, best_t = -1.0, None
    grid = sorted(
        {*scores.in_scope.reshape(-1).tolist(), *scores.out_of_scope.reshape(-1).tolist()}
    )
    for t in [*grid, float("inf")]:
        acc = ((scores.in_scope >= t) & scores.correct).double().mean()
        recall = (scores.out_of_scope < t).double().mean()
        value = float(acc + recall)
        if value > best + 1e-12:
            best, best_t = value, t
    return best_t


def test_threshold_maximises_balanced_rate_like_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        scores = OOSScores(
            torch.rand(4, 6, generator=g).round(decimals=1),
            torch.rand(4, 6, generator=g) > 0.3,
            torch.rand(4, 3, generator=g).round(decimals=1) * 0.8,
        )
        assert choose_threshold(scores) == pytest.approx(brute_force_threshold(scores))
    # a hand case: accept 0.9 and 0.8 (correct), reject the out-of-scope 0.5 and 0.3
    hand = OOSScores(
        torch.tensor([[0.9, 0.8, 0.4]]),
        torch.tensor([[True, True, False]]),
        torch.tensor([[0.5, 0.3]]),
    )
    assert choose_threshold(hand) == pytest.approx(0.8)
    acc, recall = hand.rates(0.8)
    assert float(acc) == pytest.approx(2 / 3) and float(recall) == 1.0


def test_with_rejection_abstains_below_threshold() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.2]])
    predict = with_rejection(lambda x: x, threshold=0.5)
    assert predict(logits).tolist() == [0, -1]
    assert with_rejection(lambda x: x, 0.15, score="max_logit")(logits).tolist() == [0, 2]
    assert confidence(logits, "max_logit").tolist() == pytest.approx([4.0, 0.2])
    with pytest.raises(ValueError, match="unknown out-of-scope score"):
        with_rejection(lambda x: x, 0.5, score="entropy")


def toy_text_family(seed: int, oos_offset: int, queries: int = 4) -> TextEpisodicFamily:
    """6 intents whose utterances use their own token ids; out-of-scope utterances use ids
    no intent uses (shifted by ``oos_offset``), so a bag of embeddings can tell them apart."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for c in range(6):
        for _ in range(8):
            ids = 3 + 4 * c + torch.randint(0, 4, (5,), generator=g)
            rows.append(torch.cat([torch.tensor([2]), ids]))
            labels.append(c)
    ds = TextDataset(torch.stack(rows), labels, [{"name": f"i{c}"} for c in range(6)])
    oos = torch.cat(
        [torch.full((20, 1), 2), 30 + oos_offset + torch.randint(0, 5, (20, 5), generator=g)], 1
    )
    return TextEpisodicFamily(ds, 3, 2, queries, oos=oos, oos_queries=3)


def test_threshold_comes_from_validation_episodes_only() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(EmbeddingBag(50, 8))
    val = toy_text_family(0, 0)
    test_a, test_b = toy_text_family(1, 0), toy_text_family(1, 10)
    a = evaluate_oos(learner, val, test_a, episodes=12, validation_episodes=10, seed=3)
    b = evaluate_oos(learner, val, test_b, episodes=12, validation_episodes=10, seed=3)
    expected = choose_threshold(collect_scores(learner, val, 10, seed=4))
    assert a.threshold == b.threshold == pytest.approx(expected)
    assert a.closed_set_accuracy.mean == b.closed_set_accuracy.mean  # same in-scope episodes
    assert a.episodes == 12 and 0.0 <= a.auroc.mean <= 1.0
    other_val = evaluate_oos(learner, test_b, test_a, episodes=12, validation_episodes=10, seed=3)
    assert other_val.threshold != a.threshold  # the threshold does depend on validation
    assert "out-of-scope recall" in str(a)


def test_episodes_without_out_of_scope_queries_are_refused() -> None:
    family = toy_text_family(0, 0).with_shape(oos_queries=0)
    with pytest.raises(TaskError, match="out-of-scope queries"):
        collect_scores(ProtoNet(EmbeddingBag(50, 8)), family, 2, seed=0)
