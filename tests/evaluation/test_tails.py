"""Heavy tails: divergent episodes counted on constructed episodes with known losses."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from metaloop.algorithms import MAML
from metaloop.evaluation import evaluate
from metaloop.evaluation.tails import (
    DIVERGENCE_FACTOR,
    divergent_episodes,
    tail_summary,
)
from metaloop.tasks import TaskBatch

torch.set_num_threads(1)


def test_divergent_mask_and_summary_on_hand_values():
    initial = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    loss = torch.tensor([0.2, 25.0, 5.0, math.inf, math.nan])
    # 25 > 10 * 2; 5 is exactly 10 * 0.5 (not above); inf and nan are non-finite
    mask = divergent_episodes(loss, initial)
    assert mask.tolist() == [False, True, False, True, True]
    assert divergent_episodes(loss, initial, factor=2.0).tolist() == [False, True, True, True, True]
    assert divergent_episodes(loss).tolist() == [False, False, False, True, True]  # no L_0
    s = tail_summary(loss, initial)
    assert (s.episodes, s.divergent, s.nonfinite, s.factor) == (5, 3, 2, DIVERGENCE_FACTOR)
    assert math.isnan(s.mean) and math.isnan(s.divergent_share)
    assert s.median == 25.0  # NaN counts as the worst episode: sorted 0.2, 5, 25, inf, nan
    assert s.describe() == "3 divergent (the sum is not finite, 2 non-finite)"


def test_summary_of_finite_losses_states_the_share_of_the_tail():
    initial = torch.ones(6)
    loss = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 48.5])
    s = tail_summary(loss, initial)
    assert s.mean == pytest.approx(50.0 / 6)
    std = float(loss.double().std())
    assert s.ci95 == pytest.approx(1.96 * std / math.sqrt(6))
    assert s.median == pytest.approx(0.3)  # the lower middle value, as torch.median
    assert s.divergent == 1 and s.nonfinite == 0
    assert s.divergent_share == pytest.approx(48.5 / 50.0)
    assert s.describe() == "1 divergent (97% of the summed loss)"
    calm = tail_summary(loss[:5], initial[:5])
    assert calm.divergent == 0 and calm.divergent_share == 0.0 and calm.describe() == "0 divergent"


def test_bad_arguments_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="divergence_factor must be a finite number >= 1"):
        divergent_episodes(torch.ones(2), torch.ones(2), factor=0.5)
    with pytest.raises(ValueError, match="divergence_factor must be a number >= 1"):
        tail_summary(torch.ones(2), factor="ten")
    with pytest.raises(ValueError, match="initial_loss has 3 episodes but loss has 2"):
        divergent_episodes(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="zero episodes"):
        tail_summary(torch.tensor([]))


class FixedEpisodes:
    """Two regression episodes y = 2 x for f(x) = w x (w_0 = 0): support inputs all 3 in
    the first, all 1 in the second; queries at 1."""

    shots, queries = 4, 3

    def sample(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        sx = torch.tensor([[3.0] * self.shots, [1.0] * self.shots])[:tasks, :, None]
        qx = torch.ones(tasks, self.queries, 1)
        return TaskBatch(sx, 2 * sx, qx, 2 * qx)


def closed_form_query_loss(x: float, alpha: float, steps: int) -> float:
    """MSE support loss of w: (w x - 2 x)^2, curvature h = 2 x^2; gradient descent gives
    w_t - 2 = (1 - alpha h)^t (w_0 - 2); query MSE at x_q = 1 is (w_t - 2)^2."""
    return ((1 - alpha * 2 * x * x) ** steps * (0.0 - 2.0)) ** 2


def test_evaluate_counts_the_episode_that_blows_up_and_not_the_other():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    alpha = 0.2  # alpha * h = 3.6 on the first episode (> 2: oscillates, grows 2.6x a step)
    learner = MAML(model, inner_lr=alpha, inner_steps=1)  # and 0.4 on the second
    result = evaluate(learner, FixedEpisodes(), episodes=2, steps=(1, 10), batch_size=2)
    assert sorted(result.metrics) == [1, 10]  # the 0-step reference is not reported
    for steps in (1, 10):
        expected = [closed_form_query_loss(x, alpha, steps) for x in (3.0, 1.0)]
        assert result[steps]["loss"].mean == pytest.approx(sum(expected) / 2, rel=1e-5)
    # before adaptation both episodes have query loss 4: after one step the first is at
    # 4 * 2.6^2 = 27 (not yet 10x), after ten at 4 * 2.6^20 (divergent); the second shrinks
    assert result.tails[1].divergent == 0
    assert result.tails[10].divergent == 1 and result.tails[10].nonfinite == 0
    assert result.tails[10].divergent_share == pytest.approx(1.0, abs=1e-9)
    text = str(result)
    assert "1 divergent (100% of the summed loss)" in text
    assert "above 10x the loss before adaptation" in text and "heavy tail (1 at 10 steps)" in text
    d = json.loads(json.dumps(result.to_dict()))
    assert d["tails"]["10"]["divergent"] == 1 and d["tails"]["1"]["divergent"] == 0
    assert d["divergence"].startswith("query loss not finite or above 10x")
    # a stricter multiple counts the first episode after one step too (27 > 2 * 4)
    strict = evaluate(
        learner, FixedEpisodes(), episodes=2, steps=(1,), batch_size=2, divergence_factor=2
    )
    assert strict.tails[1].divergent == 1 and "above 2x" in str(strict)


def test_zero_steps_alone_counts_only_non_finite_episodes():
    model = nn.Linear(1, 1, bias=False)
    learner = MAML(model, inner_lr=0.2, inner_steps=1)
    result = evaluate(learner, FixedEpisodes(), episodes=2, steps=(0,), batch_size=2)
    assert result.tails[0].factor is None and result.tails[0].divergent == 0
    assert "divergent: query loss not finite" in str(result)


def test_cli_eval_reports_divergent_episodes_and_checks_the_factor(tmp_path, capsys):
    from pathlib import Path

    from metaloop.cli.main import main

    config = Path(__file__).resolve().parents[2] / "configs" / "sinusoid-maml.toml"
    run = str(tmp_path / "run")
    small = ["train.iterations=2", "train.validate_every=2", "train.validation_tasks=4"]
    train = ["train", str(config), "--run-dir", run, "--no-progress"]
    assert main(train + [a for s in [*small, "model.hidden=[8]"] for a in ("--set", s)]) == 0
    capsys.readouterr()
    common = ["eval", run, "--episodes", "10", "--steps", "1,5", "--no-progress"]
    # a rate far past the stability limit makes every episode blow up by 5 steps
    assert main([*common, "--json", "--set", "algorithm.inner_lr=2.0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["steps"]) == ["1", "5"] and out["tails"]["5"]["divergent"] == 10
    assert out["divergence"].startswith("query loss not finite or above 10x")
    assert main([*common, "--divergence-factor", "1e6"]) == 0
    assert "above 1e+06x the loss before adaptation" in capsys.readouterr().out
    assert main([*common, "--divergence-factor", "0.5"]) == 2
    assert "--divergence-factor must be a finite number >= 1, got 0.5" in capsys.readouterr().err


def test_a_nan_episode_is_the_worst_in_the_reported_median():
    class ThreeEpisodes(FixedEpisodes):
        def sample(self, tasks, generator):
            sx = torch.tensor([[3.0] * self.shots, [1.0] * self.shots, [1.0] * self.shots])
            qx = torch.ones(3, self.queries, 1)
            return TaskBatch(sx[..., None], 2 * sx[..., None], qx, 2 * qx)

    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    learner = MAML(model, inner_lr=0.2, inner_steps=1)  # the first grows 2.6x a step
    result = evaluate(learner, ThreeEpisodes(), episodes=3, steps=(300,), batch_size=3)
    tail = result.tails[300]
    assert tail.nonfinite == 1 and tail.divergent == 1 and math.isnan(tail.mean)
    calm = closed_form_query_loss(1.0, 0.2, 300)
    assert result[300]["loss"].median == tail.median == pytest.approx(calm, abs=1e-12)
