"""Fine-tuning baseline: supervised pretraining, per-task heads, frozen vs full fine-tuning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic_episodes import gaussian_episodes
from torch import nn

from metaloop.algorithms.finetune import FineTuneBaseline, pretrain
from metaloop.algorithms.protonet import ProtoNet
from metaloop.tasks import TaskBatch, TaskError

torch.set_num_threads(1)


def state(module):
    """Parameters only: batch-norm running statistics move with any train-mode forward."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_batched_head_fitting_equals_per_task_adapt():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(8, 6), nn.ReLU())
    learner = FineTuneBaseline(encoder, steps=30, lr=0.05)
    batch = gaussian_episodes(4, 3, 2, 4)
    before = state(encoder)
    metrics = learner.evaluate_batch(batch, steps=(0, 10, 30))
    assert set(metrics) == {0, 10, 30}
    # zero-initialised head: uniform predictions, loss log(ways)
    torch.testing.assert_close(
        metrics[0]["loss"], torch.full((4,), float(torch.log(torch.tensor(3.0))))
    )
    for s in (10, 30):
        for t, task in enumerate(batch):
            logits = learner.adapt(task, steps=s)(task.query_x)
            torch.testing.assert_close(
                F.cross_entropy(logits, task.query_y), metrics[s]["loss"][t], rtol=1e-4, atol=1e-5
            )
    assert all(torch.equal(v, state(encoder)[k]) for k, v in before.items())


def test_batch_norm_encoder_is_evaluated_per_episode_and_adapt_agrees():
    torch.manual_seed(3)
    encoder = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6, track_running_stats=False))
    learner = FineTuneBaseline(encoder.double(), steps=20, lr=0.05, head_init="prototypes")
    batch = gaussian_episodes(3, 3, 2, 4, dtype=torch.float64)
    together = learner.evaluate_batch(batch, steps=(20,))[20]["loss"]
    for t, task in enumerate(batch):
        alone = learner.evaluate_batch(TaskBatch.stack([task]), steps=(20,))[20]["loss"]
        torch.testing.assert_close(together[t], alone[0])
        logits = learner.adapt(task, steps=20)(task.query_x)
        torch.testing.assert_close(F.cross_entropy(logits, task.query_y), alone[0])


def test_logistic_regression_fits_separable_support():
    torch.manual_seed(0)
    learner = FineTuneBaseline(nn.Identity(), steps=300, lr=0.1)
    task = gaussian_episodes(1, 4, 5, 1, informative=8)[0]
    logits = learner.adapt(task)(task.support_x)
    assert float((logits.argmax(-1) == task.support_y).float().mean()) == 1.0


def test_prototype_initialisation_is_protonet_before_any_step():
    torch.manual_seed(0)
    encoder = nn.Linear(8, 5)
    learner = FineTuneBaseline(encoder, head_init="prototypes")
    task = gaussian_episodes(1, 4, 3, 2)[0]
    ours = learner.adapt(task, steps=0)(task.query_x)
    proto = ProtoNet(encoder).adapt(task)(task.query_x)
    # W_k = 2 c_k, b_k = -|c_k|^2 differs from -|z - c_k|^2 by |z|^2, constant per row
    torch.testing.assert_close(ours.log_softmax(-1), proto.log_softmax(-1), atol=1e-4, rtol=1e-4)


def test_finetune_all_changes_features_on_copies_only():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.ReLU())
    head_only = FineTuneBaseline(encoder, steps=20, lr=0.05)
    everything = FineTuneBaseline(encoder, finetune="all", steps=20, lr=0.05)
    batch = gaussian_episodes(2, 3, 3, 2)
    before = state(encoder)
    task = batch[0]
    a = head_only.adapt(task)(task.query_x)
    b = everything.adapt(task)(task.query_x)
    assert not torch.allclose(a, b)
    metrics = everything.evaluate_batch(batch, steps=(0, 20))
    assert metrics[20]["accuracy"].shape == (2,)
    torch.testing.assert_close(F.cross_entropy(b, task.query_y), metrics[20]["loss"][0])
    assert all(torch.equal(v, state(encoder)[k]) for k, v in before.items())


def test_pretrain_on_tensors_dataset_objects_and_pairs():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centers = 3.0 * torch.randn(6, 8, generator=g)
    y = torch.arange(6).repeat(40)
    x = centers[y] + 0.5 * torch.randn(240, 8, generator=g)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    result = pretrain(encoder, x, y, epochs=15, lr=1e-2, batch_size=32, generator=g)
    assert result.head.out_features == 6 and len(result.loss) == 15
    assert result.accuracy[-1] > 0.95 and result.loss[-1] < result.loss[0]

    class Images:
        images, labels = x, y

    learner = FineTuneBaseline(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU()), num_classes=6, embedding_dim=16
    )
    head = learner.head
    out = learner.pretrain(Images(), epochs=2, generator=g)
    assert out.head is head
    pairs = [(x[i], int(y[i])) for i in range(64)]
    out = pretrain(nn.Linear(8, 4), pairs, num_classes=6, epochs=1, batch_size=16)
    assert len(out.loss) == 1

    class UInt8Images(torch.utils.data.Dataset):  # like metaloop.data.ClassDataset
        num_classes = 3

        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.full((1, 2, 2), 255, dtype=torch.uint8), i % 3

    seen = []
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    encoder.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    out = pretrain(encoder, UInt8Images(), epochs=1, batch_size=4, transform=lambda t: t - 0.5)
    assert out.head.out_features == 3
    assert all(t.dtype == torch.float32 and bool((t == 0.5).all()) for t in seen)
    with pytest.raises(ValueError, match="num_classes or head"):
        pretrain(nn.Linear(8, 4), pairs)
    with pytest.raises(ValueError, match="labels are required"):
        pretrain(nn.Linear(8, 4), x)


def test_meta_loss_is_plain_classification_loss():
    torch.manual_seed(0)
    encoder = nn.Linear(8, 5)
    learner = FineTuneBaseline(encoder, num_classes=3, embedding_dim=5)
    batch = gaussian_episodes(2, 3, 2, 2)
    loss, metrics = learner.meta_loss(batch)
    x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
    y = torch.cat([batch.support_y, batch.query_y], 1).flatten()
    torch.testing.assert_close(loss, F.cross_entropy(learner.head(encoder(x)), y))
    assert "accuracy" in metrics

    # global labels from batch.info take precedence over the task's labels
    global_labels = torch.cat([batch.support_y, batch.query_y], 1) + 7
    tagged = TaskBatch(
        batch.support_x,
        batch.support_y,
        batch.query_x,
        batch.query_y,
        3,
        {"global_labels": global_labels},
    )
    wide = FineTuneBaseline(encoder, num_classes=10, embedding_dim=5)
    loss, _ = wide.meta_loss(tagged)
    torch.testing.assert_close(loss, F.cross_entropy(wide.head(encoder(x)), y + 7))
    with pytest.raises(TaskError, match="exceed the pretraining head"):
        learner.meta_loss(tagged)

    # episodes from metaloop.data carry info["classes"][t, label] = dataset class id
    classes = torch.tensor([[4, 0, 9], [2, 7, 5]])
    episode = TaskBatch(
        batch.support_x, batch.support_y, batch.query_x, batch.query_y, 3, {"classes": classes}
    )
    loss, _ = wide.meta_loss(episode)
    mapped = torch.gather(classes, 1, torch.cat([batch.support_y, batch.query_y], 1)).flatten()
    torch.testing.assert_close(loss, F.cross_entropy(wide.head(encoder(x)), mapped))


def test_errors_are_clear():
    with pytest.raises(ValueError, match="needs embedding_dim"):
        FineTuneBaseline(nn.Linear(8, 4), num_classes=5)
    with pytest.raises(ValueError, match="needs a pretraining head"):
        FineTuneBaseline(nn.Linear(8, 4)).meta_loss(gaussian_episodes(1, 2, 1, 1))
    with pytest.raises(ValueError, match="finetune must be"):
        FineTuneBaseline(nn.Linear(8, 4), finetune="last")
    task = gaussian_episodes(1, 3, 1, 1)[0]
    with pytest.raises(TaskError, match="class 1 has no support examples"):
        FineTuneBaseline(nn.Linear(8, 4)).adapt((task.support_x, torch.tensor([0, 2, 2])))
