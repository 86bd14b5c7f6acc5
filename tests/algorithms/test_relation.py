"""Relation networks: class sums, pair scores and MSE against hand loops; default modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaloop.algorithms.relation import (
    RelationNet,
    default_relation_module,
    relation_embedding,
    relation_mlp,
    relation_module,
)
from metaloop.tasks import TaskBatch

torch.set_num_threads(1)


def image_episodes(tasks, ways, shots, queries, size=6, seed=0, dtype=torch.float32):
    """Per-task random class templates ``[1, size, size]`` plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(tasks, ways, 1, size, size, generator=g, dtype=dtype)

    def draw(n):
        y = torch.arange(ways).repeat_interleave(n).expand(tasks, -1)
        x = templates[torch.arange(tasks).unsqueeze(1), y]
        return x + 0.8 * torch.randn(x.shape, generator=g, dtype=dtype), y.clone()

    sx, sy = draw(shots)
    qx, qy = draw(queries)
    return TaskBatch(sx, sy, qx, qy, ways=ways)


def small_encoder():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())


@pytest.mark.parametrize("aggregate", ["sum", "mean"])
def test_scores_and_loss_match_hand_loop(aggregate):
    torch.manual_seed(0)
    encoder = small_encoder().double()
    relation = nn.Sequential(
        nn.Conv2d(8, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 1)
    ).double()
    learner = RelationNet(encoder, relation, aggregate=aggregate)
    batch = image_episodes(2, 3, 2, 2, dtype=torch.float64)
    scores, _ = learner.episode_scores(batch)

    expected = []
    for t in range(2):
        zs, zq = encoder(batch.support_x[t]), encoder(batch.query_x[t])
        reduce = torch.sum if aggregate == "sum" else torch.mean
        classes = [reduce(zs[batch.support_y[t] == k], 0) for k in range(3)]
        expected.append(
            torch.stack(
                [
                    torch.stack(
                        [torch.sigmoid(relation(torch.cat([c, q])[None]))[0, 0] for c in classes]
                    )
                    for q in zq
                ]
            )
        )
    expected = torch.stack(expected)
    torch.testing.assert_close(scores, expected)
    assert bool(((scores >= 0) & (scores <= 1)).all())

    loss, _ = learner.meta_loss(batch)
    hand = ((expected - F.one_hot(batch.query_y, 3).double()) ** 2).mean()
    torch.testing.assert_close(loss, hand)
    params = list(learner.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(hand, params)):
        torch.testing.assert_close(a, b)


def test_paper_modules_on_28x28():
    torch.manual_seed(0)
    embedding = relation_embedding(in_channels=1, hidden=8)
    assert embedding(torch.randn(3, 1, 28, 28)).shape == (3, 8, 5, 5)
    module = relation_module(in_channels=8, feature_size=5, hidden=8)
    assert module(torch.randn(4, 16, 5, 5)).shape == (4, 1)
    learner = RelationNet(embedding, module)
    batch = image_episodes(1, 2, 1, 1, size=28)
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert all(p.grad is not None for p in learner.relation.parameters())
    # a Conv4 whose maps end at 1x1 still gets a valid module
    assert relation_module(64, feature_size=1)(torch.randn(2, 128, 1, 1)).shape == (2, 1)


def test_cross_entropy_mode_uses_raw_scores_as_logits():
    torch.manual_seed(0)
    learner = RelationNet(nn.Linear(8, 4), relation_mlp(4), loss="cross_entropy")
    batch = TaskBatch(
        torch.randn(2, 3, 8),
        torch.arange(3).expand(2, 3),
        torch.randn(2, 3, 8),
        torch.arange(3).expand(2, 3),
        ways=3,
    )
    scores, _ = learner.episode_scores(batch)
    loss, _ = learner.meta_loss(batch)
    torch.testing.assert_close(loss, F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten()))
    predictor = learner.adapt(batch[0])
    torch.testing.assert_close(predictor(batch[0].query_x), scores[0])


def test_relation_module_output_shape_is_checked():
    learner = RelationNet(nn.Linear(8, 4), nn.Linear(8, 2))
    batch = TaskBatch(
        torch.randn(1, 2, 8),
        torch.tensor([[0, 1]]),
        torch.randn(1, 2, 8),
        torch.tensor([[0, 1]]),
        ways=2,
    )
    with pytest.raises(ValueError, match="one score per pair"):
        learner.meta_loss(batch)
    with pytest.raises(ValueError, match="loss must be"):
        RelationNet(nn.Linear(8, 4), relation_mlp(4), loss="nll")


def test_learns_on_synthetic_images():
    torch.manual_seed(0)
    encoder = small_encoder()
    learner = RelationNet(encoder, relation_module(4, feature_size=6, hidden=8))
    test = image_episodes(30, 3, 1, 4, seed=123)
    learner.eval()
    before = float(learner.evaluate_batch(test)[0]["accuracy"].mean())
    opt = torch.optim.Adam(learner.parameters(), 3e-3)
    learner.train()
    for i in range(60):
        loss, _ = learner.meta_loss(image_episodes(4, 3, 1, 4, seed=i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    learner.eval()
    after = float(learner.evaluate_batch(test)[0]["accuracy"].mean())
    assert after > 0.7 and after > before + 0.15, (before, after)


def test_default_relation_module_is_sized_by_a_dry_run():
    encoder = small_encoder()
    maps = RelationNet(encoder, input_shape=(1, 6, 6), hidden=8)
    assert isinstance(maps.relation[0][0], nn.Conv2d) and maps.relation[0][0].in_channels == 8
    batch = image_episodes(2, 3, 2, 1)
    assert maps.episode_scores(batch)[0].shape == (2, 3, 3)
    vectors = default_relation_module(nn.Linear(8, 4), input_shape=(8,))
    assert vectors(torch.randn(5, 8)).shape == (5, 1)

    class Described(nn.Sequential):
        in_channels, image_size = 1, 6

    assert RelationNet(Described(*small_encoder())).episode_scores(batch)[0].shape == (2, 3, 3)
    with pytest.raises(ValueError, match="needs input_shape"):
        RelationNet(small_encoder())


def test_conv4_backbone_when_available():
    conv = pytest.importorskip("metaloop.models.conv")
    encoder = conv.Conv4(in_channels=1, ways=None, hidden=8, image_size=28)
    learner = RelationNet(encoder)
    loss, _ = learner.meta_loss(image_episodes(2, 3, 1, 2, size=28))
    loss.backward()
    assert all(p.grad is not None for p in learner.relation.parameters())
