"""Matching networks: attention probabilities, FCE and gradients against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic_episodes import gaussian_episodes
from torch import nn

from metaloop.algorithms.matching import MatchingNet
from metaloop.tasks import TaskBatch, TaskError

torch.set_num_threads(1)


def hand_log_probs(f_query, g_support, y_support, ways, temperature=1.0):
    """P(y=k|x) = sum_i a_i 1[y_i=k], a = softmax_i(cos(f, g_i)/tau), one query at a time."""
    rows = []
    for f in f_query:
        sims = torch.stack([F.cosine_similarity(f, g, dim=0) for g in g_support]) / temperature
        a = torch.softmax(sims, 0)
        p = torch.stack([a[y_support == k].sum() for k in range(ways)])
        rows.append(p.log())
    return torch.stack(rows)


def test_probabilities_and_gradient_match_hand_computation():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(8, 6), nn.Tanh()).double()
    batch = gaussian_episodes(2, 3, 2, 2, dtype=torch.float64)
    learner = MatchingNet(encoder, temperature=0.3)
    scores, _ = learner.episode_scores(batch)
    expected = torch.stack(
        [
            hand_log_probs(
                encoder(batch.query_x[t]), encoder(batch.support_x[t]), batch.support_y[t], 3, 0.3
            )
            for t in range(2)
        ]
    )
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(scores.exp().sum(-1), torch.ones(2, 6, dtype=torch.float64))

    loss, _ = learner.meta_loss(batch)
    hand = -expected.flatten(0, 1).gather(1, batch.query_y.reshape(-1, 1)).mean()
    torch.testing.assert_close(loss, hand)
    params = list(encoder.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(hand, params)):
        torch.testing.assert_close(a, b)


def test_full_context_embedding_matches_hand_lstm():
    torch.manual_seed(0)
    d = 4
    learner = MatchingNet(nn.Linear(8, d), fce=True, embedding_dim=d, fce_steps=3).double()
    fce = learner.fce_module
    batch = gaussian_episodes(2, 3, 1, 2, dtype=torch.float64)
    zs, zq = learner.encoder(batch.support_x), learner.encoder(batch.query_x)
    g, f = learner.embeddings(zs, zq)

    # g: bidirectional LSTM with skip connection, task 1 on its own
    lstm = fce.support_lstm
    out, _ = lstm(zs[1:2])
    torch.testing.assert_close(g[1], zs[1] + out[0, :, :d] + out[0, :, d:])
    # f: attention LSTM for one query, written out step by step
    x = zq[1, 0:1]
    h = c = r = torch.zeros(1, d, dtype=torch.float64)
    for _ in range(3):
        h_hat, c = fce.query_cell(x, (h + r, c))
        h = h_hat + x
        a = torch.softmax(h @ g[1].T, dim=-1)
        r = a @ g[1]
    torch.testing.assert_close(f[1, 0], h[0])

    loss, _ = learner.meta_loss(batch)
    loss.backward()
    assert all(p.grad is not None for p in fce.parameters())


def test_adapt_returns_log_probabilities():
    learner = MatchingNet(nn.Linear(8, 4), fce=True, embedding_dim=4)
    task = gaussian_episodes(1, 5, 2, 3)[0]
    out = learner.adapt(task)(task.query_x)
    assert out.shape == (15, 5)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(15))


def test_errors_are_clear():
    with pytest.raises(ValueError, match="needs embedding_dim"):
        MatchingNet(nn.Linear(8, 4), fce=True)
    learner = MatchingNet(nn.Linear(8, 4), fce=True, embedding_dim=5)
    batch = gaussian_episodes(1, 3, 1, 1)
    with pytest.raises(ValueError, match="embedding_dim=5"):
        learner.meta_loss(batch)
    sy = batch.support_y.clone()
    sy[0, 0] = 1
    with pytest.raises(TaskError, match="class 0 has no support examples"):
        MatchingNet(nn.Linear(8, 4)).meta_loss(
            TaskBatch(batch.support_x, sy, batch.query_x, batch.query_y, ways=3)
        )


@pytest.mark.parametrize("fce", [False, True])
def test_learns_on_synthetic_episodes(fce):
    torch.manual_seed(0)
    learner = MatchingNet(nn.Linear(8, 8), fce=fce, embedding_dim=8, temperature=0.1)
    test = gaussian_episodes(50, 5, 1, 5, seed=123)
    before = float(learner.evaluate_batch(test)[0]["accuracy"].mean())
    opt = torch.optim.Adam(learner.parameters(), 1e-2)
    for i in range(100):
        loss, _ = learner.meta_loss(gaussian_episodes(8, 5, 1, 5, seed=i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(learner.evaluate_batch(test)[0]["accuracy"].mean())
    assert after > 0.8 and after > before + 0.15, (before, after)
