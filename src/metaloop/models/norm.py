"""Normalization policies for convolutional backbones, chosen by name.

``make_norm(policy, channels)`` returns the layer for a ``[N, C, H, W]`` activation.  In a
meta-learning model ``N`` is the images of *one task's* support (or query) set, so the
choice decides what statistics a task sees:

================  =========================================================  ==========
policy            statistics                                                  ``vmap``
================  =========================================================  ==========
``batch_episode`` batch norm over the current batch, always (no running       yes
                  stats, ``track_running_stats=False``); at test time the
                  query set is normalised with its own statistics
                  (*transductive*).  The MAML convention.
``batch_running`` batch norm with global running statistics, updated in      no (train)
                  place during training and used in ``eval()`` mode.
``batch_per_step`` ``batch_episode`` statistics with a separate affine          yes
                  (weight, bias) per inner-loop step (MAML++ "BNWB"); the
                  step is chosen with ``set_norm_step(model, k)``, which
                  the gradient-based learners call for you.
``layer``         per image over (C, H, W); ``GroupNorm(1, C)``.              yes
``instance``      per image and channel over (H, W); ``GroupNorm(C, C)``.     yes
``group``         per image over groups of channels; ``GroupNorm(g, C)``.     yes
``none``          identity.                                                   yes
================  =========================================================  ==========

Bias-variance trade-off.  Statistics from the task batch adapt to each task (low bias:
a task with thicker strokes is normalised by its own scale) but are noisy when the batch
is small (5-way 1-shot: five images; high variance), and they make a query prediction
depend on the other query images (transductive: results then depend on the query set
size and class balance, which is why papers should say which they use).  Global running
statistics are stable (low variance) but average over all tasks and lag behind the
changing weights during meta-training (biased for any given task, and after inner-loop
updates).  Per-image normalisations (layer, instance, group) use neither: no
transduction, no train/test discrepancy, no batch-size dependence, at the cost of
removing per-image contrast/scale information (instance norm the most).

``vmap``.  The engine maps a per-task function over the tasks of a batch with
``torch.func.vmap``.  Policies without in-place buffer updates vectorize.
``batch_running`` in training mode updates ``running_mean``/``running_var`` in place,
which ``vmap`` forbids (one buffer, many tasks); the engine then falls back to a loop
over tasks (``vectorize="auto"``).  In ``eval()`` mode it only reads the buffers and
vectorizes.  ``batch_per_step`` reads its step from a Python attribute, so the step is the
same for every task of a mapped call; setting it inside the per-task function, right before
each forward, is fine (under ``vmap`` that Python code runs once per call, in step order).
``GradientMetaLearner`` (``metaloop.algorithms``) does exactly that in all its paths; the
engine (``metaloop.functional``) knows nothing about it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_POLICIES = (
    "batch_episode",
    "batch_running",
    "batch_per_step",
    "layer",
    "instance",
    "group",
    "none",
)
#: policies that run under ``torch.func.vmap`` in training mode
VMAP_POLICIES = frozenset(NORM_POLICIES) - {"batch_running"}


class PerStepBatchNorm2d(nn.Module):
    """Batch norm with per-episode statistics and one affine transform per inner step.

    MAML++ (Antoniou et al. 2019, "BNWB") learns a separate batch-norm weight and bias for
    every inner-loop step.  ``weight`` and ``bias`` have shape ``[steps, C]``; the row used
    is ``self.step`` (set with ``set_norm_step``; clamped to ``steps - 1``, so evaluating
    with more steps than trained reuses the last row).  ``GradientMetaLearner`` selects row
    ``k`` for the support forward of inner step ``k`` and row ``K`` for the query forward
    after ``K`` steps, so ``steps = K + 1`` rows cover meta-training; outside a learner the
    attribute keeps whatever row was selected last.  Statistics are those of the
    current batch, as in MAML++'s reference code, which normalises with batch statistics
    at every step; per-step *running* statistics ("BNRS") are not implemented.
    """

    def __init__(self, channels: int, steps: int, eps: float = 1e-5) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"batch_per_step needs steps >= 1 (inner steps + 1), got {steps}")
        self.channels, self.steps, self.eps = channels, steps, eps
        self.weight = nn.Parameter(torch.ones(steps, channels))
        self.bias = nn.Parameter(torch.zeros(steps, channels))
        self.step = 0

    def forward(self, x: Tensor) -> Tensor:
        k = min(max(int(self.step), 0), self.steps - 1)
        return F.batch_norm(x, None, None, self.weight[k], self.bias[k], True, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, steps={self.steps}, eps={self.eps}"


class LayerNorm(nn.Module):
    """Layer norm over the last dimension, written out with elementary ops,

        y = (h - mean(h)) / sqrt(var(h) + eps) * weight + bias,

    ``mean`` and the biased ``var`` over the last dimension.  The same forward as
    ``nn.LayerNorm(dim)``, but ``nn.LayerNorm``'s fused ``layer_norm`` kernel gives a wrong
    second-order meta-gradient under ``torch.func.vmap`` (PyTorch 2.13: the double backward
    through a vmapped inner gradient is about 1% off the loop and finite differences when
    the affine weight is adapted; see "Known numerical issues" in docs/performance.md).
    Elementary ops have exact batching rules, so this layer is correct on both paths.
    Every metaloop model with a layer norm uses this one; the engine rematerializes
    second-order vmap steps for a user model that holds an ``nn.LayerNorm``
    (``functional.speed.vmap_layer_norm_hazard``).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, h: Tensor) -> Tensor:
        centered = h - h.mean(-1, keepdim=True)
        var = (centered * centered).mean(-1, keepdim=True)
        return centered * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def set_norm_step(module: nn.Module, step: int) -> None:
    """Select inner-step ``step`` in every ``PerStepBatchNorm2d`` of ``module``.

    The inner loop must call this before the forward pass of step ``k`` (``k = 0`` for the
    first support pass, ``k = K`` for the query pass after ``K`` steps).
    ``GradientMetaLearner`` does so automatically when its model holds such a layer.
    """
    for m in module.modules():
        if isinstance(m, PerStepBatchNorm2d):
            m.step = int(step)


def make_norm(
    policy: str,
    channels: int,
    *,
    groups: int = 8,
    steps: int = 6,
    momentum: float = 0.1,
    eps: float = 1e-5,
    affine: bool = True,
) -> nn.Module:
    """The normalization layer of ``policy`` for ``channels`` feature maps.

    ``groups``: channel groups of ``"group"`` (must divide ``channels``); ``steps``: affine
    rows of ``"batch_per_step"`` (inner steps + 1); ``momentum``: running-statistics
    momentum of ``"batch_running"``.  ``affine=False`` drops the learned scale and shift
    (not for ``batch_per_step``, whose point they are).
    """
    if policy == "batch_episode":
        return nn.BatchNorm2d(channels, eps=eps, affine=affine, track_running_stats=False)
    if policy == "batch_running":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum, affine=affine)
    if policy == "batch_per_step":
        return PerStepBatchNorm2d(channels, steps, eps)
    if policy == "layer":
        return nn.GroupNorm(1, channels, eps=eps, affine=affine)
    if policy == "instance":
        return nn.GroupNorm(channels, channels, eps=eps, affine=affine)
    if policy == "group":
        if groups < 1 or channels % groups:
            divisors = [g for g in range(1, channels + 1) if channels % g == 0]
            raise ValueError(
                f"group norm needs groups dividing channels: got groups={groups} for {channels} "
                f"channels; choose one of {divisors}"
            )
        return nn.GroupNorm(groups, channels, eps=eps, affine=affine)
    if policy == "none":
        return nn.Identity()
    raise ValueError(
        f"unknown normalization policy {policy!r}; choose one of {', '.join(NORM_POLICIES)}"
    )
