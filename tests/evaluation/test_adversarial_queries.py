"""Adversarial queries: epsilon 0 is the plain evaluation; the attack is the FGSM of the
adapted predictor with the true labels, checked against a hand-written loop."""

from __future__ import annotations

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.evaluation import AdversarialQueries, evaluate
from metaloop.models import MLP
from metaloop.tasks import Sinusoid

torch.set_num_threads(1)


def learner() -> MAML:
    torch.manual_seed(0)
    return MAML(MLP(1, 1, hidden=(8,), activation="tanh"), inner_lr=0.05)


def test_epsilon_zero_is_the_plain_evaluation():
    family, m = Sinusoid(shots=5, queries=5), learner()
    plain = evaluate(m, family, episodes=20, steps=(0, 1), seed=3)
    attacked = evaluate(AdversarialQueries(m, 0.0), family, episodes=20, steps=(0, 1), seed=3)
    for steps in (0, 1):  # the wrapper adapts task by task, MAML's own path in a batch
        assert attacked[steps]["loss"].mean == pytest.approx(plain[steps]["loss"].mean, rel=1e-6)
        assert attacked[steps]["loss"].std == pytest.approx(plain[steps]["loss"].std, rel=1e-6)


def test_attack_against_a_hand_written_loop():
    family, m, eps = Sinusoid(shots=5, queries=5), learner(), 0.2
    batch = family.sample(3, torch.Generator().manual_seed(4))
    got = AdversarialQueries(m, eps).evaluate_batch(batch, steps=(1,))[1]["loss"]
    expected = []
    for task in batch:
        with torch.enable_grad():
            predictor = m.adapt(task.support, steps=1)
            x = task.query_x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(((predictor(x) - task.query_y) ** 2).mean(), x)
        with torch.no_grad():
            adv = x.detach() + eps * g.sign()
            expected.append(((predictor(adv) - task.query_y) ** 2).mean())
    torch.testing.assert_close(got, torch.stack(expected))
    assert bool((got > m.evaluate_batch(batch, steps=(1,))[1]["loss"]).all())


def test_training_is_refused_and_adapt_is_the_learners():
    wrapped = AdversarialQueries(learner(), 0.1)
    batch = Sinusoid(shots=5, queries=5).sample(1, torch.Generator().manual_seed(0))
    assert not hasattr(wrapped, "meta_loss")  # an evaluation wrapper
    task = batch[0]  # adapt is the wrapped learner's, unattacked
    torch.testing.assert_close(
        wrapped.adapt(task.support)(task.query_x), wrapped.learner.adapt(task.support)(task.query_x)
    )
    with pytest.raises(TypeError, match="wraps a MetaLearner"):
        AdversarialQueries(torch.nn.Linear(1, 1), 0.1)
