"""RL²: the hidden state carries across the episodes of a trial, GAE against hand
computations, the A2C loss's gradient against float64 central differences on a replayed
(greedy, hence deterministic) trial, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from metaloop.algorithms.rl2 import RL2, gae
from metaloop.tasks.envs import BernoulliBanditEnv, EnvError, PointNavigationEnv

torch.set_num_threads(1)


def test_gae_is_discounted_td_errors():
    rewards = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.2, 1.0]], dtype=torch.float64)
    g, lam = 0.9, 0.5
    d = [1 + g * 0.2 - 0.5, 0 + g * 1.0 - 0.2, 2 - 1.0]
    expected = [d[0] + g * lam * d[1] + (g * lam) ** 2 * d[2], d[1] + g * lam * d[2], d[2]]
    torch.testing.assert_close(
        gae(rewards, values, g, lam)[0], torch.tensor(expected, dtype=torch.float64)
    )
    # lambda = 1: advantages are the discounted returns minus the values
    returns = torch.tensor([1 + g**2 * 2, g * 2, 2.0], dtype=torch.float64)
    torch.testing.assert_close(gae(rewards, values, g, 1.0)[0], returns - values[0])


def deterministic_tasks():
    return [{"means": np.ones(3)}, {"means": np.zeros(3)}]  # every pull pays 1, or 0


def test_hidden_state_is_kept_across_the_episodes_of_a_trial():
    torch.manual_seed(0)
    learner = RL2(BernoulliBanditEnv(arms=3, horizon=3), hidden=8, episodes_per_trial=2)
    trial = learner.rollout(deterministic_tasks(), greedy=True)
    assert trial.rewards.shape == (2, 6)
    # the first step knows nothing about the task: identical in both tasks
    torch.testing.assert_close(trial.entropies[0, 0], trial.entropies[1, 0])
    # the second episode's first step remembers the first episode's rewards
    assert (trial.entropies[0, 3] - trial.entropies[1, 3]).abs() > 1e-6


def test_a2c_gradient_matches_central_differences(numeric_gradient):
    """The loss's gradient is that of the hand-written objective with its targets (GAE
    advantages, normalised, and returns) held at their values: central differences of
    that objective on a replayed greedy (deterministic) trial."""
    torch.manual_seed(1)
    learner = RL2(BernoulliBanditEnv(arms=2, horizon=3), hidden=2, entropy_coef=0.1).double()
    tasks = [{"means": np.array([1.0, 0.0])}, {"means": np.array([0.0, 1.0])}]
    base = learner.rollout(tasks, greedy=True)
    values = base.values.detach()
    adv = gae(base.rewards, values, learner.gamma, learner.gae_lambda)
    returns, weights = adv + values, (adv - adv.mean()) / (adv.std() + 1e-8)

    def objective():
        t = learner.rollout(tasks, greedy=True)
        return (
            -(t.log_probs * weights).mean()
            + 0.5 * (t.values - returns).pow(2).mean()
            - 0.1 * t.entropies.mean()
        )

    params = list(learner.parameters())
    loss, _ = learner.a2c_loss(base)
    torch.testing.assert_close(loss, objective())
    analytic = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    torch.testing.assert_close(analytic, numeric_gradient(objective, params), rtol=1e-5, atol=1e-7)


def test_continuous_actions_and_metrics():
    torch.manual_seed(0)
    env = PointNavigationEnv(horizon=4)
    learner = RL2(env, hidden=4)
    loss, metrics = learner.meta_loss(env.sample_tasks(3, torch.Generator().manual_seed(0)))
    loss.backward()
    assert learner.log_std.grad is not None and metrics["return"] < 0


def test_bad_input():
    env = BernoulliBanditEnv(arms=2, horizon=2)
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        RL2(env, hidden=0)
    with pytest.raises(ValueError, match="gamma and gae_lambda"):
        RL2(env, gamma=1.5)
    env.action_space = spaces.MultiDiscrete([2, 2])
    with pytest.raises(EnvError, match="Discrete or 1-D Box"):
        RL2(env)
    with pytest.raises(EnvError, match="at least one task"):
        RL2(BernoulliBanditEnv(arms=2, horizon=2)).rollout([])


def test_set_env_plays_the_new_horizon():
    torch.manual_seed(0)
    learner = RL2(BernoulliBanditEnv(arms=3, horizon=3), hidden=8)
    assert learner.rollout(deterministic_tasks()).rewards.shape == (2, 3)
    learner.set_env(BernoulliBanditEnv(arms=3, horizon=7))
    trial = learner.rollout(deterministic_tasks())
    assert trial.rewards.shape == (2, 7)
    torch.testing.assert_close(trial.total_reward, torch.tensor([7.0, 0.0]))
