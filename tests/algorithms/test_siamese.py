"""Siamese networks and episode pair/triplet samplers against direct formulas."""

from __future__ import annotations

import itertools

import pytest
import torch
from synthetic_episodes import gaussian_episodes
from torch import nn

from metaloop.algorithms.siamese import (
    SiameseNet,
    triplet_loss_all,
    triplet_loss_hard,
)
from metaloop.tasks import TaskBatch, TaskError
from metaloop.tasks.pairs import (
    episode_examples,
    pair_masks,
    sample_pair_indices,
    sample_pairs,
    sample_triplet_indices,
    sample_triplets,
    triplet_mask,
)

torch.set_num_threads(1)


def sq(a, b):
    return ((a - b) ** 2).sum()


def test_triplet_losses_match_direct_formula():
    torch.manual_seed(0)
    z = torch.randn(2, 7, 3, dtype=torch.float64)
    y = torch.tensor([[0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 0, 2, 2, 0]])
    d = ((z.unsqueeze(2) - z.unsqueeze(1)) ** 2).sum(-1)
    m = 0.7
    terms, hard = [], []
    for t in range(2):
        for a, p, n in itertools.product(range(7), repeat=3):
            if a != p and y[t, a] == y[t, p] and y[t, n] != y[t, a]:
                terms.append(torch.clamp(sq(z[t, a], z[t, p]) - sq(z[t, a], z[t, n]) + m, min=0))
        for a in range(7):
            pos = [sq(z[t, a], z[t, p]) for p in range(7) if p != a and y[t, p] == y[t, a]]
            neg = [sq(z[t, a], z[t, n]) for n in range(7) if y[t, n] != y[t, a]]
            if pos and neg:
                hard.append(torch.clamp(max(pos) - min(neg) + m, min=0))
    torch.testing.assert_close(triplet_loss_all(d, y, m), torch.stack(terms).mean())
    torch.testing.assert_close(triplet_loss_hard(d, y, m), torch.stack(hard).mean())


@pytest.mark.parametrize("balanced", [True, False])
def test_contrastive_loss_matches_direct_formula(balanced):
    torch.manual_seed(0)
    encoder = nn.Linear(8, 3).double()
    batch = gaussian_episodes(2, 3, 2, 1, dtype=torch.float64)
    learner = SiameseNet(encoder, loss="contrastive", margin=2.0, balanced=balanced)
    loss, _ = learner.meta_loss(batch)
    x, y = episode_examples(batch)
    z = encoder(x)
    pos, neg = [], []
    for t in range(2):
        for i, j in itertools.combinations(range(x.shape[1]), 2):
            dist = sq(z[t, i], z[t, j]).sqrt()
            if y[t, i] == y[t, j]:
                pos.append(0.5 * dist**2)
            else:
                neg.append(0.5 * torch.clamp(2.0 - dist, min=0) ** 2)
    pos, neg = torch.stack(pos), torch.stack(neg)
    expected = pos.mean() + neg.mean() if balanced else torch.cat([pos, neg]).mean()
    torch.testing.assert_close(loss, expected)
    grads = torch.autograd.grad(loss, list(encoder.parameters()))
    for a, b in zip(grads, torch.autograd.grad(expected, list(encoder.parameters()))):
        torch.testing.assert_close(a, b)


def test_triplet_meta_loss_uses_pooled_episode():
    encoder = nn.Linear(8, 3).double()
    batch = gaussian_episodes(2, 3, 1, 2, dtype=torch.float64)
    x, y = episode_examples(batch)
    z = encoder(x)
    d = ((z.unsqueeze(2) - z.unsqueeze(1)) ** 2).sum(-1)
    for mining, fn in (("all", triplet_loss_all), ("hard", triplet_loss_hard)):
        loss, _ = SiameseNet(encoder, loss="triplet", mining=mining, margin=0.5).meta_loss(batch)
        torch.testing.assert_close(loss, fn(d, y, 0.5))


def test_nearest_support_embedding_classification():
    encoder = nn.Linear(8, 4)
    learner = SiameseNet(encoder)
    one_shot = gaussian_episodes(1, 4, 1, 3)[0]
    scores = learner.adapt(one_shot)(one_shot.query_x)
    zs, zq = encoder(one_shot.support_x), encoder(one_shot.query_x)
    torch.testing.assert_close(scores, -((zq.unsqueeze(1) - zs.unsqueeze(0)) ** 2).sum(-1))
    k_shot = gaussian_episodes(1, 3, 4, 2)[0]
    scores = learner.adapt(k_shot)(k_shot.query_x)
    zs, zq = encoder(k_shot.support_x), encoder(k_shot.query_x)
    d = ((zq.unsqueeze(1) - zs.unsqueeze(0)) ** 2).sum(-1)
    expected = torch.stack([d[:, k_shot.support_y == k].min(1).values for k in range(3)], 1)
    torch.testing.assert_close(scores, -expected)


def test_pair_and_triplet_samplers():
    labels = torch.tensor([[0, 0, 1, 1, 2], [2, 1, 0, 1, 0]])
    same, different = pair_masks(labels)
    assert not bool(same.diagonal(dim1=1, dim2=2).any())
    assert int(same.sum()) == 2 * 2 + 2 * 2 and int(different.sum()) == 2 * (25 - 9)
    assert triplet_mask(labels)[0, 0, 1, 2] and not triplet_mask(labels)[0, 0, 2, 1]

    g = torch.Generator().manual_seed(0)
    i, j, s = sample_pair_indices(labels, 40, g, positive_fraction=0.25)
    assert i.shape == (2, 40) and int(s.sum()) == 2 * 10
    rows = torch.arange(2).unsqueeze(1)
    assert bool((labels[rows, i] == labels[rows, j])[s].all())
    assert bool((labels[rows, i] != labels[rows, j])[~s].all())
    assert bool((i != j).all())
    again = sample_pair_indices(labels, 40, torch.Generator().manual_seed(0), 0.25)
    assert all(torch.equal(a, b) for a, b in zip((i, j, s), again))

    a, p, n = sample_triplet_indices(labels, 30, g)
    assert bool((labels[rows, a] == labels[rows, p]).all() and (a != p).all())
    assert bool((labels[rows, a] != labels[rows, n]).all())
    assert a.min() >= 0 and a.max() < 5 and set(a[0].tolist()) <= {0, 1, 2, 3}

    batch = gaussian_episodes(2, 3, 2, 1)
    pairs = sample_pairs(batch, 6, g)
    x, _ = episode_examples(batch)
    assert pairs.x1.shape == (2, 6, 8) and pairs.same.dtype == torch.bool
    triplets = sample_triplets(batch, 5, g)
    assert triplets.negative.shape == (2, 5, 8)
    assert any(torch.equal(triplets.anchor[0, 0], row) for row in x[0])

    with pytest.raises(TaskError, match="no same-class pair"):
        sample_pair_indices(torch.tensor([[0, 1, 2]]), 4)
    with pytest.raises(TaskError, match="no valid triplet"):
        sample_triplet_indices(torch.tensor([[0, 0, 0]]), 4)


@pytest.mark.parametrize(
    "loss,mining,samples",
    [
        ("contrastive", "all", None),
        ("triplet", "all", None),
        ("triplet", "hard", None),
        ("contrastive", "all", 64),
        ("triplet", "all", 64),
    ],
)
def test_learns_on_synthetic_episodes(loss, mining, samples):
    torch.manual_seed(0)
    learner = SiameseNet(
        nn.Linear(8, 8),
        loss=loss,
        mining=mining,
        samples=samples,
        margin=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    test = gaussian_episodes(50, 5, 1, 5, seed=123)
    before = float(learner.evaluate_batch(test)[0]["accuracy"].mean())
    opt = torch.optim.Adam(learner.parameters(), 1e-2)
    for i in range(80):
        value, metrics = learner.meta_loss(gaussian_episodes(8, 5, 2, 3, seed=i))
        opt.zero_grad()
        value.backward()
        opt.step()
    after = float(learner.evaluate_batch(test)[0]["accuracy"].mean())
    assert after > 0.8 and after > before + 0.15, (before, after)
    assert set(metrics) == {"loss", "accuracy"}


def test_errors_are_clear():
    with pytest.raises(ValueError, match="'contrastive' or 'triplet'"):
        SiameseNet(nn.Linear(2, 2), loss="binary")
    with pytest.raises(ValueError, match="margin"):
        SiameseNet(nn.Linear(2, 2), margin=-1)
    one_each = TaskBatch(
        torch.randn(1, 2, 8),
        torch.tensor([[0, 1]]),
        torch.randn(1, 2, 8),
        torch.tensor([[0, 1]]),
        ways=2,
    )
    learner = SiameseNet(nn.Linear(8, 2), loss="contrastive")
    # support and query pooled give two examples per class, so this works ...
    learner.meta_loss(one_each)
    single = TaskBatch(
        torch.randn(1, 1, 8), torch.tensor([[0]]), torch.randn(1, 1, 8), torch.tensor([[0]]), ways=1
    )
    with pytest.raises(TaskError, match="different-class"):
        learner.meta_loss(single)
