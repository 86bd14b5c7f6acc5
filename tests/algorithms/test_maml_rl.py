"""MAML-RL: the meta-gradient estimator's mean against the closed-form gradient of the
sampled-adaptation objective on a two-armed one-step bandit (and the estimate without
the inner samples' score term, biased, against it too), the leave-one-out advantages,
adaptation on navigation, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from metaloop.algorithms.maml_rl import (
    MAMLRL,
    Episodes,
    leave_one_out_advantages,
    linear_feature_baseline,
    reward_to_go,
)
from metaloop.tasks.envs import BernoulliBanditEnv, EnvError, PointNavigationEnv

torch.set_num_threads(1)
MEANS = (0.8, 0.3)
ALPHA = 1.0


def closed_form_gradient(
    bias: torch.Tensor, count_inner: bool = False, estimator: str = "exact", alpha: float = ALPHA
) -> torch.Tensor:
    """grad of F(theta) = sum_a pi(a) sum_r P(r | a) J(theta + alpha r grad log pi(a)),
    J(phi) = sum_a softmax(phi)_a m_a: one inner pull, no baseline (K = 1); with
    ``count_inner`` the inner pull counts too: (J(theta) + F(theta)) / 2.

    ``estimator="exact"`` is that gradient; the others are the means of the biased
    estimators, by the same enumeration: ``"no_score"`` holds the sampling probability
    ``pi(a)`` fixed (no score term), ``"lvc"`` also differentiates the step through the
    ratio ``pi(a) / stopgrad(pi(a))`` instead of ``log pi(a)`` (ProMP's definition, written
    here independently of the learner)."""
    b = bias.detach().double().requires_grad_(True)
    m = torch.tensor(MEANS, dtype=torch.float64)
    logp = torch.log_softmax(b, 0)
    total = torch.zeros((), dtype=torch.float64)
    for a in range(2):
        inner = torch.exp(logp[a] - logp[a].detach()) if estimator == "lvc" else logp[a]
        score = torch.autograd.grad(inner, b, create_graph=True)[0]
        sampling = logp[a].exp() if estimator == "exact" else logp[a].exp().detach()
        for r, prob in ((1.0, m[a]), (0.0, 1 - m[a])):
            total = total + sampling * prob * (torch.softmax(b + alpha * r * score, 0) * m).sum()
    if count_inner:
        total = (total + (logp.exp() * m).sum()) / 2
    return torch.autograd.grad(total, b)[0]


def estimates(
    sampling_term: bool,
    count_inner: bool = False,
    chunks: int = 8,
    tasks: int = 1000,
    score_baseline: str = "batch",
    low_variance_curvature: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chunk meta-gradient estimates (``chunks`` means over ``tasks`` one-step trials)
    and the exact gradient."""
    torch.manual_seed(0)
    policy = nn.Linear(1, 2)  # the observation is 0: the bias is the logits
    with torch.no_grad():
        policy.weight.zero_()
        policy.bias.copy_(torch.tensor([0.2, -0.1]))
    learner = MAMLRL(
        policy, BernoulliBanditEnv(arms=2, horizon=1), inner_lr=ALPHA, inner_episodes=1,
        outer_episodes=1, gamma=1.0, sampling_term=sampling_term, count_inner=count_inner,
        score_baseline=score_baseline, low_variance_curvature=low_variance_curvature,
    )  # fmt: skip
    out = []
    for c in range(chunks):
        loss, _ = learner.meta_loss([{"means": np.array(MEANS)}] * tasks, seed=100_000 * c)
        out.append(torch.autograd.grad(-loss, policy.bias)[0])
    return torch.stack(out), closed_form_gradient(policy.bias, count_inner)


@pytest.mark.parametrize(
    ("count_inner", "score_baseline"), [(False, "batch"), (True, "batch"), (False, "pre_update")]
)
def test_meta_gradient_estimator_is_unbiased_on_a_one_step_bandit(count_inner, score_baseline):
    est, exact = estimates(True, count_inner=count_inner, score_baseline=score_baseline)
    se = est.std(0) / est.shape[0] ** 0.5
    assert ((est.mean(0).double() - exact).abs() < 4 * se.double() + 1e-4).all()


def test_without_the_score_term_of_the_inner_samples_it_is_biased():
    est, exact = estimates(sampling_term=False)
    se = est.std(0) / est.shape[0] ** 0.5
    assert ((est.mean(0).double() - exact).abs() > 4 * se.double()).all()


def test_low_variance_curvature_mean_sits_between_exact_and_no_score_on_a_one_step_bandit():
    """ProMP's LVC: its mean over 8,000 trials is the LVC closed form (enumerated, not the
    learner's code), far closer to the exact gradient than dropping the score term."""
    lvc, exact = estimates(sampling_term=False, low_variance_curvature=True)
    bias = torch.tensor([0.2, -0.1])
    lvc_mean = closed_form_gradient(bias, estimator="lvc")
    no_score_mean = closed_form_gradient(bias, estimator="no_score")
    se = lvc.std(0).double() / lvc.shape[0] ** 0.5
    assert ((lvc.mean(0).double() - lvc_mean).abs() < 4 * se + 1e-4).all()
    # the estimator is measurably not the no-score one, and its bias is much smaller
    assert ((lvc.mean(0).double() - no_score_mean).abs() > 4 * se).all()
    assert (lvc_mean - exact).norm() < 0.25 * (no_score_mean - exact).norm()
    assert ((lvc_mean - exact).abs() > 1e-4).all()  # biased all the same, at alpha = 1


def test_low_variance_curvature_bias_is_second_order_in_the_step_size():
    """Closed forms: LVC's bias shrinks like alpha^2 (one sample per step: no cross
    products), the no-score estimator's like alpha."""
    bias = torch.tensor([0.2, -0.1])

    def error(estimator: str, alpha: float) -> float:
        exact = closed_form_gradient(bias, alpha=alpha)
        return float((closed_form_gradient(bias, estimator=estimator, alpha=alpha) - exact).norm())

    assert error("lvc", 0.125) < error("lvc", 0.5) / 16 * 1.1
    assert error("no_score", 0.125) > error("no_score", 0.5) / 8
    assert error("lvc", 0.125) < 0.01 * error("no_score", 0.125)


def test_low_variance_curvature_takes_the_same_step_and_changes_only_the_curvature():
    """The LVC inner surrogate's gradient (the step, theta') equals the policy-gradient
    step; so does the first-order meta-gradient; the second-order one differs."""
    env = PointNavigationEnv(horizon=5)
    tasks = [{"goal": np.array([0.3, -0.2])}, {"goal": np.array([-0.4, 0.1])}]

    def build(lvc: bool, first_order: bool = False) -> MAMLRL:
        torch.manual_seed(0)
        policy = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
        return MAMLRL(
            policy, env, inner_episodes=4, outer_episodes=4, baseline="linear",
            normalize_advantages=True, time_average=True, sampling_term=False,
            low_variance_curvature=lvc, first_order=first_order,
        )  # fmt: skip

    plain, lvc = build(False), build(True)
    params = plain.batched(plain.params(), 2)
    episodes = plain.rollout(params, tasks, 4)
    for a, b in zip(
        plain.inner_update(params, episodes, create_graph=False).values(),
        lvc.inner_update(lvc.batched(lvc.params(), 2), episodes, create_graph=False).values(),
    ):
        torch.testing.assert_close(a, b)

    def meta_gradient(learner: MAMLRL) -> torch.Tensor:
        torch.manual_seed(1)  # the same action draws (sampled from the global generator)
        loss, _ = learner.meta_loss(tasks, seed=3)
        grads = torch.autograd.grad(loss, list(learner.parameters()))
        return torch.cat([g.flatten() for g in grads])

    torch.testing.assert_close(meta_gradient(build(False, True)), meta_gradient(build(True, True)))
    assert (meta_gradient(plain) - meta_gradient(lvc)).abs().max() > 1e-6


def test_low_variance_curvature_has_far_less_variance_than_dice_on_navigation():
    """Over 12 seeds of a 2-task batch (horizon 10, 5 inner episodes: 50 inner actions per
    task), the total variance of the LVC meta-gradient is a fraction of the unbiased one's
    (whose score term multiplies a whole return by the score of all 50 actions)."""
    env = PointNavigationEnv(horizon=10)
    tasks = [{"goal": np.array([0.3, -0.2])}, {"goal": np.array([-0.4, 0.1])}]

    def spread(**kw) -> float:
        torch.manual_seed(0)
        policy = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
        learner = MAMLRL(
            policy, env, inner_lr=0.1, inner_episodes=5, outer_episodes=5, init_log_std=-1.0,
            baseline="linear", normalize_advantages=True, time_average=True, **kw,
        )  # fmt: skip
        grads = []
        for seed in range(12):
            loss, _ = learner.meta_loss(tasks, seed=1000 * seed)
            flat = torch.autograd.grad(loss, list(learner.parameters()))
            grads.append(torch.cat([g.flatten() for g in flat]))
        return float(torch.stack(grads).var(0).sum())

    dice = spread(sampling_term=True, score_baseline="pre_update")
    lvc = spread(sampling_term=False, low_variance_curvature=True)
    assert lvc < 0.25 * dice


def closed_form_gradient_with_update_rule(learner: MAMLRL, episodes: int) -> torch.Tensor:
    """grad of F(theta) = E_b[J(theta + alpha g(theta; b))] by enumerating every outcome ``b``
    of ``episodes`` one-pull inner episodes (arm and reward of each), in float64, with the
    inner step ``g = sum_k c_k grad log pi(a_k)`` whose coefficients ``c_k`` come from the
    learner's (baseline, normalisation, time-average) update rule on that outcome."""
    b = learner.policy.bias.detach().double().requires_grad_(True)
    m = torch.tensor(MEANS, dtype=torch.float64)
    logp = torch.log_softmax(b, 0)
    total = torch.zeros((), dtype=torch.float64)
    for outcome in itertools.product(
        [(a, r) for a in range(2) for r in (0.0, 1.0)], repeat=episodes
    ):
        actions = torch.tensor([a for a, _ in outcome])
        rewards = torch.tensor([r for _, r in outcome])
        prob = torch.ones((), dtype=torch.float64)
        for a, r in outcome:
            prob = prob * logp[a].exp() * (m[a] if r else 1 - m[a])
        sample = Episodes(
            torch.zeros(1, episodes, 1, 1),
            actions.view(1, episodes, 1),
            rewards.view(1, episodes, 1),
        )
        c = learner.weights(sample, inner=True).double().view(episodes)
        step = torch.autograd.grad((logp[actions] * c).sum(), b, create_graph=True)[0]
        total = total + prob * (torch.softmax(b + learner.inner_lr * step, 0) * m).sum()
    return torch.autograd.grad(total, b)[0]


def test_meta_gradient_stays_unbiased_with_the_linear_baseline_and_normalised_steps():
    torch.manual_seed(0)
    policy = nn.Linear(1, 2)
    with torch.no_grad():
        policy.weight.zero_()
        policy.bias.copy_(torch.tensor([0.2, -0.1]))
    learner = MAMLRL(
        policy, BernoulliBanditEnv(arms=2, horizon=1), inner_lr=ALPHA, inner_episodes=2,
        outer_episodes=1, gamma=1.0, baseline="linear", normalize_advantages=True,
        time_average=True, score_baseline="pre_update",
    )  # fmt: skip
    exact = closed_form_gradient_with_update_rule(learner, episodes=2)
    est = []
    for c in range(8):
        loss, _ = learner.meta_loss([{"means": np.array(MEANS)}] * 1000, seed=100_000 * c)
        est.append(torch.autograd.grad(-loss, policy.bias)[0])
    est = torch.stack(est)
    se = est.std(0) / est.shape[0] ** 0.5
    assert ((est.mean(0).double() - exact).abs() < 4 * se.double() + 1e-4).all()
    # the normalised step differs from the raw one, so this is not the earlier test again
    raw = MAMLRL(policy, learner.env, inner_lr=ALPHA, inner_episodes=2, gamma=1.0)
    assert (closed_form_gradient_with_update_rule(raw, 2) - exact).abs().max() > 1e-3


def test_linear_feature_baseline_is_ridge_regression_on_the_other_episodes():
    gen = torch.Generator().manual_seed(3)
    obs = torch.randn(2, 4, 6, 2, generator=gen)
    returns = torch.randn(2, 4, 6, generator=gen)
    baseline = linear_feature_baseline(obs, returns, reg=0.0)
    for task, episode in ((0, 0), (1, 3)):
        others = [j for j in range(4) if j != episode]
        rows, targets = [], []
        for j in [*others, episode]:
            for t in range(6):
                s, u = obs[task, j, t].numpy(), t / 100
                rows.append(np.concatenate([s, s**2, [u, u**2, u**3, 1.0]]))
                targets.append(float(returns[task, j, t]))
        x, y = np.array(rows), np.array(targets)
        w = np.linalg.lstsq(x[: 6 * len(others)], y[: 6 * len(others)], rcond=None)[0]
        expected = x[6 * len(others) :] @ w
        np.testing.assert_allclose(baseline[task, episode].numpy(), expected, rtol=1e-4, atol=1e-4)
    # one episode: nothing to fit on, the baseline is 0
    assert linear_feature_baseline(obs[:, :1], returns[:, :1]).abs().max() == 0


def test_inner_weights_are_standardised_and_time_averaged():
    torch.manual_seed(0)
    env = PointNavigationEnv(horizon=5)
    policy = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    learner = MAMLRL(
        policy, env, inner_episodes=4, baseline="linear", normalize_advantages=True,
        time_average=True, gamma=1.0,
    )  # fmt: skip
    tasks = [{"goal": np.array([0.3, -0.2])}]
    episodes = learner.rollout(learner.batched(learner.params(), 1), tasks, 4)
    inner = learner.weights(episodes, inner=True) * 4 * 5  # undo the 1/K and 1/T
    assert abs(float(inner.mean())) < 1e-5 and abs(float(inner.std()) - 1) < 1e-4
    outer = learner.weights(episodes) * 4  # unnormalised: the advantages themselves
    returns = reward_to_go(episodes.rewards, 1.0)
    torch.testing.assert_close(outer, returns - linear_feature_baseline(episodes.obs, returns))


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
    with pytest.raises(ValueError, match="baseline must be one of leave_one_out, linear"):
        MAMLRL(nn.Linear(1, 2), env, baseline="value")
    with pytest.raises(EnvError, match="at least one task"):
        MAMLRL(nn.Linear(1, 2), env).rollout({}, [], 1)
    with pytest.raises(ValueError, match="set sampling_term=False"):
        MAMLRL(nn.Linear(1, 2), env, low_variance_curvature=True)
    env.action_space = spaces.MultiBinary(2)
    with pytest.raises(EnvError, match="Discrete or 1-D Box"):
        MAMLRL(nn.Linear(1, 2), env)
