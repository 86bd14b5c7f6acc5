"""MAML for reinforcement learning (Finn et al. 2017, section 5.3), with the meta-gradient
of the sampled objective done right.

For a task, ``K`` episodes ``b`` are sampled with the policy ``pi_theta`` and the inner
step is a policy-gradient step on them,

    g(theta; b) = (1/K) sum_k sum_t gamma^t grad log pi_theta(a_kt | s_kt) A_kt,
    theta' = theta + alpha g(theta; b),

with ``A_kt = G_kt - baseline_t``: the discounted reward-to-go minus the mean reward-to-go
at step ``t`` of the *other* ``K - 1`` episodes (leave-one-out, so the estimate stays
unbiased).  The meta-objective is the expected return after adaptation, averaged over the
inner samples as well (every pull of the inner episodes is drawn from ``pi_theta``):

    F(theta) = E_{b ~ pi_theta} [ J(theta + alpha g(theta; b)) ].

Its gradient has two parts,

    grad F = E_b[ grad log p_theta(b) J(theta') ]
           + E_b[ (I + alpha d g(theta; b)/d theta)^T grad J(theta') ],

the second through the inner step with the samples held fixed (second order:
``d g / d theta`` is ``sum gamma^t A grad^2 log pi``), the first the score of the inner
samples' own distribution, which differentiating the sampled inner loss alone misses (the
term whose omission E-MAML and ProMP point out; DiCE's magic box ``exp(x - stopgrad(x))``
supplies it).  ``meta_loss`` builds the surrogate

    L = -( S_out(theta') + (box(sum log pi_theta(b)) - 1) stopgrad(R_out - c) ),

where ``S_out`` is the same policy-gradient surrogate on ``K_out`` fresh episodes of
``pi_theta'`` (its gradient in ``theta'`` estimates ``grad J(theta')``), ``R_out`` their mean
discounted return (the value of ``J(theta')``), ``c`` the mean ``R_out`` of the other tasks
in the batch (a baseline independent of this task's samples), and ``box(x) = exp(x -
stopgrad(x))`` (value 1, gradient ``grad x``).  Its gradient is an unbiased estimate of
``-grad F`` (tested against the closed form on a two-armed one-step bandit).
``sampling_term=False`` drops the score term (the original implementation's estimate,
biased; also tested); ``first_order=True`` also drops ``d g / d theta``.  With several
inner steps, each samples fresh episodes with the current parameters and the box covers
all inner samples.

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
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.distributions import Categorical, Normal
from torch.func import functional_call, vmap

from metaloop.tasks.envs import EnvError, MetaEnv, check_observation, check_transition, env_pool
from metaloop.validate import is_int

Params = dict[str, Tensor]


@dataclass
class Episodes:
    """``K`` episodes of each of ``B`` tasks: ``obs [B, K, T, obs_dim]``, ``actions [B, K, T]``
    (Discrete) or ``[B, K, T, d]`` (Box), ``rewards [B, K, T]``."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor

    def discounted_returns(self, gamma: float) -> Tensor:
        """``sum_t gamma^t r_t`` per episode, ``[B, K]``."""
        t = torch.arange(self.rewards.shape[-1], dtype=self.rewards.dtype)
        return (self.rewards * gamma**t).sum(-1)


def reward_to_go(rewards: Tensor, gamma: float) -> Tensor:
    """``G_t = sum_{t' >= t} gamma^(t' - t) r_t'`` along the last dimension."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


def leave_one_out_advantages(rewards: Tensor, gamma: float) -> Tensor:
    """``A_kt = G_kt - mean_{j != k} G_jt`` over the episode dimension (``-2``); with one
    episode the baseline is 0."""
    g = reward_to_go(rewards, gamma)
    k = g.shape[-2]
    if k == 1:
        return g
    others = (g.sum(-2, keepdim=True) - g) / (k - 1)
    return g - others


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
    """

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
    ) -> None:
        super().__init__()
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
        self._pool: list[MetaEnv] = []

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

    def surrogate(self, params: Params, episodes: Episodes) -> Tensor:
        """Per-task ``(1/K) sum_k sum_t gamma^t log pi(a_kt | s_kt) A_kt``, ``[B]``: its
        gradient is the policy-gradient estimate ``g``."""
        advantages = leave_one_out_advantages(episodes.rewards, self.gamma)
        t = torch.arange(advantages.shape[-1], dtype=advantages.dtype)
        weights = (advantages * self.gamma**t).detach()
        return (self.log_probs(params, episodes) * weights).sum(-1).mean(-1)

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
            self.surrogate(params, episodes).sum(),
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
        """``-`` the surrogate of the module docstring, averaged over ``tasks``; with
        ``count_inner``, the average of every batch's term weighted by its episodes."""
        b = len(tasks)
        params = self.batched(self.params(), b)
        inner_log_prob = torch.zeros(b)
        terms: list[tuple[float, Tensor, Tensor, Tensor]] = []  # weight, S, R, score prefix
        first_returns = None
        for s in range(self.inner_steps):
            episodes = self.rollout(params, tasks, self.inner_episodes, seed + 7919 * s)
            returns = episodes.discounted_returns(self.gamma).mean(-1)
            if first_returns is None:
                first_returns = returns.mean()
            if self.count_inner:
                terms.append(
                    (self.inner_episodes, self.surrogate(params, episodes), returns, inner_log_prob)
                )
            if self.sampling_term:
                inner_log_prob = inner_log_prob + self.log_probs(params, episodes).sum((1, 2))
            params = self.inner_update(params, episodes, create_graph=not self.first_order)
        outer = self.rollout(params, tasks, self.outer_episodes, seed + 7919 * self.inner_steps)
        returns = outer.discounted_returns(self.gamma).mean(-1)  # R_out per task
        terms.append((self.outer_episodes, self.surrogate(params, outer), returns, inner_log_prob))
        total_weight = sum(t[0] for t in terms)
        objective = torch.zeros(b)
        for weight, surrogate, r, prefix in terms:
            if self.sampling_term:
                baseline = (r.sum() - r) / (b - 1) if b > 1 else torch.zeros_like(r)
                box = torch.exp(prefix - prefix.detach())
                surrogate = surrogate + (box - 1) * (r - baseline).detach()
            objective = objective + weight / total_weight * surrogate
        loss = -objective.mean()
        metrics = {
            "loss": float(loss.detach()),
            "return_before": float(first_returns),
            "return_after": float(returns.mean()),
        }
        return loss, metrics

    def extra_repr(self) -> str:
        return (
            f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"inner_episodes={self.inner_episodes}, outer_episodes={self.outer_episodes}, "
            f"first_order={self.first_order}, sampling_term={self.sampling_term}"
        )


__all__ = ["MAMLRL", "Episodes", "leave_one_out_advantages", "reward_to_go"]
