"""Ensembles: mean log-probability of the members, on task batches and through ``adapt``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _eval_helpers import Blobs, maml, protonet

from metaloop.algorithms import MAML
from metaloop.evaluation import Ensemble, evaluate
from metaloop.models import MLP
from metaloop.tasks import TaskBatch

torch.set_num_threads(1)


@pytest.fixture
def batch() -> TaskBatch:
    return Blobs().sample(4, torch.Generator().manual_seed(0))


def _manual_log_probs(members, batch: TaskBatch, steps: int) -> torch.Tensor:
    """Reference: every member adapted per task, log-softmax averaged, renormalised."""
    rows = []
    for task in batch:
        logps = []
        for member in members:
            with torch.enable_grad():
                predictor = member.adapt(task.support, steps=steps)
            with torch.no_grad():
                logps.append(F.log_softmax(predictor(task.query_x), -1))
        rows.append(F.log_softmax(torch.stack(logps).mean(0), -1))
    return torch.stack(rows)


def test_mixed_ensemble_matches_the_mean_of_member_log_probabilities(batch) -> None:
    members = [protonet(0), protonet(1), maml(2)]
    ensemble = Ensemble(members).eval()
    for steps in (0, 1):
        log_p = _manual_log_probs(members, batch, steps)
        metrics = ensemble.evaluate_batch(batch, [steps])[steps]
        nll = -log_p.gather(-1, batch.query_y.unsqueeze(-1)).squeeze(-1).mean(-1)
        torch.testing.assert_close(metrics["loss"], nll, rtol=1e-5, atol=1e-6)
        acc = (log_p.argmax(-1) == batch.query_y).float().mean(-1)
        torch.testing.assert_close(metrics["accuracy"], acc)
        # adapt gives the same (unnormalised) scores for one task
        task = batch[0]
        with torch.no_grad():
            scores = ensemble.adapt(task.support, steps)(task.query_x)
        torch.testing.assert_close(F.log_softmax(scores, -1), log_p[0], rtol=1e-5, atol=1e-6)
    # the MAML member's inner step changes the ensemble's prediction
    assert not torch.allclose(
        ensemble.evaluate_batch(batch, [0])[0]["loss"],
        ensemble.evaluate_batch(batch, [1])[1]["loss"],
    )


def test_an_ensemble_of_one_model_twice_is_that_model(batch) -> None:
    model = protonet(3).eval()
    single = model.evaluate_batch(batch)[0]
    twice = Ensemble([model, model]).evaluate_batch(batch)[0]
    torch.testing.assert_close(twice["loss"], single["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(twice["accuracy"], single["accuracy"])


def test_ensemble_runs_under_the_evaluation_protocol() -> None:
    result = evaluate(Ensemble([protonet(0), maml(1)]), Blobs(), episodes=6, steps=[0, 1])
    assert set(result.metrics) == {0, 1} and result.episodes == 6


def test_ensemble_refuses_what_it_cannot_average() -> None:
    with pytest.raises(ValueError, match="at least two members, got 1"):
        Ensemble([protonet(0)])
    with pytest.raises(TypeError, match="member 1 is a Linear, not a MetaLearner"):
        Ensemble([protonet(0), torch.nn.Linear(2, 2)])
    regression = MAML(MLP(1, 1), inner_lr=0.1)
    with pytest.raises(ValueError, match=r"member 1 \(MAML\) is trained with the 'mse' loss"):
        Ensemble([protonet(0), regression])
    assert not hasattr(Ensemble([protonet(0), protonet(1)]), "meta_loss")  # evaluation only
