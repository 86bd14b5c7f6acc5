"""RL²: a recurrent policy that learns to explore (Duan et al. 2016; Wang et al. 2016).

A *trial* is ``episodes_per_trial`` episodes of one task.  A GRU policy reads, at every
step, the observation with the previous action, reward and episode-end flag,

    u_t = [o_t, onehot(a_{t-1}), r_{t-1}, d_{t-1}],   h_t = GRU(u_t, h_{t-1}),
    pi(a_t | h_t) = softmax(W_pi h_t)  (or N(W_pi h_t, diag(exp(2 log_std))) for boxes),
    V(h_t) = w_v . h_t,

and keeps ``h`` across the episodes of the trial (it is reset only when a new task
starts), so whatever it learns about the task in one episode it can use in the next: the
"fast" learning happens in the hidden state, and the weights are trained "slowly" across
tasks to maximise the trial's total reward.

Training is advantage actor-critic with generalised advantage estimation (Schulman et
al. 2016) over whole trials,

    delta_t = r_t + gamma V(h_{t+1}) - V(h_t),    A_t = sum_l (gamma lambda)^l delta_{t+l},
    loss = -mean_t[log pi(a_t | h_t) A_t / std(A)] + c_v mean_t[(V(h_t) - (A_t + V(h_t)))^2]
           - c_H mean_t[H(pi(. | h_t))],

with ``V`` and ``A`` treated as constants where they are targets, ``V = 0`` after the
trial's last step.  ``meta_loss(tasks)`` plays one trial per task (sampling actions) and
returns this loss, so one optimiser step on it is one A2C update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

from metaloop.tasks.envs import EnvError, MetaEnv, check_observation, check_transition, env_pool
from metaloop.validate import is_int


@dataclass
class Trial:
    """One trial per task: ``rewards [B, T]``, ``log_probs``, ``values``, ``entropies``
    ``[B, T]`` (tensors, differentiable when collected with grad), and per-step ``infos``."""

    rewards: Tensor
    log_probs: Tensor
    values: Tensor
    entropies: Tensor
    regrets: Tensor | None = None

    @property
    def total_reward(self) -> Tensor:
        return self.rewards.sum(1)


def gae(rewards: Tensor, values: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantages ``A_t = sum_l (gamma lam)^l delta_{t+l}`` for ``[B, T]``
    rewards and values, with ``V = 0`` after the last step."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages


class RL2(nn.Module):
    """RL² over a meta-environment (see the module docstring).

    Args:
        env: the meta-environment (its task is set per trial on private copies).
        hidden: GRU state size.
        episodes_per_trial: episodes of one task the hidden state is kept across.
        gamma, gae_lambda: discount and GAE's lambda.
        value_coef, entropy_coef: weights of the value and entropy terms.
        reward_scale: rewards are multiplied by this in the policy's input.
    """

    learns_in_context = True  # adapts in its hidden state: evaluated by playing trials

    def __init__(
        self,
        env: MetaEnv,
        hidden: int = 64,
        episodes_per_trial: int = 1,
        gamma: float = 0.99,
        gae_lambda: float = 0.3,
        value_coef: float = 0.5,
        entropy_coef: float = 0.01,
        reward_scale: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("hidden", hidden), ("episodes_per_trial", episodes_per_trial)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (0 <= gamma <= 1 and 0 <= gae_lambda <= 1):
            raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {gamma}, {gae_lambda}")
        self.env = env
        self.obs_dim = int(np.prod(env.observation_space.shape))
        space = env.action_space
        if isinstance(space, spaces.Discrete):
            self.discrete, self.action_dim = True, int(space.n)
        elif isinstance(space, spaces.Box) and len(space.shape) == 1:
            self.discrete, self.action_dim = False, int(space.shape[0])
            self.log_std = nn.Parameter(torch.zeros(self.action_dim))
        else:
            raise EnvError(f"RL² needs a Discrete or 1-D Box action space, got {space}")
        self.hidden = hidden
        self.episodes_per_trial = episodes_per_trial
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.value_coef, self.entropy_coef, self.reward_scale = (
            value_coef,
            entropy_coef,
            reward_scale,
        )
        self.cell = nn.GRUCell(self.obs_dim + self.action_dim + 2, hidden)
        self.policy_head = nn.Linear(hidden, self.action_dim)
        self.value_head = nn.Linear(hidden, 1)
        self._pool: list[MetaEnv] = []

    def set_env(self, env: MetaEnv) -> None:
        """Act in ``env`` from now on (a longer horizon, say); drops the cached copies."""
        self.env, self._pool = env, []

    def distribution(self, h: Tensor):
        out = self.policy_head(h)
        if self.discrete:
            return Categorical(logits=out)
        return Normal(out, self.log_std.exp().expand_as(out))

    def _encode_action(self, action: Tensor) -> Tensor:
        if self.discrete:
            return torch.nn.functional.one_hot(action, self.action_dim).to(
                torch.get_default_dtype()
            )
        return action

    def rollout(self, tasks: Sequence[dict], seed: int = 0, greedy: bool = False) -> Trial:
        """One trial per task; env ``i``'s episodes are seeded ``seed + i`` (episode ``e``:
        ``seed + i + 100003 e``), actions sampled from the policy (``greedy``: its mode)."""
        if len(tasks) == 0:
            raise EnvError("rollout needs at least one task")
        envs = env_pool(self.env, len(tasks), self._pool)
        b = len(tasks)
        obs = []
        for i, (env, task) in enumerate(zip(envs, tasks)):
            env.set_task(task)
            obs.append(check_observation(env, env.reset(seed=seed + i)[0]))
        dt = self.value_head.weight.dtype
        h = torch.zeros(b, self.hidden, dtype=dt)
        prev_action = torch.zeros(b, self.action_dim, dtype=dt)
        prev_reward = torch.zeros(b, 1, dtype=dt)
        done = torch.zeros(b, 1, dtype=dt)
        columns: dict[str, list[Tensor]] = {k: [] for k in ("r", "lp", "v", "ent", "regret")}
        for episode in range(self.episodes_per_trial):
            if episode > 0:
                obs = [
                    check_observation(env, env.reset(seed=seed + i + 100003 * episode)[0])
                    for i, env in enumerate(envs)
                ]
            for _ in range(self.env.horizon):
                o = torch.as_tensor(np.stack(obs), dtype=dt).reshape(b, -1)
                u = torch.cat([o, prev_action, prev_reward * self.reward_scale, done], -1)
                h = self.cell(u, h)
                dist = self.distribution(h)
                if greedy:
                    action = dist.probs.argmax(-1) if self.discrete else dist.mean
                else:
                    action = dist.sample()
                columns["lp"].append(dist.log_prob(action).reshape(b, -1).sum(-1))
                columns["ent"].append(dist.entropy().reshape(b, -1).sum(-1))
                columns["v"].append(self.value_head(h).squeeze(-1))
                a = action.detach()
                rewards, regrets, ends = [], [], []
                for i, env in enumerate(envs):
                    act = int(a[i]) if self.discrete else a[i].numpy()
                    o_i, r, term, trunc, info = check_transition(env, env.step(act))
                    obs[i] = o_i
                    rewards.append(r)
                    regrets.append(info.get("regret", float("nan")))
                    ends.append(float(term or trunc))
                columns["r"].append(torch.tensor(rewards, dtype=dt))
                columns["regret"].append(torch.tensor(regrets, dtype=dt))
                prev_action = self._encode_action(a).to(dt)
                prev_reward = columns["r"][-1].unsqueeze(-1)
                done = torch.tensor(ends, dtype=dt).unsqueeze(-1)
        stack = {k: torch.stack(v, 1) for k, v in columns.items()}
        return Trial(stack["r"], stack["lp"], stack["v"], stack["ent"], stack["regret"])

    def meta_loss(self, tasks: Sequence[dict], seed: int = 0) -> tuple[Tensor, dict[str, float]]:
        """The A2C loss of one sampled trial per task (see the module docstring)."""
        return self.a2c_loss(self.rollout(tasks, seed=seed))

    def a2c_loss(self, trial: Trial) -> tuple[Tensor, dict[str, float]]:
        """The loss of the module docstring on a collected ``trial``."""
        values = trial.values.detach()
        advantages = gae(trial.rewards, values, self.gamma, self.gae_lambda)
        returns = advantages + values
        normalised = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(trial.log_probs * normalised).mean()
        value_loss = (trial.values - returns).pow(2).mean()
        entropy = trial.entropies.mean()
        loss = policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy
        metrics = {
            "loss": float(loss.detach()),
            "return": float(trial.total_reward.mean()),
            "entropy": float(entropy.detach()),
            "value_loss": float(value_loss.detach()),
        }
        return loss, metrics

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden}, episodes_per_trial={self.episodes_per_trial}, "
            f"gamma={self.gamma}, gae_lambda={self.gae_lambda}"
        )


__all__ = ["RL2", "Trial", "gae"]
