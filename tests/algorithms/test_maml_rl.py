"""MAML-RL: the meta-gradient estimator's mean against the closed-form gradient of the
sampled-adaptation objective on a two-armed one-step bandit (and the estimate without
the inner samples' score term, biased, against it too), the leave-one-out advantages,
adaptation on navigation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from metaloop.algorithms.maml_rl import MAMLRL, leave_one_out_advantages, reward_to_go
from metaloop.tasks.envs import BernoulliBanditEnv, EnvError, PointNavigationEnv

torch.set_num_threads(1)
MEANS = (0.8, 0.3)
ALPHA = 1.0


def closed_form_gradient(bias: torch.Tensor, count_inner: bool = False) -> torch.Tensor:
    """grad of F(theta) = sum_a pi(a) sum_r P(r | a) J(theta + alpha r grad log pi(a)),
    J(phi) = sum_a softmax(phi)_a m_a: one inner pull, no baseline (K = 1); with
    ``count_inner`` the inner pull counts too: (J(theta) + F(theta)) / 2."""
    b = bias.detach().double().requires_grad_(True)
    m = torch.tensor(MEANS, dtype=torch.float64)
    logp = torch.log_softmax(b, 0)
    total = torch.zeros((), dtype=torch.float64)
    for a in range(2):
        score = torch.autograd.grad(logp[a], b, create_graph=True)[0]
        for r, prob in ((1.0, m[a]), (0.0, 1 - m[a])):
            total = (
                total + logp[a].exp() * prob * (torch.softmax(b + ALPHA * r * score, 0) * m).sum()
            )
    return torch.autograd.grad(total, b)[0]


def estimates(
    sampling_term: bool, count_inner: bool = False, chunks: int = 8, tasks: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    policy = nn.Linear(1, 2)  # the observation is 0: the bias is the logits
    with torch.no_grad():
        policy.weight.zero_()
        policy.bias.copy_(torch.tensor([0.2, -0.1]))
    learner = MAMLRL(
        policy, BernoulliBanditEnv(arms=2, horizon=1), inner_lr=ALPHA, inner_episodes=1,
        outer_episodes=1, gamma=1.0, sampling_term=sampling_term, count_inner=count_inner,
    )  # fmt: skip
    out = []
    for c in range(chunks):
        loss, _ = learner.meta_loss([{"means": np.array(MEANS)}] * tasks, seed=100_000 * c)
        out.append(torch.autograd.grad(-loss, policy.bias)[0])
    return torch.stack(out), closed_form_gradient(policy.bias, count_inner)


@pytest.mark.parametrize("count_inner", [False, True])
def test_meta_gradient_estimator_is_unbiased_on_a_one_step_bandit(count_inner):
    est, exact = estimates(sampling_term=True, count_inner=count_inner)
    se = est.std(0) / est.shape[0] ** 0.5
    assert ((est.mean(0).double() - exact).abs() < 4 * se.double() + 1e-4).all()


def test_without_the_score_term_of_the_inner_samples_it_is_biased():
    est, exact = estimates(sampling_term=False)
    se = est.std(0) / est.shape[0] ** 0.5
    assert ((est.mean(0).double() - exact).abs() > 4 * se.double()).all()


def test_leave_one_out_advantages():
    rewards = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]]])  # [B=1, K=3, T=2]
    g = reward_to_go(rewards, 0.5)
    torch.testing.assert_close(g[0, :, 0], torch.tensor([1.0, 1.0, 3.5]))
    a = leave_one_out_advantages(rewards, 0.5)
    torch.testing.assert_close(a[0, 0, 0], g[0, 0, 0] - (1.0 + 3.5) / 2)


def test_adaptation_on_navigation_moves_towards_the_goal():
    torch.manual_seed(0)
    env = PointNavigationEnv(horizon=10)
    policy = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    learner = MAMLRL(
        policy, env, inner_lr=0.05, inner_episodes=10, outer_episodes=4, init_log_std=-1.0
    )
    tasks = [{"goal": np.array([0.5, 0.5])}, {"goal": np.array([-0.5, 0.3])}]
    loss, _ = learner.meta_loss(tasks)
    loss.backward()
    assert all(p.grad is not None for p in learner.parameters())
    params, history = learner.adapt(tasks, steps=2)
    assert len(history) == 3 and params["log_std"].shape == (2, 2)
    assert history[0].rewards.shape == (2, 10, 10)


def test_bad_input():
    env = BernoulliBanditEnv(arms=2, horizon=1)
    with pytest.raises(ValueError, match="inner_episodes must be a positive integer"):
        MAMLRL(nn.Linear(1, 2), env, inner_episodes=0)
    with pytest.raises(EnvError, match="at least one task"):
        MAMLRL(nn.Linear(1, 2), env).rollout({}, [], 1)
    env.action_space = spaces.MultiBinary(2)
    with pytest.raises(EnvError, match="Discrete or 1-D Box"):
        MAMLRL(nn.Linear(1, 2), env)
