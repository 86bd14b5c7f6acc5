"""Black-box sequence learners (in-context transformer, label-delay LSTM, SNAIL): order
(in)variance of the support set, queries independent of each other, each network against
a hand-written sequence computation, meta-gradients against float64 central differences,
classification, image episodes through a Conv4 encoder, fewer ways at test than at
training, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metaloop.algorithms.incontext import InContextTransformer, support_query_mask
from metaloop.algorithms.mann_lstm import LabelDelayLSTM
from metaloop.algorithms.snail import SNAIL, AttentionBlock
from metaloop.models import Conv4
from metaloop.tasks import RotatingBoundary, Sinusoid
from metaloop.tasks.base import TaskBatch, TaskError

torch.set_num_threads(1)

TINY = {
    "transformer": lambda **kw: InContextTransformer(
        nn.Identity(), width=4, depth=1, heads=2, ff=4, **kw
    ),
    "lstm": lambda **kw: LabelDelayLSTM(nn.Identity(), hidden=3, **kw),
    "snail": lambda **kw: SNAIL(
        nn.Identity(), max_support=3, filters=1, key_size=1, value_size=1, **kw
    ),
}
SMALL = {
    "transformer": lambda **kw: InContextTransformer(nn.Identity(), width=16, depth=2, **kw),
    "lstm": lambda **kw: LabelDelayLSTM(nn.Identity(), hidden=16, **kw),
    "snail": lambda **kw: SNAIL(nn.Identity(), max_support=12, filters=8, **kw),
}


def make(kind: str, sizes=SMALL, seed: int = 0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    kw = {"x_dim": 1, "y_dim": 1, **kw}
    return sizes[kind](**kw).to(dtype)


def sinusoid(shots=6, queries=5, tasks=2, seed=1):
    family = Sinusoid(shots=shots, queries=queries, dtype=torch.float64)
    return family.sample(tasks, torch.Generator().manual_seed(seed))


def permuted(batch, order):
    return batch.support_x[:, order], batch.support_y[:, order]


@pytest.mark.parametrize("kind", ["transformer", "lstm", "snail"])
def test_support_order_matters_only_for_the_recurrent_learners(kind):
    learner = make(kind)
    batch = sinusoid(shots=8)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    before = learner.forward_task(batch.support_x, batch.support_y, batch.query_x)
    after = learner.forward_task(*permuted(batch, order), batch.query_x)
    if kind == "transformer":  # no positional encoding, non-causal among support tokens
        torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)
    else:  # a recurrence and causal convolutions/attention read a sequence
        assert (after - before).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["transformer", "lstm", "snail"])
def test_a_query_does_not_see_the_other_queries(kind):
    learner = make(kind)
    batch = sinusoid(queries=6)
    together = learner.forward_task(batch.support_x, batch.support_y, batch.query_x)
    for q in (0, 5):
        alone = learner.forward_task(batch.support_x, batch.support_y, batch.query_x[:, q : q + 1])
        torch.testing.assert_close(alone[:, 0], together[:, q], rtol=1e-10, atol=1e-12)


def test_mask_lets_queries_see_the_support_and_themselves_only():
    allowed = support_query_mask(2, 2)
    expected = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(allowed, expected)
    expected[2, 2] = expected[3, 3] = False
    assert torch.equal(support_query_mask(2, 2, query_sees_itself=False), expected)
    # without self-attention the queries stay independent of each other
    learner = make("transformer", query_self_attention=False)
    batch = sinusoid(queries=4)
    together = learner.forward_task(batch.support_x, batch.support_y, batch.query_x)
    alone = learner.forward_task(batch.support_x, batch.support_y, batch.query_x[:, 2:3])
    torch.testing.assert_close(alone[:, 0], together[:, 2], rtol=1e-10, atol=1e-12)


def test_lstm_reads_the_label_one_step_late():
    """The prediction for a query is the LSTM run by hand over
    ``[x_1, 0], [x_2, y_1], ..., [x_S, y_{S-1}], [x_q, y_S]``."""
    learner = make("lstm")
    batch = sinusoid(shots=4, queries=3, tasks=1)
    xs, ys, xq = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    got = learner.forward_task(batch.support_x, batch.support_y, batch.query_x)[0]
    for q in range(3):
        labels = torch.cat([torch.zeros(1, 1, dtype=ys.dtype), ys])  # y_0 = 0, y_1..y_S
        inputs = torch.cat([torch.cat([xs, xq[q : q + 1]]), labels], -1).unsqueeze(0)
        out, _ = learner.lstm(inputs)
        torch.testing.assert_close(got[q], learner.head(out[0, -1]), rtol=1e-10, atol=1e-12)


def test_snail_cached_query_step_equals_one_causal_sequence_per_query():
    learner = make("snail")
    batch = sinusoid(shots=7, queries=4, tasks=3)
    es = learner.encode_targets(batch.support_y, torch.float64)
    fast = learner.predict(batch.support_x, es, batch.query_x)
    slow = learner.sequences(batch.support_x, es, batch.query_x)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_snail_attention_is_causal():
    """Changing a later step never changes an earlier step's output."""
    learner = make("snail")
    u = torch.randn(1, 6, 2, dtype=torch.float64)
    v = u.clone()
    v[0, 4:] += 1.0
    out_u, out_v = learner.body(u), learner.body(v)
    torch.testing.assert_close(out_u[:, :4], out_v[:, :4], rtol=0, atol=0)
    assert (out_u[:, 4:] - out_v[:, 4:]).abs().max() > 1e-6


@pytest.mark.parametrize("kind", ["transformer", "lstm", "snail"])
def test_meta_gradient_matches_central_differences(kind, numeric_gradient):
    learner = make(kind, sizes=TINY, seed=2)
    batch = sinusoid(shots=3, queries=2, tasks=2, seed=4)
    params = list(learner.parameters())
    loss, _ = learner.meta_loss(batch)
    analytic = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["transformer", "lstm", "snail"])
def test_classification_predicts_ways_logits(kind):
    learner = make(kind, x_dim=2, y_dim=2, loss="cross_entropy", dtype=torch.float32)
    batch = RotatingBoundary(shots=6, queries=4).sample(3, torch.Generator().manual_seed(0))
    loss, metrics = learner.meta_loss(batch)
    assert loss.shape == () and 0 <= metrics["accuracy"] <= 1
    assert learner.adapt(batch[0])(batch[0].query_x).shape == (4, 2)
    per_task = learner.evaluate_batch(batch)[0]
    assert per_task["accuracy"].shape == (3,)


def test_random_support_prefix_only_when_training():
    learner = make("lstm", min_support=2)
    batch = sinusoid(shots=6)
    learner.eval()
    full = learner.forward_task(batch.support_x, batch.support_y, batch.query_x)
    expected = learner._loss(full, batch.query_y)
    torch.testing.assert_close(learner.meta_loss(batch)[0], expected)
    learner.train()
    torch.manual_seed(0)
    losses = {round(float(learner.meta_loss(batch)[0].detach()), 10) for _ in range(8)}
    assert len(losses) > 1  # different prefix lengths


def test_the_transformer_learns_sinusoids_in_a_few_hundred_steps():
    torch.manual_seed(0)
    learner = InContextTransformer(nn.Identity(), 1, 1, width=16, depth=1)
    opt = torch.optim.Adam(learner.parameters(), 3e-3)
    family, g = Sinusoid(shots=10, queries=10), torch.Generator().manual_seed(0)
    test = family.sample(100, torch.Generator().manual_seed(99))
    before = float(learner.evaluate_batch(test)[0]["loss"].mean())
    for _ in range(100):
        loss, _ = learner.meta_loss(family.sample(16, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(learner.evaluate_batch(test)[0]["loss"].mean())
    assert after < 0.75 * before  # 5.3 -> 3.1 at this seed


@pytest.mark.parametrize("kind", ["transformer", "lstm", "snail"])
def test_bad_input_gives_one_line_errors(kind):
    learner = make(kind)
    batch = sinusoid()
    with pytest.raises(TaskError, match="x_dim=1"):
        wide = batch.support_x.repeat(1, 1, 2), batch.query_x.repeat(1, 1, 2)
        learner.forward_task(wide[0], batch.support_y, wide[1])
    with pytest.raises(TaskError, match="y_dim=1"):
        learner.forward_task(batch.support_x, batch.support_y.repeat(1, 1, 3), batch.query_x)
    with pytest.raises(TaskError, match="empty"):
        learner.forward_task(batch.support_x[:, :0], batch.support_y[:, :0], batch.query_x)
    classifier = make(kind, x_dim=1, y_dim=2, loss="cross_entropy")
    labels = torch.full(batch.support_y.shape[:2], 2)
    with pytest.raises(TaskError, match="3-way but this learner reads at most 2-way"):
        classifier.forward_task(batch.support_x, labels, batch.query_x)
    with pytest.raises(ValueError, match="y_dim must be a positive integer"):
        make(kind, y_dim=0)


def test_bad_sizes():
    with pytest.raises(ValueError, match="divisible by heads"):
        InContextTransformer(nn.Identity(), 1, 1, width=10, heads=4)
    with pytest.raises(ValueError, match="max_support=3"):
        learner = make("snail", sizes=TINY)
        batch = sinusoid(shots=6)
        learner.forward_task(batch.support_x, batch.support_y, batch.query_x)


def band_image_episodes(tasks: int, generator: torch.Generator, ways=3, queries=2, size=8):
    """``ways``-way 1-shot episodes of ``size x size`` images, trivially separable: class
    ``c`` is a bright vertical band in column block ``c`` (3 pixels of noise flipped per
    query), and the band-to-label assignment is drawn per task, so the label of a query can
    only be read from the support set."""
    bands = torch.zeros(ways, 1, size, size)
    for c in range(ways):
        bands[c, 0, :, c * size // ways : (c + 1) * size // ways] = 1.0
    support_x = bands[torch.rand(tasks, ways, generator=generator).argsort(-1)]
    labels = torch.arange(ways)
    query_y = labels.repeat_interleave(queries)
    query_x = support_x[:, query_y].clone()
    pixels = query_x.view(tasks, ways * queries, -1)
    flip = torch.rand(pixels.shape, generator=generator).argsort(-1)[..., :3]
    pixels.scatter_(-1, flip, 1 - pixels.gather(-1, flip))
    return TaskBatch(support_x, labels.expand(tasks, -1), query_x, query_y.expand(tasks, -1))


IMAGE_LEARNERS = {
    "transformer": lambda e: InContextTransformer(
        e,
        e.embedding_dim,
        3,
        width=16,
        depth=1,
        heads=2,
        similarity_init=3.0,
        loss="cross_entropy",
    ),
    "lstm": lambda e: LabelDelayLSTM(e, e.embedding_dim, 3, hidden=16, loss="cross_entropy"),
    "snail": lambda e: SNAIL(
        e,
        e.embedding_dim,
        3,
        max_support=3,
        filters=8,
        key_size=8,
        value_size=8,
        loss="cross_entropy",
        shuffle_support=True,
    ),
}


@pytest.mark.parametrize("kind", ["transformer", "lstm", "snail"])
def test_image_episodes_through_conv4_are_learned(kind):
    torch.manual_seed(0)
    encoder = Conv4(1, None, hidden=8, image_size=8, blocks=2, norm="batch_episode")
    learner = IMAGE_LEARNERS[kind](encoder)
    test = band_image_episodes(64, torch.Generator().manual_seed(99))
    train = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(learner.parameters(), 3e-3)
    before = learner.evaluate_batch(test)[0]
    assert learner.adapt(test[0])(test[0].query_x).shape == (6, 3)
    for _ in range(100):
        loss, _ = learner.meta_loss(band_image_episodes(16, train))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = learner.evaluate_batch(test)[0]
    assert float(before["accuracy"].mean()) < 0.5  # chance is 1/3
    assert float(after["loss"].mean()) < 0.5 * float(before["loss"].mean())
    assert float(after["accuracy"].mean()) > 0.8


@pytest.mark.parametrize("kind", ["transformer", "lstm", "snail"])
def test_fewer_ways_at_test_read_the_first_slots_and_more_are_refused(kind):
    learner = make(kind, x_dim=2, y_dim=4, loss="cross_entropy")
    batch = RotatingBoundary(shots=6, queries=4, dtype=torch.float64).sample(
        2, torch.Generator().manual_seed(0)
    )  # 2-way
    logits = learner.forward_task(batch.support_x, batch.support_y, batch.query_x)
    assert logits.shape[-1] == 2
    # the same network's 4 outputs, of which the first 2 are the task's classes
    four = learner.predict(
        learner.features(batch.support_x),
        torch.nn.functional.one_hot(batch.support_y, 4).double(),
        learner.features(batch.query_x),
    )
    torch.testing.assert_close(logits, four[..., :2])
    # a random support prefix may miss a class the queries hold: the task's ways still count
    prefixed = make(kind, x_dim=2, y_dim=4, loss="cross_entropy", min_support=1)
    torch.manual_seed(0)
    for _ in range(6):
        assert torch.isfinite(prefixed.meta_loss(batch)[0])
    wide = make(kind, x_dim=2, y_dim=1, loss="cross_entropy")
    with pytest.raises(TaskError, match="2-way but this learner reads at most 1-way"):
        wide.meta_loss(batch)


def test_shuffled_support_reorders_each_task_only_while_training():
    learner = make("snail", shuffle_support=True)
    batch = sinusoid(shots=8, tasks=3)
    torch.manual_seed(0)
    sx, sy = learner.shuffled(batch.support_x, batch.support_y)

    def pairs(x, y):
        return {(float(a), float(b)) for a, b in zip(x[:, 0], y[:, 0])}

    for t in range(3):  # the same pairs, in another order
        assert pairs(sx[t], sy[t]) == pairs(batch.support_x[t], batch.support_y[t])
    assert not torch.equal(sx, batch.support_x)
    learner.eval()
    plain = make("snail")
    plain.eval()
    torch.testing.assert_close(learner.meta_loss(batch)[0], plain.meta_loss(batch)[0])
    learner.train()
    losses = {round(float(learner.meta_loss(batch)[0].detach()), 10) for _ in range(4)}
    assert len(losses) > 1
    with pytest.raises(ValueError, match="shuffle_support must be true or false"):
        make("snail", shuffle_support="yes")


def test_similarity_init_escapes_the_one_shot_plateau():
    """With default attention scores a query reads every support label equally, so the
    1-shot loss sits at log(ways) for a while; a similarity-based start leaves it at once."""

    def loss_after(steps, **init):
        torch.manual_seed(0)
        encoder = Conv4(1, None, hidden=8, image_size=8, blocks=2, norm="batch_episode")
        learner = InContextTransformer(
            encoder,
            encoder.embedding_dim,
            3,
            width=16,
            depth=1,
            heads=2,
            loss="cross_entropy",
            **init,
        )
        opt = torch.optim.Adam(learner.parameters(), 3e-3)
        train = torch.Generator().manual_seed(0)
        for _ in range(steps):
            loss, _ = learner.meta_loss(band_image_episodes(16, train))
            opt.zero_grad()
            loss.backward()
            opt.step()
        test = band_image_episodes(64, torch.Generator().manual_seed(99))
        return float(learner.evaluate_batch(test)[0]["loss"].mean())

    plateau = math.log(3)
    assert loss_after(80) > 0.9 * plateau
    assert loss_after(80, similarity_init=3.0) < 0.3 * plateau
    with pytest.raises(ValueError, match="similarity_init must be > 0"):
        InContextTransformer(nn.Identity(), 1, 1, similarity_init=0.0)


def test_snail_similarity_init_makes_keys_equal_to_queries():
    torch.manual_seed(0)
    plain = SNAIL(nn.Identity(), 3, 2, max_support=4, filters=2)
    torch.manual_seed(0)
    learner = SNAIL(nn.Identity(), 3, 2, max_support=4, filters=2, similarity_init=2.0)
    blocks = [b for b in learner.body if isinstance(b, AttentionBlock)]
    originals = [b for b in plain.body if isinstance(b, AttentionBlock)]
    assert len(blocks) == 3
    for block, original in zip(blocks, originals):
        torch.testing.assert_close(block.query.weight, 2.0 * original.query.weight)
        torch.testing.assert_close(block.key.weight, block.query.weight)
        assert not block.query.bias.any() and not block.key.bias.any()
    with pytest.raises(ValueError, match="similarity_init must be a number"):
        SNAIL(nn.Identity(), 3, 2, similarity_init="big")


def test_evaluation_encodes_each_task_alone():
    """With a batch-statistics encoder, a task's evaluated predictions are those it gets
    alone (one encoder call per task), while training pools the meta-batch."""
    torch.manual_seed(0)
    encoder = Conv4(1, None, hidden=4, image_size=8, blocks=2, norm="batch_episode")
    learner = IMAGE_LEARNERS["lstm"](encoder)
    batch = band_image_episodes(3, torch.Generator().manual_seed(5))
    learner.eval()
    together = learner.forward_task(batch.support_x, batch.support_y, batch.query_x)
    alone = learner.forward_task(batch.support_x[1:2], batch.support_y[1:2], batch.query_x[1:2])
    torch.testing.assert_close(together[1:2], alone)
    learner.train()
    pooled = learner.forward_task(batch.support_x, batch.support_y, batch.query_x)
    assert (pooled[1:2] - alone).abs().max() > 1e-4
