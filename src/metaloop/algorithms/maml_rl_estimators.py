"""The estimators of MAML-RL (``metaloop.algorithms.maml_rl``): the advantages of the inner
step on sampled ``Episodes`` (``reward_to_go``, the leave-one-out and the linear feature
baselines) and the derivation of the meta-gradient estimator that ``MAMLRL.meta_loss`` builds.

For a task, ``K`` episodes ``b`` are sampled with the policy ``pi_theta`` and the inner
step is a policy-gradient step on them,

    g(theta; b) = (1/K) sum_k sum_t gamma^t grad log pi_theta(a_kt | s_kt) A_kt,
    theta' = theta + alpha g(theta; b),

with ``A_kt = G_kt - baseline_kt``: the discounted reward-to-go minus a baseline fitted on
the *other* ``K - 1`` episodes of the task (leave-one-out, so ``g`` stays an unbiased
policy gradient), either

* ``baseline="leave_one_out"``: the mean reward-to-go at step ``t`` of the other episodes, or
* ``baseline="linear"``: the linear feature baseline of Duan et al. (2016, *Benchmarking
  deep RL for continuous control*) that MAML's RL experiments use, ``b(s, t) = w . phi(s,
  t)`` with ``phi = [s, s^2, t/100, (t/100)^2, (t/100)^3, 1]``, ``w`` fitted by ridge
  regression (``(X^T X + reg I) w = X^T G``) to the reward-to-go of the other episodes.

For the inner step only, ``normalize_advantages`` standardises the ``A_kt`` of each task
(mean 0, std 1 over its episodes and steps) and ``time_average`` divides the surrogate by
the horizon ``T`` (a mean over episodes *and* time steps, as rllab's and MAML's vanilla
policy gradient do), so that ``alpha`` has the same meaning whatever the reward scale and
horizon (MAML's navigation uses ``alpha = 0.1`` on this scale).

Why these keep the meta-gradient exact: the baseline's weights, the advantages and their
mean and std are functions of the sampled episodes ``b`` alone (returns and observations),
never of ``theta`` given ``b``, so ``g(theta; b) = grad_theta sum log pi_theta(a|s) c(b)``
with coefficients ``c(b)`` held fixed, a deterministic differentiable function of ``theta``
for each ``b``.  The meta-objective below is defined *with that update rule*, and both
parts of its gradient (the score of ``b`` and the derivative through ``theta'``) are
unchanged.  What standardisation changes is only ``g`` itself: it is then a rescaled and
recentred policy gradient (centring with the sample mean of ``A`` makes ``g`` a biased
estimate of ``grad J`` by ``O(1/(K T))``), which is the step MAML takes; the meta-gradient of
``E_b[J(theta + alpha g)]`` stays unbiased.  The *outer* estimates of ``grad J(theta')``
never standardise (leave-one-out baseline only, sum over time), because their unbiasedness is
what the meta-gradient's unbiasedness rests on.  The meta-objective is the expected return after
adaptation, averaged over the inner samples as well (every pull of the inner episodes is
drawn from ``pi_theta``):

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
in the batch (``score_baseline="batch"``: a baseline independent of this task's samples),
and ``box(x) = exp(x - stopgrad(x))`` (value 1, gradient ``grad x``).

``score_baseline="pre_update"`` uses the task's own return before adaptation instead, ``c =
R_0``, the mean discounted return of the first inner batch ``b_0``: task difficulty (a far
goal, a bad arm set) moves ``R_out`` and ``R_0`` together, so ``R_out - R_0`` (the gain
from adapting) has far less variance than ``R_out - c``.  ``R_0`` depends on ``b_0``, so it
biases the score term by exactly ``E[grad log p_theta(b) R_0] = grad J(theta)`` (the scores
of later batches have mean 0 given the earlier ones, and ``R_0`` is fixed by then); the
surrogate adds that back with the unbiased estimate ``S_0(theta)`` (the leave-one-out
policy-gradient surrogate on ``b_0``),

    L = -( S_out(theta') + S_0(theta) + (box(sum log pi_theta(b)) - 1) stopgrad(R_out - R_0) ),

whose gradient is again an unbiased estimate of ``-grad F``.  Both gradients are tested
against the closed form on a two-armed one-step bandit.
``sampling_term=False`` drops the score term (the original implementation's estimate,
biased; also tested); ``first_order=True`` also drops ``d g / d theta``.  With several
inner steps, each samples fresh episodes with the current parameters and the box covers
all inner samples.

``low_variance_curvature=True`` (with ``sampling_term=False``) is ProMP's low-variance
curvature (LVC) estimator (Rothfuss et al. 2019, *ProMP: Proximal Meta-Policy Search*): the
inner surrogate weights the likelihood *ratio* instead of the log-likelihood,

    S_LVC(theta; b) = sum_kt c_kt pi_theta(a_kt | s_kt) / stopgrad(pi_theta(a_kt | s_kt)),

whose value at ``theta`` is ``sum c`` and whose gradient is ``g(theta; b)`` exactly (the
ratio's gradient is ``grad log pi``: the inner step, the adapted parameters and everything
evaluated are unchanged), but whose Hessian is ``sum_kt c_kt (grad^2 log pi_kt + grad log
pi_kt grad log pi_kt^T)``: the ``d g / d theta`` of the plain surrogate plus the outer
products of each sample's score with itself.  No score term is added, so the meta-gradient is

    grad F_LVC = E_b[ (I + alpha sum_kt c_kt (grad^2 log pi_kt + grad log pi_kt grad log
                 pi_kt^T))^T grad J(theta') ].

Its bias, exactly: ``grad F_LVC - grad F = E_b[ alpha sum_kt c_kt grad log pi_kt (grad log
pi_kt^T grad J(theta')) - grad log p_theta(b) J(theta') ]``, i.e. the score term ``E_b[grad
log p_theta(b) (J(theta') - J(theta))]`` is replaced by the diagonal part of its first-order
Taylor expansion (``J(theta') - J(theta) ~ alpha g^T grad J``).  Two things are left out:
the cross products ``grad log pi_kt grad log pi_k't'^T c_k't'`` of *different* samples
(``(k, t) != (k', t')``: earlier actions of the same episode, and other episodes through
the leave-one-out baseline and standardisation), an ``O(alpha)`` bias, and the remainder of
the expansion, ``O(alpha^2)``.  With one sample per inner step (one episode of one step:
the two-armed bandit of the tests) there are no cross products and the bias is
``O(alpha^2)``, against ``O(alpha)`` for ``sampling_term=False`` (which drops the whole score
term).  Its variance is that of the plain second-order estimate plus the ``alpha c grad
log pi grad log pi^T`` terms, each scaled by its own ``c_kt``, instead of one score summed
over all ``K T`` inner actions multiplying a whole return (the DiCE term).  With
``count_inner``, the inner batches' terms are plain surrogates chained through the LVC
steps (no score prefixes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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


BASELINES = ("leave_one_out", "linear")
SCORE_BASELINES = ("batch", "pre_update")


def linear_feature_baseline(
    obs: Tensor, returns: Tensor, reg: float = 1e-5, time_scale: float = 100.0
) -> Tensor:
    """Leave-one-out linear feature baseline, ``[B, K, T]``, for observations ``[B, K, T, d]``
    and reward-to-go ``returns [B, K, T]``: episode ``k``'s baseline is ``phi . w_k`` with
    ``phi(s, t) = [s, s^2, u, u^2, u^3, 1]``, ``u = t / time_scale``, and ``w_k`` solving
    ``(sum_{j != k} X_j^T X_j + reg I) w_k = sum_{j != k} X_j^T G_j`` (ridge regression on the
    other episodes of the task; with one episode the baseline is 0).  Fitted in float64,
    detached (a function of the samples only)."""
    obs, returns = obs.detach().double(), returns.detach().double()
    b, k, t = returns.shape
    u = (torch.arange(t, dtype=torch.float64) / time_scale).view(1, 1, t, 1).expand(b, k, t, 1)
    flat = obs.reshape(b, k, t, -1)
    features = torch.cat([flat, flat**2, u, u**2, u**3, torch.ones_like(u)], -1)
    gram = features.transpose(-1, -2) @ features  # [B, K, F, F]
    target = (features.transpose(-1, -2) @ returns.unsqueeze(-1)).squeeze(-1)  # [B, K, F]
    eye = reg * torch.eye(features.shape[-1], dtype=torch.float64)
    weights = torch.linalg.solve(
        gram.sum(1, keepdim=True) - gram + eye, target.sum(1, keepdim=True) - target
    )
    return (features @ weights.unsqueeze(-1)).squeeze(-1).to(torch.get_default_dtype())


def leave_one_out_advantages(rewards: Tensor, gamma: float) -> Tensor:
    """``A_kt = G_kt - mean_{j != k} G_jt`` over the episode dimension (``-2``); with one
    episode the baseline is 0."""
    g = reward_to_go(rewards, gamma)
    k = g.shape[-2]
    if k == 1:
        return g
    others = (g.sum(-2, keepdim=True) - g) / (k - 1)
    return g - others


__all__ = [
    "BASELINES",
    "SCORE_BASELINES",
    "Episodes",
    "leave_one_out_advantages",
    "linear_feature_baseline",
    "reward_to_go",
]
