"""The learned inner optimizer against independent truths: MAML exactly before training;
the update against a hand-written step; the meta-gradient of the rule's parameters against
central differences in float64; a rule that learns to fix a too-small inner rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaloop.algorithms import MAML, LearnedOptimizer
from metaloop.algorithms.learned_optimizer import UpdateRule
from metaloop.evaluation import evaluate
from metaloop.functional.optim import apply_updates, learned
from metaloop.models import MLP
from metaloop.tasks import LinearRegression, Sinusoid
from metaloop.train import Trainer

torch.set_num_threads(1)


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(1, 1, hidden=(4,), activation="tanh").double()


def sine_batch(seed: int = 0):
    return Sinusoid(shots=5, queries=5, dtype=torch.float64).sample(
        2, torch.Generator().manual_seed(seed)
    )


def flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def randomize(rule: UpdateRule, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in rule.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_before_training_it_is_maml():
    model, batch = small_mlp(), sine_batch()
    params = list(model.parameters())
    ours, _ = LearnedOptimizer(model, inner_lr=0.05, inner_steps=3).meta_loss(batch)
    maml, _ = MAML(model, inner_lr=0.05, inner_steps=3).meta_loss(batch)
    torch.testing.assert_close(ours, maml)
    torch.testing.assert_close(flat_grad(ours, params), flat_grad(maml, params))


def test_update_against_a_hand_written_step():
    rule = UpdateRule(hidden=(3,), feature_scale=2.0).double()
    randomize(rule, 1)
    g = torch.Generator().manual_seed(2)
    params = {"w": torch.randn(2, 3, generator=g, dtype=torch.float64)}
    grads = {"w": torch.randn(2, 3, generator=g, dtype=torch.float64)}
    opt = learned(0.1, rule, beta=0.8)
    updates, state = opt.update(grads, opt.init(params), params)
    new, mean = apply_updates(params, updates), state.states[0]
    m = 0.2 * grads["w"]
    expected = torch.empty(2, 3, dtype=torch.float64)
    for i in range(2):
        for j in range(3):
            features = torch.stack([grads["w"][i, j], m[i, j]]) * 2.0
            correction = rule.net(features[None])[0, 0] / 2.0
            expected[i, j] = params["w"][i, j] - 0.1 * (grads["w"][i, j] + correction)
    torch.testing.assert_close(new["w"], expected)
    torch.testing.assert_close(mean["w"], m)


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_of_the_rule_against_central_differences(steps, numeric_gradient):
    model, batch = small_mlp(3), sine_batch(seed=3)
    learner = LearnedOptimizer(model, inner_lr=0.05, inner_steps=steps, rule_hidden=(3,))
    learner.rule.double()
    randomize(learner.rule, 4)
    params = list(learner.parameters())  # the initialisation and the rule's weights
    loss, _ = learner.meta_loss(batch)
    analytic = flat_grad(loss, params)
    numeric = numeric_gradient(lambda: learner.meta_loss(batch)[0], params)
    assert float((analytic - numeric).norm() / numeric.norm()) < 1e-5
    rule_part = analytic[-sum(p.numel() for p in learner.rule.parameters()) :]
    assert rule_part.abs().max() > 1e-4  # the rule really receives a meta-gradient


def test_the_rule_learns_to_make_up_for_a_small_inner_rate():
    """Linear regression with an inner rate ten times too small: MAML can only move the
    initialisation, the learned rule can also enlarge the step."""
    family = LinearRegression(shots=10, queries=10, dim=5)
    results = {}
    for name, cls, kwargs in (
        ("maml", MAML, {}),
        ("learned", LearnedOptimizer, {"rule_hidden": (16,)}),
    ):
        torch.manual_seed(0)
        learner = cls(MLP(5, 1, hidden=()), inner_lr=0.01, inner_steps=3, **kwargs)
        optimizer = torch.optim.Adam(learner.parameters(), 1e-2)
        Trainer(learner, optimizer, meta_batch_size=8, progress=False).fit(family, 300)
        results[name] = evaluate(learner, family, episodes=200, steps=(3,), seed=0)[3]["loss"].mean
    assert results["learned"] < 0.7 * results["maml"], results


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="inner_optimizer must be 'sgd'"):
        LearnedOptimizer(small_mlp(), inner_lr=0.1, inner_optimizer="adam")
    with pytest.raises(ValueError, match="compile=True and checkpoint=True are not supported"):
        LearnedOptimizer(small_mlp(), inner_lr=0.1, checkpoint=True)
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\)"):
        LearnedOptimizer(small_mlp(), inner_lr=0.1, beta=1.0)
    with pytest.raises(ValueError, match="feature_scale must be a positive number"):
        UpdateRule(feature_scale=0.0)


def test_meta_loss_and_gradient_equal_a_hand_written_inner_loop():
    """The refactor onto composable inner optimizers keeps the learned optimizer's numbers:
    ``m <- beta m + (1-beta) g``, ``theta <- theta - alpha (g + r(s g, s m) / s)`` written out
    with ``torch.autograd`` gives the same meta-loss and meta-gradient (init and rule)."""
    model, batch = small_mlp(3), sine_batch(3)
    learner = LearnedOptimizer(
        model, inner_lr=0.05, inner_steps=2, beta=0.7, feature_scale=3.0, rule_hidden=(5,)
    )
    learner.rule.double()
    randomize(learner.rule, 6)
    names = [n for n, _ in model.named_parameters()]
    losses = []
    for task in batch:
        theta = dict(model.named_parameters())
        mean = {n: torch.zeros_like(p) for n, p in theta.items()}
        for _ in range(2):
            support = nn.functional.mse_loss(
                torch.func.functional_call(model, theta, (task.support_x,)), task.support_y
            )
            grads = dict(
                zip(names, torch.autograd.grad(support, list(theta.values()), create_graph=True))
            )
            mean = {n: 0.7 * mean[n] + 0.3 * grads[n] for n in names}
            step = {}
            for n in names:
                features = torch.stack([grads[n].reshape(-1), mean[n].reshape(-1)], -1) * 3.0
                correction = learner.rule.net(features).squeeze(-1) / 3.0
                step[n] = grads[n] + correction.reshape(grads[n].shape)
            theta = {n: theta[n] - 0.05 * step[n] for n in names}
        query = torch.func.functional_call(model, theta, (task.query_x,))
        losses.append(nn.functional.mse_loss(query, task.query_y))
    theirs = torch.stack(losses).mean()
    ours, _ = learner.meta_loss(batch)
    params = list(learner.parameters())
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        flat_grad(ours, params), flat_grad(theirs, params), rtol=1e-10, atol=1e-12
    )


def test_inner_lr_set_later_is_used_as_for_maml():
    """Diagnostics sweep ``learner.inner_lr``; the learned rule reads it at every use."""
    model, batch = small_mlp(), sine_batch()
    learner = LearnedOptimizer(model, inner_lr=0.05, inner_steps=2)
    learner.inner_lr = 0.2
    maml, _ = MAML(model, inner_lr=0.2, inner_steps=2).meta_loss(batch)
    torch.testing.assert_close(learner.meta_loss(batch)[0], maml)
