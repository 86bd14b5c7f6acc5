"""Balanced assignment: the wrapped learner's query log-probabilities, Sinkhorn-balanced per
task, on task batches and through ``adapt``, for metric, gradient-based and ensembled
learners; refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _eval_helpers import Blobs, maml, protonet

from metaloop.algorithms import MAML, ProtoNet
from metaloop.evaluation import BalancedAssignment, Ensemble, evaluate
from metaloop.functional.assignment import balance_log_probs
from metaloop.models import MLP
from metaloop.tasks import TaskBatch, TaskError

torch.set_num_threads(1)


@pytest.fixture
def batch() -> TaskBatch:
    return Blobs(shots=1, queries=3, spread=1.0).sample(5, torch.Generator().manual_seed(0))


def _reference(learner, batch: TaskBatch, steps: int) -> torch.Tensor:
    """Per task: adapt, log-softmax the query scores, balance them."""
    rows = []
    for task in batch:
        with torch.enable_grad():
            predictor = learner.adapt(task.support, steps=steps)
        with torch.no_grad():
            rows.append(balance_log_probs(F.log_softmax(predictor(task.query_x), -1)))
    return torch.stack(rows)


@pytest.mark.parametrize("make", ["protonet", "maml", "ensemble"])
def test_balanced_predictions_match_a_per_task_reference(batch, make) -> None:
    inner = {
        "protonet": lambda: protonet(0),
        "maml": lambda: maml(1),
        "ensemble": lambda: Ensemble([protonet(0), maml(1)]),
    }[make]().eval()
    balanced = BalancedAssignment(inner)
    steps = 0 if make == "protonet" else 1
    log_p = _reference(inner, batch, steps)
    metrics = balanced.evaluate_batch(batch, [steps])[steps]
    nll = -log_p.gather(-1, batch.query_y.unsqueeze(-1)).squeeze(-1).mean(-1)
    torch.testing.assert_close(metrics["loss"], nll, rtol=1e-4, atol=1e-5)
    acc = (log_p.argmax(-1) == batch.query_y).float().mean(-1)
    torch.testing.assert_close(metrics["accuracy"], acc)
    task = batch[2]
    with torch.no_grad():
        got = balanced.adapt(task.support, steps)(task.query_x)
    torch.testing.assert_close(got, log_p[2], rtol=1e-4, atol=1e-5)
    # every task's predicted class counts are now (close to) balanced in mass
    torch.testing.assert_close(log_p.exp().sum(1), torch.full((5, 3), 3.0), rtol=1e-3, atol=1e-3)


def test_balancing_corrects_a_classifier_biased_towards_one_class(batch) -> None:
    """A ProtoNet whose class 0 logit is inflated predicts class 0 for most queries;
    balanced, the bias is a column scaling and Sinkhorn removes it exactly."""

    class Biased(ProtoNet):
        def scores(self, z_support, y_support, z_query, ways):
            s = super().scores(z_support, y_support, z_query, ways)
            return s + torch.tensor([8.0, 0.0, 0.0])

    torch.manual_seed(0)
    biased, plain = Biased(MLP(2, 4, hidden=(8,))).eval(), protonet(0).eval()
    many = Blobs(shots=1, queries=3, spread=1.0).sample(40, torch.Generator().manual_seed(1))
    acc = {
        name: float(model.evaluate_batch(many)[0]["accuracy"].mean())
        for name, model in {
            "biased": biased,
            "biased+balanced": BalancedAssignment(biased),
            "plain+balanced": BalancedAssignment(plain),
        }.items()
    }
    assert acc["biased"] < 0.5  # mostly class 0
    assert acc["biased+balanced"] == pytest.approx(acc["plain+balanced"], abs=1e-6)


def test_runs_under_the_evaluation_protocol() -> None:
    result = evaluate(
        BalancedAssignment(maml(0)), Blobs(shots=1, queries=3, spread=1.0), episodes=6, steps=[0, 1]
    )
    assert set(result.metrics) == {0, 1} and result.episodes == 6


def test_refusals(batch) -> None:
    with pytest.raises(TypeError, match="wraps a MetaLearner, got Linear"):
        BalancedAssignment(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trained with the 'mse' loss"):
        BalancedAssignment(MAML(MLP(1, 1), inner_lr=0.1))
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        BalancedAssignment(protonet(0), temperature=0)
    assert not hasattr(BalancedAssignment(protonet(0)), "meta_loss")  # evaluation only
    uneven = TaskBatch(
        batch.support_x,
        batch.support_y,
        batch.query_x,
        batch.query_y.sort(-1).values.clamp(max=1),
        ways=3,
    )
    with pytest.raises(
        TaskError, match=r"same number of queries.*per-class query counts \[3, 6, 0\]"
    ):
        BalancedAssignment(protonet(0)).evaluate_batch(uneven)
