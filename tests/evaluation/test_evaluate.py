"""The evaluation protocol: mean +- 1.96 std / sqrt(n), seeded episodes, checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.algorithms.base import OutputShapeError
from metaloop.evaluation import Estimate, estimate, evaluate
from metaloop.models import MLP
from metaloop.tasks import RotatingBoundary, Sinusoid

torch.set_num_threads(1)


def test_estimate_on_known_values():
    e = estimate(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(sum((x - 2.5) ** 2 for x in (1, 2, 3, 4)) / 3)  # sample std, n - 1
    assert e.mean == 2.5 and e.episodes == 4
    assert e.std == pytest.approx(std)
    assert e.ci95 == pytest.approx(1.96 * std / 2)
    one = estimate(torch.tensor([0.7]))
    assert one == Estimate(pytest.approx(0.7), 0.0, 0.0, 1, pytest.approx(0.7))
    const = estimate(torch.full((600,), 0.25))
    assert const.ci95 == 0.0 and const.mean == 0.25
    with pytest.raises(ValueError, match="zero episodes"):
        estimate(torch.tensor([]))


def test_estimate_in_float64_on_float32_input():
    values = torch.arange(600, dtype=torch.float32) / 600
    e = estimate(values)
    v = values.double()
    assert e.ci95 == pytest.approx(1.96 * float(v.std()) / math.sqrt(600), rel=1e-12)


def learner(seed: int = 0) -> MAML:
    torch.manual_seed(seed)
    return MAML(MLP(1, 1, hidden=(8,)), inner_lr=0.01)


def test_evaluate_is_reproducible_with_a_seed():
    family = Sinusoid(shots=5, queries=5)
    a = evaluate(learner(), family, episodes=30, steps=(0, 1, 3), seed=11, batch_size=7)
    b = evaluate(learner(), family, episodes=30, steps=(0, 1, 3), seed=11, batch_size=7)
    assert a.to_dict() == b.to_dict()
    assert sorted(a.metrics) == [0, 1, 3] and a[1]["loss"].episodes == 30
    c = evaluate(learner(), family, episodes=30, steps=(0, 1, 3), seed=12, batch_size=7)
    assert c.to_dict() != a.to_dict()
    # note: the episodes are a function of (seed, batch_size), since tasks are drawn in
    # batches from one generator (docs/reliability.md)


def test_progress_bar_counts_episodes_on_stderr_and_changes_nothing(capsys):
    family = Sinusoid(shots=5, queries=5)
    quiet = evaluate(learner(), family, episodes=30, steps=(0, 1), seed=11, batch_size=7)
    assert capsys.readouterr().err == ""
    shown = evaluate(
        learner(), family, episodes=30, steps=(0, 1), seed=11, batch_size=7, progress=True
    )
    captured = capsys.readouterr()
    assert "evaluate" in captured.err and "30/30" in captured.err and captured.out == ""
    assert shown.to_dict() == quiet.to_dict()


def test_evaluate_does_not_touch_the_learner_or_global_rng():
    m = learner()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    torch.manual_seed(3)
    rng = torch.get_rng_state()
    evaluate(m, Sinusoid(shots=5, queries=5), episodes=10, steps=2, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert m.training


def test_eval_result_to_dict_is_json_ready():
    r = evaluate(learner(), Sinusoid(shots=5, queries=5), episodes=10, steps=(1,), seed=0)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["episodes"] == 10 and d["seed"] == 0
    assert set(d["steps"]["1"]["loss"]) == {"mean", "ci95", "std", "episodes", "median"}
    assert "10 episodes, mean +- 95% CI" in str(r)


def test_evaluate_checks_arguments_and_the_model_output():
    family = Sinusoid(shots=5, queries=5)
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        evaluate(learner(), family, episodes=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        evaluate(learner(), family, episodes=5, batch_size=0)
    torch.manual_seed(0)
    three_way_head = MAML(MLP(2, 3, hidden=(4,)), loss="cross_entropy")
    with pytest.raises(OutputShapeError, match="outputs 3 class scores but the task is 2-way"):
        evaluate(three_way_head, RotatingBoundary(shots=2, queries=2), episodes=4)
