"""Validation on several step counts picks the checkpoint a hand computation picks.

The learner is a linear model f(x) = w . x (no bias) whose "training" visits three
prescribed weight vectors (an optimizer that loads the next one at each step), validated
after each.  Every task has the same three support points c_i e_i (i = 1, 2, 3), targets 0,
and queries e_i with targets 0, so with inner rate alpha each weight evolves on its own:

    support loss L(w) = (1/3) sum_i c_i^2 w_i^2,  curvature h_i = 2 c_i^2 / 3,
    w_i after t steps = (1 - alpha h_i)^t w_i,
    query loss after t steps = (1/3) sum_i (1 - alpha h_i)^(2t) w_i^2.

With alpha h = (1.0, 0.2, 2.2), the third direction is past the stability limit 2: it
shrinks nothing and grows 1.2x a step, so a weight vector good after 1 step can be bad
after 5.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.algorithms import MAML
from metaloop.tasks import TaskBatch
from metaloop.train import Trainer
from metaloop.train.checkpoint import load_best

torch.set_num_threads(1)

ALPHA = 0.1
SCALES = torch.tensor([15.0, 3.0, 33.0]).sqrt()  # alpha * h = alpha * 2 c^2 / 3 = 1.0, 0.2, 2.2
WEIGHTS = [
    torch.tensor([0.3, 0.5, 0.5]),  # A: best after 1 step (0.52 / 3), bad after 5 (1.57 / 3)
    torch.tensor([0.1, 1.0, 0.2]),  # B: worse after 1 step (0.70 / 3), best after 5 (0.36 / 3)
    torch.tensor([0.2, 1.5, 0.4]),  # C: worse than both at both step counts
]


class SameTasks:
    """Every task: support c_i e_i with target 0, queries e_i with target 0."""

    shots, queries = 3, 3

    def sample(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        sx = torch.diag(SCALES).expand(tasks, 3, 3).clone()
        qx = torch.eye(3).expand(tasks, 3, 3).clone()
        return TaskBatch(sx, torch.zeros(tasks, 3, 1), qx, torch.zeros(tasks, 3, 1))


class Prescribed(torch.optim.Optimizer):
    """An 'optimizer' whose step ``k`` loads ``WEIGHTS[k]`` into the model's weight."""

    def __init__(self, params) -> None:
        super().__init__(params, {})
        self.calls = 0

    @torch.no_grad()
    def step(self, closure=None):
        (weight,) = self.param_groups[0]["params"]
        weight.copy_(WEIGHTS[self.calls].view_as(weight))
        self.calls += 1


def hand_loss(w: torch.Tensor, steps: int) -> float:
    """(1/3) sum_i (1 - alpha h_i)^(2 t) w_i^2, in float64."""
    factor = 1 - ALPHA * 2 * SCALES.double() ** 2 / 3
    return float((factor ** (2 * steps) * w.double() ** 2).sum() / 3)


def train(tmp_path, **fit_options):
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    learner = MAML(model, inner_lr=ALPHA, inner_steps=1)
    trainer = Trainer(learner, Prescribed(learner.parameters()), meta_batch_size=4, progress=False)
    result = trainer.fit(
        SameTasks(),
        iterations=len(WEIGHTS),
        validate_on=SameTasks(),
        validate_every=1,
        validation_tasks=6,
        run_dir=tmp_path,
        log_every=1,
        **fit_options,
    )
    return result, load_best(tmp_path)


def test_hand_computation_separates_the_step_counts():
    one = [hand_loss(w, 1) for w in WEIGHTS]
    five = [hand_loss(w, 5) for w in WEIGHTS]
    assert min(range(3), key=one.__getitem__) == 0  # A after 1 step
    assert min(range(3), key=five.__getitem__) == 1  # B after 5 steps


@pytest.mark.parametrize(
    "select_on, expected",
    [("loss@5", 2), ("loss@1", 1), (None, 2)],  # best iteration: B is the 2nd, A the 1st
)
def test_selection_on_a_step_count_keeps_the_hand_computed_best(tmp_path, select_on, expected):
    result, best = train(tmp_path, validation_steps=(1, 5), select_on=select_on)
    step = 1 if select_on == "loss@1" else 5
    hand = [hand_loss(w, step) for w in WEIGHTS]
    assert result.best_iteration == expected == 1 + min(range(3), key=hand.__getitem__)
    assert result.best_metric == pytest.approx(hand[expected - 1], rel=1e-5)
    assert result.metric_name == (select_on or "loss")
    assert best["iteration"] == expected
    assert torch.allclose(best["learner"]["model.weight"].flatten(), WEIGHTS[expected - 1])
    val = [r for r in result.history if r["split"] == "val"]
    for record, w in zip(val, WEIGHTS):  # every step count logged, each as the hand says
        assert record["loss@1"] == pytest.approx(hand_loss(w, 1), rel=1e-5)
        assert record["loss@5"] == pytest.approx(hand_loss(w, 5), rel=1e-5)
        assert record["loss"] == record[f"loss@{step}"]


def test_selection_on_the_mean_of_several_step_counts(tmp_path):
    # (L_1 + L_5) / 2 by hand: A 1.05 / 3, B 0.53 / 3, C more: B, which 1 step alone does not pick
    result, best = train(tmp_path, validation_steps=(1, 5, 10), select_on="loss@1,5")
    hand = [(hand_loss(w, 1) + hand_loss(w, 5)) / 2 for w in WEIGHTS]
    assert result.best_iteration == 1 + min(range(3), key=hand.__getitem__) == 2
    assert result.best_metric == pytest.approx(hand[1], rel=1e-5)
    assert best["metric"] == {"loss@1,5": pytest.approx(hand[1], rel=1e-5)}
    val = [r for r in result.history if r["split"] == "val"]
    assert [r["loss"] for r in val] == pytest.approx(hand, rel=1e-5)
    assert val[0]["loss@10"] == pytest.approx(hand_loss(WEIGHTS[0], 10), rel=1e-5)


def test_select_on_alone_sets_the_validation_step_count(tmp_path):
    result, _ = train(tmp_path, select_on="loss@5")
    val = [r for r in result.history if r["split"] == "val"]
    assert result.best_iteration == 2 and "loss@5" not in val[0]  # one step count: plain names
    assert val[0]["loss"] == pytest.approx(hand_loss(WEIGHTS[0], 5), rel=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"validation_steps": (1, 5), "select_on": "loss@10"}, "names 10 steps, which"),
        ({"select_on": "loss@ten"}, "select_on must be 'metric', 'metric@steps' or"),
        ({"validation_steps": (1, 5), "select_on": "loss@1,10"}, "names 10 steps, which"),
        ({"validation_steps": ()}, "validation_steps must be a non-empty list"),
        ({"validation_steps": (1, -1)}, "validation_steps must be a non-empty list"),
        ({"select_on": "accuracy@1"}, "select_on 'accuracy@1': the learner's validation reports"),
    ],
)
def test_bad_selection_is_refused_naming_what_is_allowed(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        train(tmp_path, **options)


def test_cli_validates_on_the_configured_protocol_and_selects_on_it(tmp_path, capsys):
    import json
    from pathlib import Path

    from metaloop.cli.main import main

    config = Path(__file__).resolve().parents[2] / "configs" / "sinusoid-maml.toml"
    settings = [
        "train.iterations=4",
        "train.meta_batch_size=4",
        "train.validate_every=2",
        "train.validation_tasks=6",
        "train.validation_shots=3",
        "train.validation_steps=[0, 2]",
        'train.select_on="loss@2"',
        "model.hidden=[8]",
    ]
    args = ["train", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(args + [a for s in settings for a in ("--set", s)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    val = [r for r in records if r["split"] == "val"]
    assert [r["iteration"] for r in val] == [2, 4]
    assert all(r["loss"] == r["loss@2"] and "loss@0" in r for r in val)
    assert summary["best_loss@2"] == min(r["loss@2"] for r in val)
    best = load_best(tmp_path / "run")
    assert best["metric"] == {"loss@2": summary["best_loss@2"]}
    bad = [*(s for s in settings if "select_on" not in s), 'train.select_on="loss@5"']
    args[3] = str(tmp_path / "bad")
    assert main(args + [a for s in bad for a in ("--set", s)]) == 2
    err = capsys.readouterr().err
    assert "train.select_on = 'loss@5' names 5 steps; train.validation_steps [0, 2]" in err
