"""MAML for reinforcement learning (Finn et al. 2017, section 5.3), with the meta-gradient
of the sampled objective done right.

``MAMLRL`` adapts by policy-gradient steps on sampled episodes and differentiates through
them, adding the score term of the inner samples (DiCE's magic box) so that its meta-gradient
is unbiased for ``E_b[J(theta + alpha g(theta; b))]``.  The inner step (its baselines,
standardisation and time averaging), the meta-objective, its surrogate and the estimator
options (``score_baseline``, ``sampling_term``, ``first_order``, ``low_variance_curvature``)
are derived in the docstring of ``metaloop.algorithms.maml_rl_estimators``, beside the
advantage estimators; this module is the learner: sampling, the inner update, ``meta_loss``.

``count_inner=True`` maximises the return of *every* episode, the inner ones included,

    F(theta) = E[ sum_s K_s J(theta_s) ] / sum_s K_s,    theta_0 = theta,

each term with the score of the inner samples drawn before it; this is the protocol for
bandits, where every pull of the horizon counts: with env horizon 1 (one pull per
episode), ``inner_steps = m`` and ``inner_episodes = outer_episodes = n / (m + 1)``, the
policy pulls ``n / (m + 1)`` times, takes a policy-gradient step on the pulls of that
block, pulls again, ..., and the total reward is the sum over all ``n`` pulls.

Policies: any ``nn.Module`` from observations ``[N, obs_dim]`` to logits (Discrete action
spaces) or Gaussian means (Box; a learned state-independent ``log_std``, adapted too).  All
tasks of a batch run in lockstep, the policy vectorised over per-task parameters with
``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.distributions import Categorical, Normal
from torch.func import functional_call, vmap

from metaloop.algorithms.maml_rl_estimators import (
    BASELINES,
    SCORE_BASELINES,
    Episodes,
    leave_one_out_advantages,
    linear_feature_baseline,
    reward_to_go,
)
from metaloop.tasks.envs import EnvError, MetaEnv, check_observation, check_transition, env_pool
from metaloop.validate import is_int

Params = dict[str, Tensor]


class MAMLRL(nn.Module):
    """MAML with a policy-gradient inner step (see the module docstring).

    Args:
        policy: observations ``[N, obs_dim]`` -> logits or Gaussian means.
        env: the meta-environment.
        inner_lr: ``alpha``.
        inner_steps: policy-gradient steps per task.
        inner_episodes: ``K`` episodes per inner step; ``outer_episodes``: ``K_out``.
        gamma: discount of the returns and advantages.
        first_order: drop ``d g / d theta`` (the inner step's Jacobian).
        sampling_term: keep the score term of the inner samples (unbiased; default).
        init_log_std: initial log standard deviation of Gaussian policies.
        count_inner: also maximise the return of the inner episodes (every pull counts:
            the bandit protocol below).
        baseline: ``"leave_one_out"`` (mean reward-to-go of the other episodes) or
            ``"linear"`` (the linear feature baseline, fitted on the other episodes).
        score_baseline: what the score term's return is compared with: ``"batch"`` (the
            other tasks' mean) or ``"pre_update"`` (this task's own return before adaptation,
            with its known bias added back; see ``maml_rl_estimators``).
        low_variance_curvature: the inner surrogate uses the likelihood ratio ``pi /
            stopgrad(pi)`` (ProMP's LVC: same step, biased low-variance curvature); needs
            ``sampling_term=False``, as it replaces the score term.
        normalize_advantages: standardise the inner step's advantages per task.
        time_average: the inner surrogate is a mean over time steps too (divided by ``T``).
    """

    learns_in_context = False  # adapts by policy-gradient steps: evaluated by ``adapt``

    def __init__(
        self,
        policy: nn.Module,
        env: MetaEnv,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        inner_episodes: int = 20,
        outer_episodes: int = 20,
        gamma: float = 0.99,
        first_order: bool = False,
        sampling_term: bool = True,
        init_log_std: float = 0.0,
        count_inner: bool = False,
        baseline: str = "leave_one_out",
        normalize_advantages: bool = False,
        time_average: bool = False,
        score_baseline: str = "batch",
        low_variance_curvature: bool = False,
    ) -> None:
        super().__init__()
        if low_variance_curvature and sampling_term:
            raise ValueError(
                "low_variance_curvature replaces the inner samples' score term: "
                "set sampling_term=False with it"
            )
        self.low_variance_curvature = bool(low_variance_curvature)
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        if score_baseline not in SCORE_BASELINES:
            raise ValueError(
                f"score_baseline must be one of {', '.join(SCORE_BASELINES)}, "
                f"got {score_baseline!r}"
            )
        self.score_baseline = score_baseline
        for name, value in (
            ("inner_steps", inner_steps),
            ("inner_episodes", inner_episodes),
            ("outer_episodes", outer_episodes),
        ):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        self.policy, self.env = policy, env
        space = env.action_space
        if isinstance(space, spaces.Discrete):
            self.discrete = True
        elif isinstance(space, spaces.Box) and len(space.shape) == 1:
            self.discrete = False
            self.log_std = nn.Parameter(torch.full(space.shape, float(init_log_std)))
        else:
            raise EnvError(f"MAML-RL needs a Discrete or 1-D Box action space, got {space}")
        self.inner_lr, self.inner_steps = float(inner_lr), inner_steps
        self.inner_episodes, self.outer_episodes = inner_episodes, outer_episodes
        self.gamma, self.first_order, self.sampling_term = gamma, first_order, sampling_term
        self.count_inner = bool(count_inner)
        self.baseline = baseline
        self.normalize_advantages, self.time_average = (
            bool(normalize_advantages),
            bool(time_average),
        )
        self._pool: list[MetaEnv] = []

    def set_env(self, env: MetaEnv) -> None:
        """Act in ``env`` from now on (a new horizon, say); drops the cached copies."""
        self.env, self._pool = env, []

    # -- the functional core ---------------------------------------------------------------

    def params(self) -> Params:
        return dict(self.named_parameters())

    def batched(self, params: Params, tasks: int) -> Params:
        """The parameters repeated along a leading task dimension (differentiable)."""
        return {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}

    def distribution(self, params: Params, obs: Tensor):
        """``pi(. | obs)`` for per-task parameters ``[B, ...]`` and ``obs [B, N, obs_dim]``."""
        net = {k[len("policy.") :]: v for k, v in params.items() if k.startswith("policy.")}
        out = vmap(lambda p, o: functional_call(self.policy, p, (o,)))(net, obs)
        if self.discrete:
            return Categorical(logits=out)
        return Normal(out, params["log_std"].exp().unsqueeze(1).expand_as(out))

    def log_probs(self, params: Params, episodes: Episodes) -> Tensor:
        """``log pi(a_kt | s_kt)`` under per-task ``params``, ``[B, K, T]``."""
        b, k, t = episodes.rewards.shape
        dist = self.distribution(params, episodes.obs.reshape(b, k * t, -1))
        actions = episodes.actions.reshape(b, k * t, *episodes.actions.shape[3:])
        lp = dist.log_prob(actions)
        if not self.discrete:
            lp = lp.sum(-1)
        return lp.reshape(b, k, t)

    def advantages(self, episodes: Episodes) -> Tensor:
        """``A_kt = G_kt - baseline_kt``, ``[B, K, T]``, with the configured leave-one-out
        baseline (a function of the samples only)."""
        if self.baseline == "leave_one_out":
            return leave_one_out_advantages(episodes.rewards, self.gamma)
        returns = reward_to_go(episodes.rewards, self.gamma)
        return returns - linear_feature_baseline(episodes.obs, returns)

    def weights(self, episodes: Episodes, inner: bool = False) -> Tensor:
        """The coefficients ``c_kt`` of ``log pi(a_kt | s_kt)`` in the surrogate, ``[B, K,
        T]``, detached: ``gamma^t A_kt / K``; ``inner``: with ``normalize_advantages`` and
        ``time_average`` applied (see ``maml_rl_estimators``)."""
        advantages = self.advantages(episodes).detach()
        _, k, horizon = advantages.shape
        if inner and self.normalize_advantages and k * horizon > 1:
            mean = advantages.mean((1, 2), keepdim=True)
            std = advantages.std((1, 2), keepdim=True)
            advantages = (advantages - mean) / (std + 1e-8)
        t = torch.arange(horizon, dtype=advantages.dtype)
        out = advantages * self.gamma**t / k
        return out / horizon if inner and self.time_average else out

    def surrogate(self, params: Params, episodes: Episodes, inner: bool = False) -> Tensor:
        """Per-task ``sum_kt c_kt log pi(a_kt | s_kt)``, ``[B]`` (``c = weights(episodes,
        inner)``): its gradient is an unbiased policy-gradient estimate of ``grad J``, or with
        ``inner`` the inner step's ``g``.  With ``inner`` and ``low_variance_curvature``,
        ``sum_kt c_kt pi / stopgrad(pi)`` instead: the same gradient, the LVC Hessian."""
        log_probs = self.log_probs(params, episodes)
        if inner and self.low_variance_curvature:
            log_probs = torch.exp(log_probs - log_probs.detach())  # the ratio, value 1
        return (log_probs * self.weights(episodes, inner)).sum((1, 2))

    @torch.no_grad()
    def rollout(
        self, params: Params, tasks: Sequence[dict], episodes: int, seed: int = 0
    ) -> Episodes:
        """``episodes`` episodes of each task under per-task ``params`` (``[B, ...]``); the
        env of (task ``i``, episode ``k``) is seeded ``seed + i * episodes + k``."""
        b = len(tasks)
        if b == 0:
            raise EnvError("rollout needs at least one task")
        envs = env_pool(self.env, b * episodes, self._pool)
        obs = []
        for j, env in enumerate(envs):
            env.set_task(tasks[j // episodes])
            obs.append(check_observation(env, env.reset(seed=seed + j)[0]))
        columns: dict[str, list] = {"obs": [], "actions": [], "rewards": []}
        for _ in range(self.env.horizon):
            o = torch.as_tensor(np.stack(obs), dtype=torch.float32).reshape(b, episodes, -1)
            action = self.distribution(params, o).sample()  # [B, K(, d)]
            flat = action.reshape(b * episodes, *action.shape[2:])
            rewards = []
            for j, env in enumerate(envs):
                act = int(flat[j]) if self.discrete else flat[j].numpy()
                obs[j], r, _, _, _ = check_transition(env, env.step(act))
                rewards.append(r)
            columns["obs"].append(o)
            columns["actions"].append(action)
            columns["rewards"].append(torch.tensor(rewards, dtype=torch.float32).view(b, episodes))
        return Episodes(*(torch.stack(columns[k], 2) for k in ("obs", "actions", "rewards")))

    def inner_update(self, params: Params, episodes: Episodes, create_graph: bool) -> Params:
        """``theta' = theta + alpha g(theta; b)`` for every task at once."""
        names = list(params)
        grads = torch.autograd.grad(
            self.surrogate(params, episodes, inner=True).sum(),
            [params[k] for k in names],
            create_graph=create_graph,
        )
        return {k: params[k] + self.inner_lr * g for k, g in zip(names, grads)}

    # -- the protocol ----------------------------------------------------------------------

    def adapt(
        self, tasks: Sequence[dict], steps: int | None = None, seed: int = 0
    ) -> tuple[Params, list[Episodes]]:
        """Per-task parameters after ``steps`` inner steps (default ``inner_steps``), and the
        episodes sampled before each step (``steps + 1`` batches: the last with the final
        parameters, i.e. the post-adaptation performance)."""
        steps = self.inner_steps if steps is None else steps
        params = self.batched({k: v.detach() for k, v in self.params().items()}, len(tasks))
        params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        history = []
        for s in range(steps + 1):
            episodes = self.rollout(params, tasks, self.inner_episodes, seed + 7919 * s)
            history.append(episodes)
            if s < steps:
                with torch.enable_grad():
                    new = self.inner_update(params, episodes, create_graph=False)
                params = {k: v.detach().requires_grad_(True) for k, v in new.items()}
        return params, history

    def meta_loss(self, tasks: Sequence[dict], seed: int = 0) -> tuple[Tensor, dict[str, float]]:
        """``-`` the surrogate of ``maml_rl_estimators``' docstring, averaged over ``tasks``; with
        ``count_inner``, the average of every batch's term weighted by its episodes."""
        b = len(tasks)
        params = self.batched(self.params(), b)
        inner_log_prob = torch.zeros(b)
        terms: list[tuple[float, Tensor, Tensor, Tensor]] = []  # weight, S, R, score prefix
        first_returns = first_surrogate = torch.zeros(b)
        for s in range(self.inner_steps):
            episodes = self.rollout(params, tasks, self.inner_episodes, seed + 7919 * s)
            returns = episodes.discounted_returns(self.gamma).mean(-1)
            surrogate = self.surrogate(params, episodes)
            if s == 0:
                first_returns, first_surrogate = returns, surrogate
            if self.count_inner:
                terms.append((self.inner_episodes, surrogate, returns, inner_log_prob))
            if self.sampling_term:
                inner_log_prob = inner_log_prob + self.log_probs(params, episodes).sum((1, 2))
            params = self.inner_update(params, episodes, create_graph=not self.first_order)
        outer = self.rollout(params, tasks, self.outer_episodes, seed + 7919 * self.inner_steps)
        returns = outer.discounted_returns(self.gamma).mean(-1)  # R_out per task
        terms.append((self.outer_episodes, self.surrogate(params, outer), returns, inner_log_prob))
        total_weight = sum(t[0] for t in terms)
        objective = torch.zeros(b)
        for index, (weight, surrogate, r, prefix) in enumerate(terms):
            scored = not (self.count_inner and index == 0)  # the first batch has no prefix
            if self.sampling_term and scored:
                if self.score_baseline == "pre_update":
                    baseline = first_returns
                    surrogate = surrogate + first_surrogate  # adds back E[score * R_0]
                else:
                    baseline = (r.sum() - r) / (b - 1) if b > 1 else torch.zeros_like(r)
                box = torch.exp(prefix - prefix.detach())
                surrogate = surrogate + (box - 1) * (r - baseline).detach()
            objective = objective + weight / total_weight * surrogate
        loss = -objective.mean()
        metrics = {
            "loss": float(loss.detach()),
            "return_before": float(first_returns.mean()),
            "return_after": float(returns.mean()),
        }
        if not self.discrete:
            metrics["log_std"] = float(self.log_std.detach().mean())
        return loss, metrics

    def extra_repr(self) -> str:
        return (
            f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"inner_episodes={self.inner_episodes}, outer_episodes={self.outer_episodes}, "
            f"first_order={self.first_order}, sampling_term={self.sampling_term}, "
            f"baseline={self.baseline}, normalize_advantages={self.normalize_advantages}, "
            f"time_average={self.time_average}, score_baseline={self.score_baseline}, "
            f"low_variance_curvature={self.low_variance_curvature}"
        )


__all__ = [
    "MAMLRL",
    "Episodes",
    "leave_one_out_advantages",
    "linear_feature_baseline",
    "reward_to_go",
]
