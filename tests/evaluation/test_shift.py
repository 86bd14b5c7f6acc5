"""Test-time shift for any classifier: query predictions averaged over translated views
(against a hand-computed average), invariance where the model is shift-invariant, the
command line's wrapping of single runs and ensemble members, and bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaloop.algorithms import MAML, ProtoNet
from metaloop.data.transforms import translate
from metaloop.evaluation import Ensemble
from metaloop.evaluation.shift import ShiftAveraged
from metaloop.models import MLP, Conv4
from metaloop.tasks import TaskBatch

torch.set_num_threads(1)


def _images(tasks=2, ways=3, shots=1, queries=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    sx = torch.zeros(tasks, ways * shots, 1, size, size)
    qx = torch.zeros(tasks, ways * queries, 1, size, size)
    # content away from the border, so translations by 2 pixels lose nothing
    sx[..., 4:-4, 4:-4] = torch.rand(tasks, ways * shots, 1, size - 8, size - 8, generator=g)
    qx[..., 4:-4, 4:-4] = torch.rand(tasks, ways * queries, 1, size - 8, size - 8, generator=g)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy, ways=ways)


def _maml_conv(seed=0):
    torch.manual_seed(seed)
    model = Conv4(in_channels=1, ways=3, hidden=4, image_size=16, norm="batch_episode")
    return MAML(model, inner_lr=0.3, inner_steps=1, loss="cross_entropy")


def test_predictions_are_the_mean_log_probability_over_translated_queries():
    learner = _maml_conv()
    batch = _images()
    wrapped = ShiftAveraged(learner, 1)
    assert len(wrapped.views) == 9 and wrapped.default_eval_steps == (1,)
    got = wrapped.evaluate_batch(batch, steps=(0, 2))
    for t, task in enumerate(batch):
        for steps in (0, 2):
            predictor = learner.adapt(task.support, steps=steps)
            logps = [
                F.log_softmax(predictor(translate(task.query_x, dx, dy)), -1)
                for dx in (-1, 0, 1)
                for dy in (-1, 0, 1)
            ]
            want = torch.stack(logps).mean(0)
            torch.testing.assert_close(wrapped.adapt(task.support, steps)(task.query_x), want)
            loss = F.cross_entropy(want, task.query_y)
            torch.testing.assert_close(got[steps]["loss"][t], loss)
            accuracy = (want.argmax(-1) == task.query_y).float().mean()
            torch.testing.assert_close(got[steps]["accuracy"][t], accuracy)


class PixelSum(nn.Module):
    """Logits from the total ink of an image: unchanged by translations that lose nothing."""

    def __init__(self, ways=3):
        super().__init__()
        self.linear = nn.Linear(1, ways)

    def forward(self, x):
        return self.linear(x.sum((1, 2, 3)).unsqueeze(1))


def test_a_shift_invariant_model_is_unchanged():
    torch.manual_seed(1)
    learner = MAML(PixelSum(), inner_lr=0.1, inner_steps=1, loss="cross_entropy")
    batch = _images(seed=3)
    plain = learner.evaluate_batch(batch, steps=(1,))[1]
    shifted = ShiftAveraged(learner, 2).evaluate_batch(batch, steps=(1,))[1]
    torch.testing.assert_close(shifted["loss"], plain["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shifted["accuracy"], plain["accuracy"])


def test_bad_input_is_refused():
    regression = MAML(MLP(1, 1), inner_lr=0.1, loss="mse")
    with pytest.raises(ValueError, match=r"averages class probabilities.*'mse'"):
        ShiftAveraged(regression, 1)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="shift must be an integer >= 1"):
            ShiftAveraged(_maml_conv(), bad)
    with pytest.raises(TypeError, match="wraps a MetaLearner"):
        ShiftAveraged(nn.Linear(2, 2), 1)
    flat = MAML(MLP(2, 3), inner_lr=0.1, loss="cross_entropy")
    predictor = ShiftAveraged(flat, 1).adapt((torch.randn(3, 2), torch.arange(3)), steps=0)
    with pytest.raises(Exception, match=r"queries must be \[Q, C, H, W\]"):
        predictor(torch.randn(4, 2))
    assert not hasattr(ShiftAveraged(_maml_conv(), 1), "meta_loss")  # evaluation only


def test_the_command_line_wraps_gradient_members_and_sets_metric_ones():
    from metaloop.cli.config import ConfigError
    from metaloop.cli.runs import apply_test_time_shift as _apply_test_time_shift

    def member(learner, name, tta=0):
        cfg = {"eval": {"tta_shift": tta}, "algorithm": {"name": name}}
        return SimpleNamespace(path=f"runs/{name}", cfg=cfg, learner=learner)

    torch.manual_seed(2)
    protonet = ProtoNet(Conv4(in_channels=1, hidden=4, image_size=16))
    maml = _maml_conv()
    alone, shift = _apply_test_time_shift(maml, [member(maml, "maml")], 2)
    assert isinstance(alone, ShiftAveraged) and alone.learner is maml and shift == 2
    same, shift = _apply_test_time_shift(maml, [member(maml, "maml")], None)
    assert same is maml and shift == 0  # the run's [eval] tta_shift = 0: off
    ensemble = Ensemble([protonet, maml])
    both, shift = _apply_test_time_shift(
        ensemble, [member(protonet, "protonet"), member(maml, "maml")], 1
    )
    assert both is ensemble and shift == 1 and protonet.test_time_shift == 1
    assert isinstance(ensemble.members[1], ShiftAveraged) and ensemble.members[1].shift == 1
    out = ensemble.evaluate_batch(_images(), steps=(1,))
    assert out[1]["accuracy"].shape == (2,)
    regression = MAML(MLP(1, 1), inner_lr=0.1, loss="mse")
    with pytest.raises(ConfigError, match=r"'sine'.*class probabilities"):
        _apply_test_time_shift(regression, [member(regression, "sine")], 1)
    with pytest.raises(ConfigError, match="integer >= 0, got -1"):
        _apply_test_time_shift(maml, [member(maml, "maml")], -1)
