"""Interactive task families for meta-reinforcement learning, on gymnasium's ``Env`` API.

A *meta-environment* is a ``gymnasium.Env`` whose task can be changed: ``sample_tasks(n,
generator)`` draws ``n`` task descriptions from the family (a seeded ``torch.Generator``:
same state, same tasks) and ``set_task(task)`` makes the environment that task; after
that, ``reset`` / ``step`` are plain gymnasium calls (``step`` returns ``(observation,
reward, terminated, truncated, info)``).  A meta-RL learner samples tasks, sets them, and
acts; it sees the task only through rewards.

Families (registered by name below and with gymnasium as ``metaloop/<Name>-v0``, so
``gymnasium.make("metaloop/BernoulliBandit-v0", arms=5, horizon=10)`` works too):

* ``bernoulli_bandit``: ``arms`` arms with success probabilities ``p_a ~ Beta(alpha,
  beta)`` drawn per task (``Beta(1, 1)`` = uniform, the RL² paper's setting); a pull of
  arm ``a`` pays ``1`` with probability ``p_a``; one episode is ``horizon`` pulls.
* ``gaussian_bandit``: means ``mu_a ~ N(mean_loc, mean_std^2)`` per task, a pull pays
  ``N(mu_a, noise_std^2)``.
* ``point_navigation``: the 2-D navigation of Finn et al. (2017), section 5.3: the agent
  starts at the origin, the goal is drawn per task uniformly from ``[-goal_range,
  goal_range]^2``, an action is a velocity clipped to ``[-max_step, max_step]^2``, the
  reward is the negative distance to the goal after the move, ``horizon`` steps.
* ``pendulum``: classic-control swing-up with the pole's mass and length drawn per task.

The bandits observe a constant ``[0.]`` in a ``Box(0, 1)`` (everything is in the rewards)
and report the pull's expected regret ``max_a p_a - p_chosen`` in ``info["regret"]``.
Actions outside the action space, stepping after the episode ended, or a horizon below 1 raise
``EnvError`` with a one-line message; ``check_transition`` checks what any (user) env
returns against its declared spaces.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from metaloop.tasks.base import TaskError


class EnvError(TaskError):
    """An environment was built, driven or answered outside its contract."""


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EnvError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class MetaEnv(gymnasium.Env):
    """Base of the meta-environments: a task to sample and set, a horizon, step checks."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's attribute)
    task: dict[str, Any] | None

    def __init__(self, horizon: int) -> None:
        super().__init__()
        self.horizon = _positive("horizon", horizon)
        self.task = None
        self.t = 0
        self._done = True

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> list[dict]:
        raise NotImplementedError

    def set_task(self, task: dict[str, Any]) -> None:
        self.task = task
        self._done = True

    def _require_task(self) -> None:
        if self.task is None:
            raise EnvError(f"{type(self).__name__} has no task: call set_task(task) first")

    def _start(self, seed: int | None) -> None:
        super().reset(seed=seed)
        self._require_task()
        self.t = 0
        self._done = False

    def _advance(self) -> bool:
        """Count a step; ``True`` when the horizon is reached (the episode is truncated)."""
        if self._done:
            raise EnvError("step() after the episode ended: call reset() first")
        self.t += 1
        self._done = self.t >= self.horizon
        return self._done


class BanditEnv(MetaEnv):
    """k-armed bandit: one episode is ``horizon`` pulls of the arms of one task."""

    def __init__(self, arms: int, horizon: int) -> None:
        super().__init__(horizon)
        self.arms = _positive("arms", arms)
        if self.arms < 2:
            raise EnvError(f"a bandit needs arms >= 2, got {arms}")
        self.action_space = spaces.Discrete(self.arms)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)

    @property
    def means(self) -> np.ndarray:
        self._require_task()
        return np.asarray(self.task["means"], dtype=np.float64)

    def _pay(self, arm: int) -> float:
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._start(seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        arm = _discrete_action(action, self.arms)
        truncated = self._advance()
        means = self.means
        reward = self._pay(arm)
        info = {"regret": float(means.max() - means[arm]), "expected_reward": float(means[arm])}
        return np.zeros(1, dtype=np.float32), reward, False, truncated, info


def _discrete_action(action: Any, arms: int) -> int:
    value = np.asarray(action)
    if value.shape != () or not np.issubdtype(value.dtype, np.integer) or not 0 <= value < arms:
        raise EnvError(
            f"action {action!r} is outside the action space Discrete({arms}): "
            f"give one integer in 0..{arms - 1}"
        )
    return int(value)


class BernoulliBanditEnv(BanditEnv):
    """Bernoulli arms with ``p_a ~ Beta(alpha, beta)`` per task (see the module docstring)."""

    def __init__(self, arms: int = 5, horizon: int = 10, alpha: float = 1.0, beta: float = 1.0):
        super().__init__(arms, horizon)
        if not (alpha > 0 and beta > 0):
            raise EnvError(f"alpha and beta must be > 0, got {alpha}, {beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> list[dict]:
        _positive("n", n)
        shape = (n, self.arms)
        if self.alpha == self.beta == 1.0:
            p = torch.rand(shape, generator=generator, dtype=torch.float64)
        else:  # Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b), from the generator
            p = _beta(self.alpha, self.beta, shape, generator)
        return [{"means": row.numpy()} for row in p]

    def _pay(self, arm: int) -> float:
        return float(self.np_random.random() < self.means[arm])


def _beta(a: float, b: float, shape, generator) -> torch.Tensor:
    """Beta draws from uniforms of ``generator`` by inverting the CDF numerically."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    grid = torch.linspace(0, 1, 4097, dtype=torch.float64)[1:-1]
    density = torch.exp((a - 1) * torch.log(grid) + (b - 1) * torch.log1p(-grid))
    cdf = torch.cumsum(density, 0)
    cdf = cdf / cdf[-1]
    return grid[torch.searchsorted(cdf, u.reshape(-1)).clamp(max=grid.numel() - 1)].reshape(shape)


class GaussianBanditEnv(BanditEnv):
    """Gaussian arms: ``mu_a ~ N(mean_loc, mean_std^2)`` per task, pulls ``N(mu_a, noise^2)``."""

    def __init__(
        self,
        arms: int = 5,
        horizon: int = 10,
        mean_loc: float = 0.0,
        mean_std: float = 1.0,
        noise_std: float = 1.0,
    ):
        super().__init__(arms, horizon)
        if not (mean_std >= 0 and noise_std > 0):
            raise EnvError(f"mean_std must be >= 0 and noise_std > 0, got {mean_std}, {noise_std}")
        self.mean_loc, self.mean_std, self.noise_std = float(mean_loc), mean_std, noise_std
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> list[dict]:
        _positive("n", n)
        mu = torch.randn(n, self.arms, generator=generator, dtype=torch.float64)
        return [{"means": (self.mean_loc + self.mean_std * row).numpy()} for row in mu]

    def _pay(self, arm: int) -> float:
        return float(self.means[arm] + self.noise_std * self.np_random.standard_normal())


class PointNavigationEnv(MetaEnv):
    """2-D point navigation to a per-task goal (Finn et al. 2017, section 5.3)."""

    def __init__(self, horizon: int = 100, goal_range: float = 0.5, max_step: float = 0.1):
        super().__init__(horizon)
        if not (goal_range > 0 and max_step > 0):
            raise EnvError(f"goal_range and max_step must be > 0, got {goal_range}, {max_step}")
        self.goal_range, self.max_step = float(goal_range), float(max_step)
        self.action_space = spaces.Box(-max_step, max_step, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.position = np.zeros(2)

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> list[dict]:
        _positive("n", n)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return [{"goal": (self.goal_range * (2 * row - 1)).numpy()} for row in u]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._start(seed)
        self.position = np.zeros(2)
        return self.position.astype(np.float32), {}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise EnvError(
                f"action must be 2 finite numbers (a velocity, clipped to +-{self.max_step}), "
                f"got {action!r}"
            )
        truncated = self._advance()
        self.position = self.position + np.clip(a, -self.max_step, self.max_step)
        distance = float(np.linalg.norm(self.position - np.asarray(self.task["goal"])))
        return self.position.astype(np.float32), -distance, False, truncated, {}


class PendulumEnv(MetaEnv):
    """Classic-control pendulum swing-up (gymnasium's ``Pendulum-v1`` dynamics) with the
    pole's mass and length drawn per task, ``m ~ U[mass_range]``, ``l ~ U[length_range]``:

        thdot' = thdot + (3 g / (2 l) sin(th) + 3 / (m l^2) u) dt,   th' = th + thdot' dt,

    reward ``-(th^2 + 0.1 thdot^2 + 0.001 u^2)``, torque ``u`` clipped to ``[-2, 2]``,
    observation ``(cos th, sin th, thdot)``, ``horizon`` steps."""

    def __init__(
        self,
        horizon: int = 200,
        mass_range: tuple[float, float] = (0.5, 2.0),
        length_range: tuple[float, float] = (0.5, 2.0),
    ):
        super().__init__(horizon)
        from gymnasium.envs.classic_control.pendulum import PendulumEnv as Dynamics

        for name, (low, high) in (("mass_range", mass_range), ("length_range", length_range)):
            if not 0 < low <= high:
                raise EnvError(f"{name} must satisfy 0 < low <= high, got ({low}, {high})")
        self.mass_range, self.length_range = tuple(mass_range), tuple(length_range)
        self.dynamics = Dynamics()
        self.action_space = self.dynamics.action_space
        self.observation_space = self.dynamics.observation_space

    def sample_tasks(self, n: int, generator: torch.Generator | None = None) -> list[dict]:
        _positive("n", n)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        (m0, m1), (l0, l1) = self.mass_range, self.length_range
        return [
            {"mass": float(m0 + (m1 - m0) * a), "length": float(l0 + (l1 - l0) * b)}
            for a, b in u.tolist()
        ]

    def set_task(self, task: dict[str, Any]) -> None:
        super().set_task(task)
        self.dynamics.m, self.dynamics.l = float(task["mass"]), float(task["length"])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._start(seed)
        return self.dynamics.reset(seed=seed)

    def step(self, action):
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (1,) or not np.isfinite(a).all():
            raise EnvError(f"action must be one finite torque (clipped to +-2), got {action!r}")
        truncated = self._advance()
        obs, reward, _, _, info = self.dynamics.step(a)
        return obs, float(reward), False, truncated, info


def check_transition(env: gymnasium.Env, transition: tuple) -> tuple:
    """Check ``env.step``'s answer against the env's declared observation space: five
    items, an observation of the declared shape, a finite scalar reward.  Returns it."""
    if not isinstance(transition, tuple) or len(transition) != 5:
        raise EnvError(
            f"{type(env).__name__}.step must return (observation, reward, terminated, "
            f"truncated, info), got {type(transition).__name__} of length "
            f"{len(transition) if hasattr(transition, '__len__') else '?'}"
        )
    obs, reward, terminated, truncated, info = transition
    check_observation(env, obs)
    r = np.asarray(reward)
    if r.shape != () or not np.isfinite(r):
        raise EnvError(
            f"{type(env).__name__}.step returned reward {reward!r}: it must be one finite number"
        )
    return obs, float(r), bool(terminated), bool(truncated), info


def check_observation(env: gymnasium.Env, obs: Any) -> np.ndarray:
    """The observation as an array, or ``EnvError`` if its shape is not the declared one."""
    expected = env.observation_space.shape
    got = np.asarray(obs)
    if got.shape != expected:
        raise EnvError(
            f"{type(env).__name__} returned an observation of shape {got.shape} but its "
            f"observation_space declares {expected}"
        )
    return got


# -- the registry ----------------------------------------------------------------------------

ENVS: dict[str, Callable[..., MetaEnv]] = {
    "bernoulli_bandit": BernoulliBanditEnv,
    "gaussian_bandit": GaussianBanditEnv,
    "point_navigation": PointNavigationEnv,
    "pendulum": PendulumEnv,
}
GYM_IDS = {
    "bernoulli_bandit": "metaloop/BernoulliBandit-v0",
    "gaussian_bandit": "metaloop/GaussianBandit-v0",
    "point_navigation": "metaloop/PointNavigation-v0",
    "pendulum": "metaloop/Pendulum-v0",
}


def register_env(name: str, entry: Callable[..., MetaEnv] | str) -> None:
    """Make ``make_env(name)`` build ``entry`` (a class or ``"package.module:Class"``)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise EnvError(f"an environment name must be an identifier, got {name!r}")
    ENVS[name] = _resolve(entry) if isinstance(entry, str) else entry


def _resolve(path: str) -> Callable[..., MetaEnv]:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise EnvError(f"cannot import environment {path!r} ({err})") from err


def make_env(name: str, **kwargs: Any) -> MetaEnv:
    """Build the meta-environment registered as ``name`` (or ``"package.module:Class"``)."""
    if name in ENVS:
        cls = ENVS[name]
    elif ":" in name:
        cls = _resolve(name)
    else:
        raise EnvError(f"unknown environment {name!r}; choose one of {', '.join(sorted(ENVS))}")
    env = cls(**kwargs)
    if not hasattr(env, "set_task") or not hasattr(env, "sample_tasks"):
        raise EnvError(f"{name!r} is not a meta-environment (needs sample_tasks and set_task)")
    return env


for _name, _id in GYM_IDS.items():
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=ENVS[_name])


__all__ = [
    "ENVS",
    "BanditEnv",
    "BernoulliBanditEnv",
    "EnvError",
    "GaussianBanditEnv",
    "MetaEnv",
    "PendulumEnv",
    "PointNavigationEnv",
    "check_observation",
    "check_transition",
    "env_pool",
    "make_env",
    "register_env",
]


def env_pool(env: MetaEnv, size: int, pool: list[MetaEnv] | None = None) -> list[MetaEnv]:
    """``size`` independent copies of ``env`` (reusing and extending ``pool``), for stepping
    a batch of tasks in lockstep."""
    pool = [] if pool is None else pool
    while len(pool) < size:
        pool.append(copy.deepcopy(env))
    return pool[:size]
