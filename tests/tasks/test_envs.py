"""Meta-RL environments (gymnasium API) and the bandit baselines: seeded task sampling,
rewards with the drawn means, registration, bad input; UCB1 under its finite-time regret
bound and Thompson sampling below UCB1; the finite-horizon Gittins index against a
brute-force recursion; Gittins as the Bayes-optimal policy of a two-armed bandit."""

from __future__ import annotations

import functools

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

from metaloop.evaluation.bandits import (
    POLICIES,
    Prior,
    gittins_table,
    make_policy,
    run_bandit_policy,
    ucb1_regret_bound,
)
from metaloop.tasks.envs import (
    BernoulliBanditEnv,
    EnvError,
    MetaEnv,
    PointNavigationEnv,
    check_transition,
    make_env,
    register_env,
)


def test_tasks_are_seeded_and_rewards_follow_the_means():
    env = make_env("bernoulli_bandit", arms=3, horizon=4000)
    a = env.sample_tasks(5, torch.Generator().manual_seed(1))
    b = env.sample_tasks(5, torch.Generator().manual_seed(1))
    assert all(np.array_equal(x["means"], y["means"]) for x, y in zip(a, b))
    env.set_task({"means": np.array([0.2, 0.7, 0.5])})
    env.reset(seed=0)
    pulls = [env.step(1) for _ in range(4000)]
    assert abs(np.mean([p[1] for p in pulls]) - 0.7) < 0.03
    assert pulls[0][4]["regret"] == 0.0 and pulls[-1][3] is True  # truncated at the horizon


def test_gaussian_bandit_and_navigation():
    env = make_env("gaussian_bandit", arms=2, horizon=2000, noise_std=0.5)
    env.set_task({"means": np.array([1.5, -1.0])})
    env.reset(seed=0)
    rewards = [env.step(0)[1] for _ in range(2000)]
    assert abs(np.mean(rewards) - 1.5) < 0.05 and abs(np.std(rewards) - 0.5) < 0.05
    nav = PointNavigationEnv(horizon=3)
    nav.set_task({"goal": np.array([0.3, 0.0])})
    nav.reset(seed=0)
    obs, reward, _, truncated, _ = nav.step(np.array([1.0, 0.0]))  # clipped to 0.1
    np.testing.assert_allclose(obs, [0.1, 0.0], atol=1e-6)
    assert reward == pytest.approx(-0.2) and not truncated


def test_pendulum_physics_change_with_the_task():
    env = make_env("pendulum", horizon=5)
    light, heavy = {"mass": 0.5, "length": 1.0}, {"mass": 2.0, "length": 1.0}
    after = []
    for task in (light, heavy):
        env.set_task(task)
        obs, _ = env.reset(seed=3)
        assert obs.shape == env.observation_space.shape
        after.append(env.step(np.array([2.0]))[0])
    assert not np.allclose(after[0], after[1])  # the same torque turns a light pole faster
    tasks = env.sample_tasks(50, torch.Generator().manual_seed(0))
    assert all(0.5 <= t["mass"] <= 2.0 and 0.5 <= t["length"] <= 2.0 for t in tasks)
    with pytest.raises(EnvError, match="one finite torque"):
        env.step(np.array([1.0, 2.0]))


def test_gymnasium_make_and_user_registration():
    env = gymnasium.make("metaloop/BernoulliBandit-v0", arms=4, horizon=3)
    assert env.unwrapped.arms == 4

    class Coin(BernoulliBanditEnv):
        pass

    register_env("coin", Coin)
    assert isinstance(make_env("coin", arms=2), Coin)
    assert isinstance(make_env("metaloop.tasks.envs:GaussianBanditEnv"), MetaEnv)
    with pytest.raises(EnvError, match="unknown environment 'nope'"):
        make_env("nope")


def test_bad_input_is_a_one_line_error():
    with pytest.raises(EnvError, match="horizon must be a positive integer, got 0"):
        make_env("bernoulli_bandit", horizon=0)
    env = make_env("bernoulli_bandit", arms=3, horizon=2)
    with pytest.raises(EnvError, match="no task"):
        env.reset()
    env.set_task(env.sample_tasks(1)[0])
    env.reset(seed=0)
    for bad in (3, -1, 1.5, [0, 1]):
        with pytest.raises(EnvError, match=r"outside the action space Discrete\(3\)"):
            env.step(bad)
    env.step(0)
    env.step(np.int64(2))
    with pytest.raises(EnvError, match="after the episode ended"):
        env.step(0)
    nav = PointNavigationEnv()
    nav.set_task({"goal": np.zeros(2)})
    nav.reset()
    with pytest.raises(EnvError, match="2 finite numbers"):
        nav.step(np.zeros(3))


def test_an_env_returning_a_wrong_shape_is_caught():
    class Broken(BernoulliBanditEnv):
        def step(self, action):
            _, r, term, trunc, info = super().step(action)
            return np.zeros(3), r, term, trunc, info

    env = Broken(arms=2, horizon=2)
    env.set_task({"means": [0.5, 0.5]})
    env.reset(seed=0)
    with pytest.raises(EnvError, match=r"observation of shape \(3,\) but its observation_space"):
        check_transition(env, env.step(0))
    with pytest.raises(EnvError, match="must return"):
        check_transition(env, (1, 2))
    with pytest.raises(EnvError, match="one finite number"):
        check_transition(env, (np.zeros(1), np.array([1.0, 2.0]), False, False, {}))


MEANS = [0.8, 0.5, 0.3]
PULLS = 1500


@functools.lru_cache
def regret_of(name: str, seeds: int = 5) -> float:
    env = BernoulliBanditEnv(arms=3, horizon=PULLS)
    run = run_bandit_policy(make_policy(name), env, [{"means": np.array(MEANS)}] * seeds, seed=3)
    return float(run.regrets.sum(1).mean())


def test_ucb1_stays_under_its_finite_time_bound_and_random_does_not():
    bound = ucb1_regret_bound(MEANS, PULLS)  # 8 ln n sum 1/Delta + (1 + pi^2/3) sum Delta
    assert bound == pytest.approx(
        8 * np.log(PULLS) * (1 / 0.3 + 1 / 0.5) + (1 + np.pi**2 / 3) * 0.8
    )
    assert regret_of("ucb1") < bound
    assert regret_of("random") > bound  # the bound is tight enough to catch a broken policy


def test_thompson_sampling_beats_ucb1_on_the_same_bandits():
    assert regret_of("thompson") < 0.5 * regret_of("ucb1")


def test_gittins_index_matches_a_brute_force_recursion():
    @functools.cache
    def value(a, b, r, lam):  # V_r(a, b) with retirement reward lam per step
        if r == 0:
            return 0.0
        p = a / (a + b)
        play = p * (1 + value(a + 1, b, r - 1, lam)) + (1 - p) * value(a, b + 1, r - 1, lam)
        return max(lam * r, play)

    def index(a, b, h):  # bisection on lambda
        lo, hi = 0.0, 1.0
        for _ in range(40):
            lam = (lo + hi) / 2
            p = a / (a + b)
            play = p * (1 + value(a + 1, b, h - 1, lam)) + (1 - p) * value(a, b + 1, h - 1, lam)
            lo, hi = (lam, hi) if play > lam * h else (lo, lam)
        return lo

    table = gittins_table(8)
    for s, f, h in [(0, 0, 1), (0, 0, 8), (2, 1, 5), (0, 3, 4), (1, 1, 6)]:
        assert table[s, f, h] == pytest.approx(index(1 + s, 1 + f, h), abs=2e-3)
    assert table[0, 0, 1] == pytest.approx(0.5)
    assert table[0, 0, 8] > table[0, 0, 2] > 0.5  # exploration is worth more with more left


def test_gittins_is_bayes_optimal_on_a_two_armed_bandit():
    """With one arm known (p = 0.5) and one unknown (uniform prior), the finite-horizon
    Gittins policy is Bayes-optimal; its expected reward equals the optimal value."""

    @functools.cache
    def optimal(s, f, r):
        if r == 0:
            return 0.0
        p = (1 + s) / (2 + s + f)
        unknown = p * (1 + optimal(s + 1, f, r - 1)) + (1 - p) * optimal(s, f + 1, r - 1)
        return max(0.5 * r, unknown)

    horizon, tasks = 6, 2000
    rng = np.random.default_rng(0)
    env = BernoulliBanditEnv(arms=2, horizon=horizon)
    task_list = [{"means": np.array([0.5, p])} for p in rng.random(tasks)]
    policy = make_policy("gittins", Prior("bernoulli"))

    class KnownFirstArm(type(policy)):  # arm 0 is known: its index is 0.5 at any horizon
        def scores(self):
            out = super().scores()
            out[0] = 0.5 - 1e-9
            return out

    got = run_bandit_policy(KnownFirstArm(Prior()), env, task_list, seed=1)
    expected = optimal(0, 0, horizon)
    se = got.total_reward.std() / np.sqrt(tasks)
    assert abs(got.total_reward.mean() - expected) < 3 * se


def test_every_baseline_runs_and_beats_random_on_average():
    env = BernoulliBanditEnv(arms=5, horizon=20)
    tasks = env.sample_tasks(100, torch.Generator().manual_seed(0))
    totals = {
        name: run_bandit_policy(make_policy(name), env, tasks).total_reward.mean()
        for name in POLICIES
    }
    for name, total in totals.items():
        if name != "random":
            assert total > totals["random"] + 1, name
    gaussian = make_env("gaussian_bandit", arms=3, horizon=20)
    g_tasks = gaussian.sample_tasks(50, torch.Generator().manual_seed(0))
    run = run_bandit_policy(make_policy("thompson", Prior.of(gaussian)), gaussian, g_tasks)
    assert run.rewards.shape == (50, 20)
    with pytest.raises(EnvError, match="Bernoulli"):
        run_bandit_policy(make_policy("gittins", Prior.of(gaussian)), gaussian, g_tasks)
    with pytest.raises(ValueError, match="unknown bandit policy"):
        make_policy("softmax")
    assert isinstance(env.action_space, spaces.Discrete)
