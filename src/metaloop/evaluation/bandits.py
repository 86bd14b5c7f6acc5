"""Hand-designed bandit policies, the baselines of meta-RL on bandits (as the RL² paper
compares, Duan et al. 2016), and the loop that scores any of them on a bandit family.

Every policy keeps, per arm ``a``, the pull count ``n_a`` and reward sum ``s_a``, and a
conjugate posterior over the arm's mean:

* Bernoulli arms: ``Beta(alpha + s_a, beta + n_a - s_a)`` (``alpha = beta = 1``, uniform);
* Gaussian arms with known noise ``sigma``: ``N(m_a, v_a)``, ``1/v_a = 1/s0^2 + n_a/sigma^2``,
  ``m_a = v_a (m0/s0^2 + s_a/sigma^2)``.

Policies (ties between equal scores are broken uniformly at random):

* ``random``: a uniform arm.
* ``greedy``: the arm of largest posterior mean.
* ``epsilon_greedy``: a uniform arm with probability ``epsilon``, else greedy.
* ``ucb1`` (Auer, Cesa-Bianchi and Fischer 2002): every arm once, then the arm maximising
  ``xbar_a + sqrt(c ln t / n_a)`` (``c = 2`` is the paper's UCB1, ``t`` the pulls so far).
* ``thompson`` (Thompson 1933): a draw ``theta_a`` from each posterior, the largest.
* ``optimistic_thompson`` (May et al. 2012): ``max(theta_a, posterior mean_a)``, the largest.
* ``gittins`` (Bernoulli arms only): the finite-horizon Gittins index (Nino-Mora 2011;
  Kaufmann 2018), the retirement-calibration index with ``h`` pulls left:
  ``G(a, b, h) = min { lambda : lambda h >= p (1 + V_{h-1}(a+1, b)) + (1 - p) V_{h-1}(a, b+1) }``
  with ``p = a / (a + b)`` and ``V_r(a, b) = max(lambda r, p (1 + V_{r-1}(a+1, b)) +
  (1 - p) V_{r-1}(a, b+1))``, ``V_0 = 0``: the constant reward per step that makes retiring
  now as good as playing the arm optimally with the option to retire later.  Computed by
  dynamic programming over all ``(successes, failures, pulls left)`` of the horizon at once
  on a grid of ``lambda``, the crossing interpolated linearly (the difference is piecewise
  linear in ``lambda``), and cached per ``(horizon, alpha, beta)``.

``run_bandit_policy`` plays a policy on given tasks of a ``BanditEnv`` and returns the
rewards and expected regrets of every pull.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from metaloop.tasks.envs import BanditEnv, BernoulliBanditEnv, EnvError, GaussianBanditEnv


@dataclass
class Prior:
    """The conjugate prior a policy keeps: Beta(alpha, beta) or N(m0, s0^2) with noise sigma."""

    kind: str = "bernoulli"
    alpha: float = 1.0
    beta: float = 1.0
    m0: float = 0.0
    s0: float = 1.0
    sigma: float = 1.0

    @classmethod
    def of(cls, env: BanditEnv) -> Prior:
        """The env's own task prior (the Bayes-correct one for these policies)."""
        if isinstance(env, BernoulliBanditEnv):
            return cls("bernoulli", alpha=env.alpha, beta=env.beta)
        if isinstance(env, GaussianBanditEnv):
            return cls("gaussian", m0=env.mean_loc, s0=max(env.mean_std, 1e-8), sigma=env.noise_std)
        raise EnvError(f"no conjugate prior for {type(env).__name__}")


class BanditPolicy:
    """Counts and posterior of a policy over ``arms`` arms; subclasses choose ``scores``."""

    name = "policy"

    def __init__(self, prior: Prior | None = None) -> None:
        self.prior = prior or Prior()

    def reset(self, arms: int, horizon: int, rng: np.random.Generator) -> None:
        self.arms, self.horizon, self.rng = arms, horizon, rng
        self.counts = np.zeros(arms)
        self.sums = np.zeros(arms)
        self.t = 0

    def update(self, arm: int, reward: float) -> None:
        self.counts[arm] += 1
        self.sums[arm] += reward
        self.t += 1

    def posterior_mean(self) -> np.ndarray:
        p, n, s = self.prior, self.counts, self.sums
        if p.kind == "bernoulli":
            return (p.alpha + s) / (p.alpha + p.beta + n)
        precision = 1 / p.s0**2 + n / p.sigma**2
        return (p.m0 / p.s0**2 + s / p.sigma**2) / precision

    def posterior_sample(self) -> np.ndarray:
        p, n, s = self.prior, self.counts, self.sums
        if p.kind == "bernoulli":
            return self.rng.beta(p.alpha + s, p.beta + n - s)
        precision = 1 / p.s0**2 + n / p.sigma**2
        return self.posterior_mean() + self.rng.standard_normal(self.arms) / np.sqrt(precision)

    def scores(self) -> np.ndarray:
        raise NotImplementedError

    def act(self) -> int:
        scores = self.scores()
        best = np.flatnonzero(scores >= scores.max() - 1e-12)
        return int(best[self.rng.integers(len(best))])


class RandomPolicy(BanditPolicy):
    name = "random"

    def scores(self) -> np.ndarray:
        return np.zeros(self.arms)


class GreedyPolicy(BanditPolicy):
    name = "greedy"

    def scores(self) -> np.ndarray:
        return self.posterior_mean()


class EpsilonGreedyPolicy(GreedyPolicy):
    name = "epsilon_greedy"

    def __init__(self, prior: Prior | None = None, epsilon: float = 0.1) -> None:
        super().__init__(prior)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def act(self) -> int:
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.arms))
        return super().act()


class UCB1Policy(BanditPolicy):
    name = "ucb1"

    def __init__(self, prior: Prior | None = None, c: float = 2.0) -> None:
        super().__init__(prior)
        if not c >= 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.c = c

    def scores(self) -> np.ndarray:
        unpulled = self.counts == 0
        if unpulled.any():
            return unpulled.astype(float)  # every arm once first
        return self.sums / self.counts + np.sqrt(self.c * math.log(self.t) / self.counts)


class ThompsonPolicy(BanditPolicy):
    name = "thompson"

    def scores(self) -> np.ndarray:
        return self.posterior_sample()


class OptimisticThompsonPolicy(BanditPolicy):
    name = "optimistic_thompson"

    def scores(self) -> np.ndarray:
        return np.maximum(self.posterior_sample(), self.posterior_mean())


class GittinsPolicy(BanditPolicy):
    """Finite-horizon Gittins index for Bernoulli arms (see the module docstring)."""

    name = "gittins"

    def reset(self, arms: int, horizon: int, rng: np.random.Generator) -> None:
        if self.prior.kind != "bernoulli":
            raise EnvError("the Gittins index here is for Bernoulli arms with a Beta prior only")
        super().reset(arms, horizon, rng)
        self.table = gittins_table(horizon, self.prior.alpha, self.prior.beta)

    def scores(self) -> np.ndarray:
        s = self.sums.astype(int)
        f = (self.counts - self.sums).astype(int)
        return self.table[s, f, self.horizon - self.t]


@functools.lru_cache(maxsize=8)
def gittins_table(
    horizon: int, alpha: float = 1.0, beta: float = 1.0, grid: int = 201
) -> np.ndarray:
    """``G[s, f, h]``: the finite-horizon Gittins index of an arm with posterior
    ``Beta(alpha + s, beta + f)`` and ``h`` pulls left (``s + f + h <= horizon``; other
    entries are 0).  Dynamic programming on a ``lambda`` grid of ``grid`` points in [0, 1]."""
    n = horizon
    lam = np.linspace(0.0, 1.0, grid)
    s = np.arange(n + 1)[:, None]
    f = np.arange(n + 1)[None, :]
    p = ((alpha + s) / (alpha + beta + s + f))[..., None]  # [n+1, n+1, 1]
    value = np.zeros((n + 2, n + 2, grid))  # V_{r-1}; padded so s+1, f+1 index safely
    table = np.zeros((n + 1, n + 1, n + 1))
    for r in range(1, n + 1):
        play = p * (1 + value[1:, :-1]) + (1 - p) * value[:-1, 1:]  # [n+1, n+1, grid]
        diff = play - lam * r  # decreasing in lambda, >= 0 at 0 and <= 0 at 1
        first = np.argmax(diff <= 0, axis=-1)  # first grid point where retiring is as good
        hi = np.clip(first, 1, grid - 1)
        d_hi = np.take_along_axis(diff, hi[..., None], -1)[..., 0]
        d_lo = np.take_along_axis(diff, (hi - 1)[..., None], -1)[..., 0]
        frac = np.where(d_lo - d_hi > 0, d_lo / np.maximum(d_lo - d_hi, 1e-300), 0.0)
        table[:, :, r] = lam[hi - 1] + frac * (lam[1] - lam[0])
        value[:-1, :-1] = np.maximum(lam * r, play)
    valid = (s + f)[..., None] + np.arange(n + 1) <= n
    return np.where(valid, table, 0.0)


POLICIES: dict[str, Callable[..., BanditPolicy]] = {
    "random": RandomPolicy,
    "greedy": GreedyPolicy,
    "epsilon_greedy": EpsilonGreedyPolicy,
    "ucb1": UCB1Policy,
    "thompson": ThompsonPolicy,
    "optimistic_thompson": OptimisticThompsonPolicy,
    "gittins": GittinsPolicy,
}


def make_policy(name: str, prior: Prior | None = None, **kwargs) -> BanditPolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown bandit policy {name!r}; choose one of {', '.join(POLICIES)}")
    return POLICIES[name](prior, **kwargs)


@dataclass
class BanditRun:
    """``rewards [tasks, horizon]`` and expected ``regrets [tasks, horizon]`` of every pull."""

    rewards: np.ndarray
    regrets: np.ndarray

    @property
    def total_reward(self) -> np.ndarray:
        return self.rewards.sum(1)

    @property
    def cumulative_regret(self) -> np.ndarray:
        return self.regrets.cumsum(1)


def run_bandit_policy(
    policy: BanditPolicy, env: BanditEnv, tasks: Sequence[dict], seed: int = 0
) -> BanditRun:
    """Play one episode (``env.horizon`` pulls) of ``policy`` on each task.  The env's
    rewards are seeded with ``seed + i`` for task ``i`` and the policy's randomness from
    ``seed``, so two policies see the same reward draws for the same (task, arm, pull)."""
    rewards = np.zeros((len(tasks), env.horizon))
    regrets = np.zeros_like(rewards)
    rng = np.random.default_rng(seed)
    for i, task in enumerate(tasks):
        env.set_task(task)
        env.reset(seed=seed + i)
        policy.reset(env.arms, env.horizon, rng)
        for t in range(env.horizon):
            arm = policy.act()
            _, reward, _, _, info = env.step(arm)
            policy.update(arm, reward)
            rewards[i, t], regrets[i, t] = reward, info["regret"]
    return BanditRun(rewards, regrets)


def ucb1_regret_bound(means: Sequence[float], pulls: int) -> float:
    """Auer, Cesa-Bianchi and Fischer (2002), Theorem 1: UCB1's expected regret after
    ``n`` pulls is at most ``8 sum_{i: Delta_i > 0} ln(n) / Delta_i + (1 + pi^2/3)
    sum_j Delta_j`` for rewards in [0, 1]."""
    mu = np.asarray(means, dtype=float)
    gaps = mu.max() - mu
    positive = gaps[gaps > 0]
    return float(8 * np.sum(math.log(pulls) / positive) + (1 + math.pi**2 / 3) * gaps.sum())


__all__ = [
    "POLICIES",
    "BanditPolicy",
    "BanditRun",
    "EpsilonGreedyPolicy",
    "GittinsPolicy",
    "GreedyPolicy",
    "OptimisticThompsonPolicy",
    "Prior",
    "RandomPolicy",
    "ThompsonPolicy",
    "UCB1Policy",
    "gittins_table",
    "make_policy",
    "run_bandit_policy",
    "ucb1_regret_bound",
]
