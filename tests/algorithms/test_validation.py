"""The Python API checks its inputs (``algorithms.validation``): ``adapt``, ``meta_loss``,
``evaluate_batch`` and ``metaloop.evaluate`` refuse bad batches, negative step counts and
untrainable learners with a one-line ``TaskError`` instead of returning numbers, raising a
raw ``IndexError``, or running zero steps silently."""

from __future__ import annotations

import pytest
import torch

import metaloop as ml
from metaloop.algorithms import MAML, ProtoNet, Reptile
from metaloop.algorithms.base import MetaLearner
from metaloop.algorithms.validation import unchecked
from metaloop.models import MLP
from metaloop.tasks import Sinusoid
from metaloop.tasks.base import TaskBatch, TaskError

torch.set_num_threads(1)


def regression_batch(tasks: int = 3) -> TaskBatch:
    return Sinusoid(shots=4, queries=4).sample(tasks, torch.Generator().manual_seed(0))


def classification_batch(tasks: int = 2, ways: int = 3) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(ways).repeat(2).repeat(tasks, 1)
    x = torch.randn(tasks, 2 * ways, 2, generator=g)
    return TaskBatch(x, labels, x + 0.1, labels.clone(), ways=ways)


def learners():
    return {
        "maml": (MAML(MLP(1, 1, hidden=[8]), inner_lr=0.01, inner_steps=1), regression_batch),
        "reptile": (Reptile(MLP(1, 1, hidden=[8]), inner_lr=0.01, inner_steps=1), regression_batch),
        "maml-ce": (
            MAML(MLP(2, 3, hidden=[8]), inner_lr=0.1, inner_steps=1, loss="cross_entropy"),
            classification_batch,
        ),
        "protonet": (ProtoNet(MLP(2, 4, hidden=[8])), classification_batch),
    }


def _replace(batch: TaskBatch, **fields) -> TaskBatch:
    parts = dict(
        support_x=batch.support_x,
        support_y=batch.support_y,
        query_x=batch.query_x,
        query_y=batch.query_y,
    )
    ways = fields.pop("ways", batch.ways)
    parts.update(fields)
    return TaskBatch(**parts, ways=ways)


def _labels_out_of_range(b: TaskBatch) -> TaskBatch:
    y = b.support_y.clone()
    y[0, 0] = (b.ways or 1) + 2
    return _replace(b, support_y=y)


FAULTS = {
    "empty support": (
        lambda b: _replace(b, support_x=b.support_x[:, :0], support_y=b.support_y[:, :0]),
        "support set is empty",
    ),
    "empty query": (
        lambda b: _replace(b, query_x=b.query_x[:, :0], query_y=b.query_y[:, :0]),
        "query set is empty",
    ),
    "task counts differ": (
        lambda b: _replace(b, support_x=b.support_x[:1], support_y=b.support_y[:1]),
        "must share the task dimension",
    ),
    "example counts differ": (
        lambda b: _replace(b, support_y=b.support_y[:, :-1]),
        "disagree in example count",
    ),
    "NaN input": (
        lambda b: _replace(b, query_x=b.query_x.clone().fill_(float("nan"))),
        "NaN or Inf",
    ),
}


@pytest.mark.parametrize("name", sorted(learners()))
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_meta_loss_and_evaluate_batch_refuse_bad_batches(name, fault):
    learner, make = learners()[name]
    damage, expected = FAULTS[fault]
    bad = damage(make())
    calls = [lambda: learner.evaluate_batch(bad)]
    if fault != "NaN input":  # meta_loss leaves data values to the trainer's non-finite guard
        calls.append(lambda: learner.meta_loss(bad))
    for call in calls:
        with pytest.raises(TaskError, match=expected) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["maml-ce", "protonet"])
def test_labels_outside_the_ways_are_refused(name):
    learner, make = learners()[name]
    bad = _labels_out_of_range(make())
    with pytest.raises(TaskError, match=r"labels must lie in 0\.\.2 for a 3-way task"):
        learner.meta_loss(bad)
    with pytest.raises(TaskError, match="support labels must lie in"):
        learner.adapt(bad[0])  # a Task knows its ways


def test_labels_beyond_the_model_outputs_are_a_task_error_not_an_index_error():
    """Without ``ways`` (a bare (x, y) pair) the labels are checked by the loss; its
    ``IndexError`` becomes a one-line ``TaskError``."""
    learner, make = learners()["maml-ce"]
    task = make()[0]
    y = task.support_y.clone()
    y[0] = 7
    with pytest.raises(TaskError, match=r"MAML\.adapt: a class label is outside the model's"):
        learner.adapt((task.support_x, y))
    y[0] = -1
    with pytest.raises(TaskError, match=r"support labels must lie in >= 0, found range -1\.\.2"):
        learner.adapt((task.support_x, y))


@pytest.mark.parametrize(
    "support,expected",
    [
        ((torch.zeros(0, 1), torch.zeros(0, 1)), "support set is empty"),
        ((torch.zeros(3, 1), torch.zeros(2, 1)), "disagree in example count: 3 vs 2"),
        ((1.0, torch.zeros(2, 1)), "support inputs must be a torch.Tensor, got float"),
        ((torch.full((2, 1), float("inf")), torch.zeros(2, 1)), "NaN or Inf"),
        ((torch.zeros(2, 1), torch.full((2, 1), float("nan"))), "targets contain NaN"),
        ("xy", "support must be a Task or a pair"),
    ],
)
def test_adapt_refuses_bad_support_sets(support, expected):
    learner, _ = learners()["maml"]
    with pytest.raises(TaskError, match=expected):
        learner.adapt(support)


@pytest.mark.parametrize("steps", [-3, -1, 1.5, True, "2"])
def test_negative_or_non_integer_step_counts_are_refused(steps):
    learner, make = learners()["maml"]
    batch = make()
    with pytest.raises(TaskError, match="steps must be"):
        learner.adapt(batch[0], steps=steps)
    with pytest.raises(TaskError, match="step counts must be"):
        learner.evaluate_batch(batch, [0, steps])
    with pytest.raises((TaskError, ValueError, TypeError)):
        ml.evaluate(learner, Sinusoid(shots=4, queries=4), episodes=2, steps=[steps])


def test_evaluate_checks_the_episodes_it_draws():
    class Broken:
        """A family whose tasks have an empty support set."""

        def sample(self, n, generator=None):
            return FAULTS["empty support"][0](regression_batch(n))

    learner, _ = learners()["maml"]
    with pytest.raises(TaskError, match="support set is empty"):
        ml.evaluate(learner, Broken(), episodes=2)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("kind", ["maml", "protonet"])
def test_a_learner_with_nothing_to_learn_is_refused_by_meta_loss_only(kind, frozen):
    if kind == "maml":
        model = MLP(1, 1, hidden=[8]).requires_grad_(False) if frozen else torch.nn.Identity()
        learner, batch = MAML(model, inner_lr=0.01, inner_steps=1), regression_batch()
    else:
        model = MLP(2, 4, hidden=[8]).requires_grad_(False) if frozen else torch.nn.Identity()
        learner, batch = ProtoNet(model), classification_batch()
    expected = "has 4 parameter tensors, all frozen" if frozen else "has no parameters"
    with pytest.raises(TaskError, match=f"{type(learner).__name__} {expected}: meta_loss"):
        learner.meta_loss(batch)
    learner.evaluate_batch(batch)  # evaluation needs no trainable parameters


def test_learners_defined_outside_metaloop_are_checked_too():
    class Mean(MetaLearner):
        def __init__(self):
            super().__init__("mse")
            self.bias = torch.nn.Parameter(torch.zeros(1))

        def adapt(self, support, steps=None):
            _, y = support if isinstance(support, tuple) else support.support
            return lambda q: y.mean(0) + self.bias + 0 * q

        def meta_loss(self, batch):
            loss = sum(
                self.loss_fn(self.adapt(t.support)(t.query_x), t.query_y) for t in batch
            ) / len(batch)
            return loss, {"loss": float(loss.detach())}

    learner = Mean()
    batch = regression_batch()
    learner.meta_loss(batch)
    with pytest.raises(TaskError, match="support set is empty"):
        learner.meta_loss(FAULTS["empty support"][0](batch))
    with pytest.raises(TaskError, match="steps must be >= 0, got -3"):
        learner.adapt(batch[0], steps=-3)


def test_only_the_outermost_call_is_checked_and_results_are_unchanged(monkeypatch):
    import metaloop.algorithms.validation as validation

    calls = []
    real = validation.validate_batch
    monkeypatch.setattr(
        validation, "validate_batch", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    learner, make = learners()["protonet"]
    batch = make()
    checked = learner.evaluate_batch(batch, [0])
    assert len(calls) == 1  # not once more per task through adapt
    with unchecked():
        plain = learner.evaluate_batch(batch, [0])
    assert len(calls) == 1
    assert all(torch.equal(checked[0][k], plain[0][k]) for k in plain[0])
    loss, _ = learner.meta_loss(batch)
    with unchecked():
        loss_plain, _ = learner.meta_loss(batch)
    assert torch.equal(loss, loss_plain)
