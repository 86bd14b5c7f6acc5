"""ProtoNet: logits, prototypes and gradients against hand loops; shapes, errors, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic_episodes import gaussian_episodes
from torch import nn

from metaloop.algorithms.protonet import ProtoNet
from metaloop.tasks import TaskBatch, TaskError

torch.set_num_threads(1)


def hand_logits(encoder, batch, distance="squared_euclidean", scale=1.0):
    out = []
    for t in range(len(batch)):
        zs, zq = encoder(batch.support_x[t]), encoder(batch.query_x[t])
        ways = int(batch.support_y[t].max()) + 1
        protos = [zs[batch.support_y[t] == k].mean(0) for k in range(ways)]
        rows = []
        for q in zq:
            if distance == "squared_euclidean":
                rows.append(torch.stack([-((q - c) ** 2).sum() for c in protos]))
            else:
                rows.append(torch.stack([F.cosine_similarity(q, c, dim=0) for c in protos]))
        out.append(torch.stack(rows) * scale)
    return torch.stack(out)


@pytest.mark.parametrize("distance", ["squared_euclidean", "cosine"])
def test_logits_and_gradient_match_hand_loop(distance):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    batch = gaussian_episodes(3, 4, 2, 3, dtype=torch.float64)
    learner = ProtoNet(encoder, distance=distance, temperature=0.5)
    scores, ways = learner.episode_scores(batch)
    expected = hand_logits(encoder, batch, distance, scale=2.0)
    assert ways == 4 and scores.shape == (3, 12, 4)
    torch.testing.assert_close(scores, expected)

    loss, metrics = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, list(encoder.parameters()))
    hand_loss = F.cross_entropy(expected.flatten(0, 1), batch.query_y.flatten())
    hand_grads = torch.autograd.grad(hand_loss, list(encoder.parameters()))
    torch.testing.assert_close(loss, hand_loss)
    for a, b in zip(grads, hand_grads):
        torch.testing.assert_close(a, b)
    assert set(metrics) >= {"loss", "accuracy"} and isinstance(metrics["loss"], float)


def test_one_shot_prototypes_are_the_support_embeddings():
    encoder = nn.Linear(8, 5)
    batch = gaussian_episodes(2, 3, 1, 2)
    # shuffle support order so prototypes must follow labels, not positions
    perm = torch.tensor([2, 0, 1])
    batch = TaskBatch(
        batch.support_x[:, perm], batch.support_y[:, perm], batch.query_x, batch.query_y, ways=3
    )
    learner = ProtoNet(encoder)
    z = encoder(batch.support_x)
    protos = learner.prototypes(z, batch.support_y, 3)
    for t in range(2):
        for i in range(3):
            torch.testing.assert_close(protos[t, batch.support_y[t, i]], z[t, i])


def test_one_encoder_forward_per_meta_batch():
    calls = []
    encoder = nn.Linear(8, 4)
    encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    learner = ProtoNet(encoder)
    learner.meta_loss(gaussian_episodes(5, 3, 2, 4))
    assert calls == [5 * 3 * (2 + 4)]


def test_ways_come_from_each_batch_so_train_and_test_ways_differ():
    learner = ProtoNet(nn.Linear(8, 4))
    big = gaussian_episodes(1, 20, 2, 1, ways_attr=False)
    small = gaussian_episodes(4, 5, 1, 3)
    assert learner.episode_scores(big)[0].shape == (1, 20, 20)
    metrics = learner.evaluate_batch(small, steps=(0, 3))
    assert set(metrics) == {0, 3}
    assert metrics[0]["loss"].shape == (4,) and metrics[3]["accuracy"].shape == (4,)


def test_adapt_predictor_agrees_with_evaluate_batch():
    torch.manual_seed(1)
    learner = ProtoNet(nn.Linear(8, 4))
    batch = gaussian_episodes(3, 4, 3, 5)
    metrics = learner.evaluate_batch(batch)
    for t, task in enumerate(batch):
        logits = learner.adapt(task)(task.query_x)
        assert logits.shape == (20, 4)
        torch.testing.assert_close(F.cross_entropy(logits, task.query_y), metrics[0]["loss"][t])


def _batch_norm_encoder():
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.ReLU(), nn.Linear(16, 4)
    ).double()


def test_batch_statistics_are_per_episode_in_evaluation_and_adapt():
    """With batch-norm statistics an episode's scores must not depend on the other episodes
    evaluated with it, and ``adapt`` must reproduce them (lake-runs scores through it)."""
    torch.manual_seed(2)
    learner = ProtoNet(_batch_norm_encoder()).eval()
    batch = gaussian_episodes(3, 4, 2, 3, dtype=torch.float64)
    together, _ = learner.episode_scores(batch)
    for t, task in enumerate(batch):
        alone = hand_logits_joint(learner.encoder, task)
        torch.testing.assert_close(together[t], alone)
        torch.testing.assert_close(learner.adapt(task)(task.query_x), alone)
    # the test has teeth: statistics pooled over the three episodes give other scores
    x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    pooled = learner.encoder(x)
    assert not torch.allclose(pooled[:8], learner.encoder(batch.support_x[0]))


def hand_logits_joint(encoder, task):
    """Prototypical logits with support and query embedded in one pass (one episode)."""
    z = encoder(torch.cat([task.support_x, task.query_x]))
    zs, zq = z[: len(task.support_x)], z[len(task.support_x) :]
    ways = int(task.support_y.max()) + 1
    protos = torch.stack([zs[task.support_y == k].mean(0) for k in range(ways)])
    return -((zq[:, None] - protos[None]) ** 2).sum(-1)


def test_feature_map_encoder_is_flattened():
    encoder = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
    batch = gaussian_episodes(2, 3, 2, 2, dim=16)
    images = TaskBatch(
        batch.support_x.view(2, 6, 1, 4, 4),
        batch.support_y,
        batch.query_x.view(2, 6, 1, 4, 4),
        batch.query_y,
        ways=3,
    )
    scores, _ = ProtoNet(encoder).episode_scores(images)
    assert scores.shape == (2, 6, 3)


def test_errors_are_clear():
    learner = ProtoNet(nn.Linear(8, 4))
    batch = gaussian_episodes(2, 3, 1, 2)
    sy = batch.support_y.clone()
    sy[1, 2] = 0  # task 1 has no support example of class 2
    with pytest.raises(TaskError, match="class 2 has no support examples in task 1"):
        learner.meta_loss(TaskBatch(batch.support_x, sy, batch.query_x, batch.query_y, ways=3))
    with pytest.raises(TaskError, match=r"labels must lie in 0\.\.2"):
        bad_q = batch.query_y.clone()
        bad_q[0, 0] = 7
        learner.meta_loss(TaskBatch(batch.support_x, batch.support_y, batch.query_x, bad_q, ways=3))
    with pytest.raises(ValueError, match="encoder must map"):  # (a trainable one)
        ProtoNet(nn.Sequential(nn.Linear(8, 4), nn.Flatten(0))).meta_loss(batch)
    with pytest.raises(ValueError, match="unknown distance"):
        ProtoNet(nn.Linear(8, 4), distance="l1")
    with pytest.raises(ValueError, match="temperature"):
        ProtoNet(nn.Linear(8, 4), temperature=0.0)


def test_learned_temperature_receives_gradient():
    learner = ProtoNet(nn.Linear(8, 4), distance="cosine", learn_temperature=True)
    assert any(p is learner.log_scale for p in learner.parameters())
    loss, _ = learner.meta_loss(gaussian_episodes(2, 3, 2, 2))
    loss.backward()
    assert learner.log_scale.grad is not None and learner.temperature == pytest.approx(0.1)


def test_learns_to_ignore_noise_dimensions():
    torch.manual_seed(0)
    learner = ProtoNet(nn.Linear(8, 8))
    test = gaussian_episodes(50, 5, 1, 5, seed=123)
    before = float(learner.evaluate_batch(test)[0]["accuracy"].mean())
    opt = torch.optim.Adam(learner.parameters(), 1e-2)
    for i in range(100):
        loss, _ = learner.meta_loss(gaussian_episodes(8, 10, 1, 5, seed=i))  # 10-way train
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(learner.evaluate_batch(test)[0]["accuracy"].mean())
    assert after > 0.85 and after > before + 0.2, (before, after)


def test_test_time_shift_averages_embeddings_of_translated_views():
    """Hand computation: every image embedded at the 9 one-pixel translations (zeros shifted
    in), embeddings averaged, then ProtoNet as usual; ``adapt`` agrees."""
    torch.manual_seed(2)
    encoder = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten()).double()
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(2, 3, 1, 6, 6, generator=g, dtype=torch.float64)
    qx = torch.randn(2, 6, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.arange(3)
    batch = TaskBatch(sx, y.expand(2, -1), qx, y.repeat(2).expand(2, -1), ways=3)
    learner = ProtoNet(encoder)
    plain = learner.evaluate_batch(batch)[0]["loss"]
    learner.test_time_shift = 1

    def shifted(x, dx, dy):  # out[i, j] = in[i - dy, j - dx], zero border
        out = torch.zeros_like(x)
        h, w = x.shape[-2:]
        out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
            ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
        ]
        return out

    offsets = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]

    def averaged(x):
        return torch.stack([encoder(shifted(x, dx, dy)) for dx, dy in offsets]).mean(0)

    got = learner.evaluate_batch(batch)[0]["loss"]
    for t in range(2):
        zs, zq = averaged(sx[t]), averaged(qx[t])
        logits = -((zq[:, None] - zs[None]) ** 2).sum(-1)  # one shot: prototypes = zs
        expected = F.cross_entropy(logits, batch.query_y[t])
        torch.testing.assert_close(got[t], expected, rtol=1e-10, atol=1e-12)
        predicted = learner.adapt((sx[t], batch.support_y[t]))(qx[t])
        torch.testing.assert_close(F.cross_entropy(predicted, batch.query_y[t]), expected)
    assert not torch.allclose(got, plain)
    vectors = gaussian_episodes(1, 2, 1, 1)
    with pytest.raises(TaskError, match=r"examples must be \[C, H, W\], got shape \(8,\)"):
        learner.evaluate_batch(vectors)


def test_channels_last_encoder_gives_the_same_loss_and_gradient():
    from metaloop.models import Conv4

    g = torch.Generator().manual_seed(3)
    sx = torch.randn(2, 6, 1, 28, 28, generator=g, dtype=torch.float64)
    qx = torch.randn(2, 9, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.arange(3)
    batch = TaskBatch(sx, y.repeat(2).expand(2, -1), qx, y.repeat(3).expand(2, -1), ways=3)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        encoder = Conv4(1, None, hidden=8, image_size=28, norm="batch_episode").double()
        learner = ProtoNet(encoder, channels_last=channels_last)
        conv = encoder.features[1].conv.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        loss, _ = learner.meta_loss(batch)
        results.append((loss, torch.autograd.grad(loss, list(encoder.parameters()))))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=0)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def _conv_episodes(dtype=torch.float32):
    g = torch.Generator().manual_seed(4)
    sx = torch.randn(2, 6, 1, 28, 28, generator=g, dtype=dtype)
    qx = torch.randn(2, 9, 1, 28, 28, generator=g, dtype=dtype)
    y = torch.arange(3)
    return TaskBatch(sx, y.repeat(2).expand(2, -1), qx, y.repeat(3).expand(2, -1), ways=3)


def test_bfloat16_autocast_trains_close_to_float32_and_evaluates_in_float32():
    from metaloop.models import Conv4

    batch = _conv_episodes()
    results = []
    for autocast in (None, "bfloat16"):
        torch.manual_seed(0)
        encoder = Conv4(1, None, hidden=16, image_size=28, norm="batch_episode")
        learner = ProtoNet(encoder, channels_last=True, autocast=autocast)
        loss, _ = learner.meta_loss(batch)
        assert loss.dtype == torch.float32  # distances and loss are float32
        grads = torch.autograd.grad(loss, list(encoder.parameters()))
        assert all(g.dtype == torch.float32 for g in grads)
        results.append((learner, loss, torch.cat([g.flatten() for g in grads])))
    (fp32, loss_a, grad_a), (bf16, loss_b, grad_b) = results
    assert not torch.equal(loss_a, loss_b)  # the encoder really ran in bfloat16
    torch.testing.assert_close(loss_b, loss_a, rtol=0.03, atol=0)
    assert F.cosine_similarity(grad_a, grad_b, dim=0) > 0.98
    # evaluation is the float32 network's, whatever the training precision
    fp32.eval(), bf16.eval()
    a, b = fp32.evaluate_batch(batch)[0], bf16.evaluate_batch(batch)[0]
    torch.testing.assert_close(b["loss"], a["loss"], rtol=0, atol=0)


def test_float64_learner_without_autocast_stays_float64():
    from metaloop.models import Conv4

    encoder = Conv4(1, None, hidden=4, image_size=28, norm="batch_episode").double()
    loss, _ = ProtoNet(encoder).meta_loss(_conv_episodes(torch.float64))
    assert loss.dtype == torch.float64


@pytest.mark.parametrize("value", ["int8", "float32", torch.float32, 16])
def test_unknown_autocast_dtype_is_refused(value):
    with pytest.raises(ValueError, match=r"autocast.*bfloat16"):
        ProtoNet(nn.Flatten(), autocast=value)


def hand_balanced(p, sweeps=300):
    """Matrix scaling in probability space: columns to Q / W, then rows to 1, repeatedly."""
    queries, ways = p.shape
    for _ in range(sweeps):
        p = p / p.sum(0, keepdim=True) * (queries / ways)
        p = p / p.sum(1, keepdim=True)
    return p


def hand_refined_logits(encoder, batch, steps, scale=1.0, balanced=False):
    """Soft k-means written per task and per class with Python loops (with ``balanced``,
    the weights matrix-scaled to equal class mass)."""
    out = []
    for t in range(len(batch)):
        zs, zq, ys = encoder(batch.support_x[t]), encoder(batch.query_x[t]), batch.support_y[t]
        ways = int(ys.max()) + 1
        protos = [zs[ys == k].mean(0) for k in range(ways)]
        for _ in range(steps):
            d = torch.stack([torch.stack([((q - c) ** 2).sum() for c in protos]) for q in zq])
            w = (-d * scale).softmax(-1)
            if balanced:
                w = hand_balanced(w)
            protos = [
                (zs[ys == k].sum(0) + (w[:, k : k + 1] * zq).sum(0))
                / ((ys == k).sum() + w[:, k].sum())
                for k in range(ways)
            ]
        out.append(torch.stack([torch.stack([-((q - c) ** 2).sum() for c in protos]) for q in zq]))
    return torch.stack(out) * scale


def test_transductive_refinement_is_soft_k_means_over_the_queries():
    torch.manual_seed(2)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    batch = gaussian_episodes(3, 4, 2, 3, dtype=torch.float64)
    inductive = ProtoNet(encoder, temperature=0.5)
    for steps in (0, 1, 3):
        learner = ProtoNet(encoder, temperature=0.5, transductive_steps=steps)
        scores, _ = learner.episode_scores(batch)
        torch.testing.assert_close(scores, hand_refined_logits(encoder, batch, steps, 2.0))
    assert torch.equal(
        ProtoNet(encoder, transductive_steps=0).episode_scores(batch)[0],
        ProtoNet(encoder).episode_scores(batch)[0],
    )
    assert not torch.allclose(scores, inductive.episode_scores(batch)[0])
    # a query's scores depend on the other queries of its task, not on other tasks
    task = batch[0]
    alone = learner.adapt(task)(task.query_x)
    torch.testing.assert_close(alone, scores[0])
    assert not torch.allclose(learner.adapt(task)(task.query_x[:2]), scores[0, :2])


def test_balanced_refinement_is_soft_k_means_with_matrix_scaled_weights():
    torch.manual_seed(4)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    batch = gaussian_episodes(3, 4, 1, 2, dtype=torch.float64)
    for steps in (1, 3):
        learner = ProtoNet(
            encoder, temperature=0.5, transductive_steps=steps, transductive_balance=True
        )
        scores, _ = learner.episode_scores(batch)
        want = hand_refined_logits(encoder, batch, steps, 2.0, balanced=True)
        torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-6)
        plain = ProtoNet(encoder, temperature=0.5, transductive_steps=steps)
        assert not torch.allclose(scores, plain.episode_scores(batch)[0])
    with pytest.raises(ValueError, match="needs transductive_steps >= 1"):
        ProtoNet(encoder, transductive_balance=True)
    with pytest.raises(ValueError, match="transductive_balance must be true or false"):
        ProtoNet(encoder, transductive_steps=1, transductive_balance=1)


def test_transductive_refinement_gradient_matches_finite_differences():
    torch.manual_seed(3)
    batch = gaussian_episodes(2, 3, 2, 2, dim=4, dtype=torch.float64)
    learner = ProtoNet(nn.Identity(), temperature=2.0, transductive_steps=2)

    def loss(zs, zq):
        scores = learner.scores(zs, batch.support_y, zq, 3)
        return F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten())

    zs = batch.support_x.clone().requires_grad_()
    zq = batch.query_x.clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (zs, zq), eps=1e-6, atol=1e-7)


def test_transductive_steps_must_be_a_count():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="transductive_steps must be an integer >= 0"):
            ProtoNet(nn.Linear(8, 4), transductive_steps=bad)


# -- auxiliary global classification ---------------------------------------------------------


class _Embedder(nn.Sequential):
    """A small encoder that declares its flattened output size, as Conv4(ways=None) does."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        self.embedding_dim = 4


def _with_classes(batch: TaskBatch, num_classes: int, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    classes = torch.stack(
        [torch.randperm(num_classes, generator=g)[: batch.ways] for _ in range(len(batch))]
    )
    return TaskBatch(
        batch.support_x,
        batch.support_y,
        batch.query_x,
        batch.query_y,
        batch.ways,
        info={"classes": classes},
    )


def _examples_with_dataset_classes(batch: TaskBatch):
    """``(inputs, dataset classes)`` of every task's support, then query, set."""
    for t in range(len(batch)):
        classes = batch.info["classes"][t]
        yield batch.support_x[t], classes[batch.support_y[t]]
        yield batch.query_x[t], classes[batch.query_y[t]]


def test_global_loss_adds_weighted_cross_entropy_over_dataset_classes():
    torch.manual_seed(0)
    encoder = _Embedder().double()
    batch = _with_classes(gaussian_episodes(3, 4, 2, 3, dtype=torch.float64), num_classes=11)
    learner = ProtoNet(encoder, global_classes=11, global_loss_weight=0.3).double()
    loss, metrics = learner.meta_loss(batch)

    # reference: the plain episode loss plus 0.3 x CE of the head on each example's class
    episode = F.cross_entropy(hand_logits(encoder, batch).flatten(0, 1), batch.query_y.flatten())
    head = learner.global_head
    ce = [
        F.cross_entropy(head(encoder(x)), target, reduction="none")
        for x, target in _examples_with_dataset_classes(batch)
    ]
    expected = episode + 0.3 * torch.cat(ce).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["query_loss"] == pytest.approx(float(episode))
    assert metrics["loss"] == pytest.approx(float(expected))

    params = list(learner.parameters())
    grads = torch.autograd.grad(loss, params)
    hand = torch.autograd.grad(expected, params)
    for a, b in zip(grads, hand):
        torch.testing.assert_close(a, b)
    assert grads[-2].abs().sum() > 0  # the head weight learns


def test_global_head_is_used_in_training_only():
    torch.manual_seed(1)
    batch = _with_classes(gaussian_episodes(2, 3, 1, 2), num_classes=7)
    plain = ProtoNet(_Embedder())
    aux = ProtoNet(_Embedder(), global_classes=7, global_loss_weight=1.0)
    aux.encoder.load_state_dict(plain.encoder.state_dict())
    torch.testing.assert_close(aux.episode_scores(batch)[0], plain.episode_scores(batch)[0])
    # weight 0 keeps the head (checkpoint shape) but not the term
    zero = ProtoNet(_Embedder(), global_classes=7, global_loss_weight=0.0)
    zero.encoder.load_state_dict(plain.encoder.state_dict())
    torch.testing.assert_close(zero.meta_loss(batch)[0], plain.meta_loss(batch)[0])
    assert "global_loss" in aux.meta_loss(batch)[1]


def test_global_loss_errors_are_clear():
    with pytest.raises(ValueError, match="needs global_classes"):
        ProtoNet(_Embedder(), global_loss_weight=0.5)
    with pytest.raises(ValueError, match="global_loss_weight must be"):
        ProtoNet(_Embedder(), global_classes=5, global_loss_weight=-1.0)
    with pytest.raises(ValueError, match="global_classes must be an integer >= 2"):
        ProtoNet(_Embedder(), global_classes=1, global_loss_weight=0.5)
    with pytest.raises(ValueError, match="embedding_dim"):
        ProtoNet(nn.Linear(8, 4), global_classes=5, global_loss_weight=0.5)
    learner = ProtoNet(_Embedder(), global_classes=5, global_loss_weight=0.5)
    with pytest.raises(TaskError, match="info\\['classes'\\]"):
        learner.meta_loss(gaussian_episodes(2, 3, 1, 2))
    with pytest.raises(TaskError, match="exceed the head's 5 classes"):
        learner.meta_loss(_with_classes(gaussian_episodes(2, 3, 1, 2), num_classes=9, seed=3))


def test_a_fixed_temperature_is_a_setting_and_a_learned_one_is_state():
    fixed = ProtoNet(nn.Linear(8, 4))
    assert "log_scale" not in fixed.state_dict()
    # an evaluation with another distance (and so another default temperature) keeps its
    # own value, also from checkpoints that saved the old fixed scale
    cosine = ProtoNet(nn.Linear(8, 4), distance="cosine")
    old_checkpoint = {**fixed.state_dict(), "log_scale": torch.tensor(0.0)}
    cosine.load_state_dict(old_checkpoint)
    assert cosine.temperature == pytest.approx(0.1)
    cosine.load_state_dict(fixed.state_dict())
    assert cosine.temperature == pytest.approx(0.1)

    learned = ProtoNet(nn.Linear(8, 4), learn_temperature=True)
    with torch.no_grad():
        learned.log_scale.fill_(2.0)
    again = ProtoNet(nn.Linear(8, 4), learn_temperature=True)
    again.load_state_dict(learned.state_dict())
    assert again.temperature == pytest.approx(float(torch.exp(torch.tensor(-2.0))))


def test_cosine_global_head_adds_the_cosface_loss():
    torch.manual_seed(3)
    encoder = _Embedder().double()
    batch = _with_classes(gaussian_episodes(2, 3, 2, 2, dtype=torch.float64), num_classes=9)
    learner = ProtoNet(
        encoder,
        global_classes=9,
        global_loss_weight=0.4,
        global_classifier="cosine",
        global_scale=12.0,
        global_margin=0.25,
    ).double()
    loss, metrics = learner.meta_loss(batch)

    weight = learner.global_head.weight
    ce = []
    for x, target in _examples_with_dataset_classes(batch):
        z = encoder(x)
        cos = (z / z.norm(dim=1, keepdim=True)) @ (weight / weight.norm(dim=1, keepdim=True)).T
        margin = 0.25 * F.one_hot(target, 9).double()
        ce.append(F.cross_entropy(12.0 * (cos - margin), target, reduction="none"))
    episode = F.cross_entropy(hand_logits(encoder, batch).flatten(0, 1), batch.query_y.flatten())
    expected = episode + 0.4 * torch.cat(ce).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["global_loss"] == pytest.approx(float(torch.cat(ce).mean()))
    grads = torch.autograd.grad(loss, list(learner.parameters()))
    hand = torch.autograd.grad(expected, list(learner.parameters()))
    for a, b in zip(grads, hand):
        torch.testing.assert_close(a, b)


def test_global_classifier_options_are_checked():
    with pytest.raises(ValueError, match="unknown global_classifier 'arc'; choose one of linear"):
        ProtoNet(_Embedder(), global_classes=5, global_loss_weight=0.5, global_classifier="arc")
    with pytest.raises(ValueError, match="needs global_classifier='cosine'"):
        ProtoNet(_Embedder(), global_classes=5, global_loss_weight=0.5, global_margin=0.2)
    with pytest.raises(ValueError, match="margin must be a number in"):
        ProtoNet(
            _Embedder(),
            global_classes=5,
            global_loss_weight=0.5,
            global_classifier="cosine",
            global_margin=1.5,
        )
