"""Heavy tails of per-episode losses: the divergent episodes a mean hides.

A gradient-based learner adapted with more inner steps than it was meta-trained for can
oscillate and blow up on a few tasks (the step size ``alpha`` times the curvature of the
support loss exceeds 2, see ``metaloop.diagnostics.sharpness``).  Such episodes dominate a
mean over 600 episodes and its confidence interval (``2.586 +- 4.4`` says nothing), while
the median barely moves.  This module states, per step count, what happened to the tail.

An episode is *divergent* after ``t`` inner steps when its query loss ``L_t`` is not finite
or exceeds ``factor`` times its query loss before adaptation ``L_0``:

    divergent_t  <=>  not isfinite(L_t)  or  L_t > factor * L_0,   factor = 10 by default.

Adaptation that makes an episode ten times worse than not adapting at all is not noise.
Without ``L_0`` (a learner that takes no steps) only non-finite episodes count.

All functions here are pure: tensors of per-episode losses in, numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metaloop.validate import is_number

#: default multiple of the pre-adaptation query loss above which an episode is divergent
DIVERGENCE_FACTOR = 10.0


def check_divergence_factor(factor: float) -> float:
    """``factor`` as a float; a clear error unless it is a finite number >= 1."""
    if not is_number(factor):
        raise ValueError(f"divergence_factor must be a number >= 1, got {factor!r}")
    if not (math.isfinite(factor) and factor >= 1):
        raise ValueError(f"divergence_factor must be a finite number >= 1, got {factor!r}")
    return float(factor)


def divergent_episodes(
    loss: Tensor, initial_loss: Tensor | None = None, factor: float = DIVERGENCE_FACTOR
) -> Tensor:
    """Boolean mask ``not isfinite(L_t) or L_t > factor * L_0`` over episodes.

    ``loss`` holds ``L_t`` per episode, ``initial_loss`` the same episodes' ``L_0`` (query
    loss before adaptation); ``None`` counts only non-finite episodes.
    """
    factor = check_divergence_factor(factor)
    loss = loss.detach().flatten()
    mask = ~torch.isfinite(loss)
    if initial_loss is not None:
        initial_loss = initial_loss.detach().flatten()
        if initial_loss.shape != loss.shape:
            raise ValueError(
                f"initial_loss has {initial_loss.numel()} episodes but loss has {loss.numel()}"
            )
        mask = mask | (loss > factor * initial_loss.to(loss.dtype))
    return mask


@dataclass(frozen=True)
class TailSummary:
    """Per-episode losses at one step count, with their tail.

    ``mean`` and ``ci95`` are over all episodes (``nan`` or ``inf`` when any is not finite),
    ``median`` counts a NaN episode as the worst one; ``divergent`` is the number of divergent
    episodes (``nonfinite`` of them not finite) under ``divergent_episodes`` with ``factor``
    (``factor`` is ``None`` when no pre-adaptation loss was available: non-finite only);
    ``divergent_share`` is the fraction of the summed loss the divergent episodes carry
    (``nan`` when the sum is not finite, 0 with none).
    """

    mean: float
    ci95: float
    median: float
    episodes: int
    divergent: int
    nonfinite: int
    factor: float | None
    divergent_share: float

    def describe(self) -> str:
        """``"3 divergent (97% of the summed loss)"``, ``"0 divergent"``, ..."""
        if self.divergent == 0:
            return "0 divergent"
        if self.nonfinite == self.divergent:
            return f"{self.divergent} divergent (non-finite)"
        extra = f", {self.nonfinite} non-finite" if self.nonfinite else ""
        share = (
            f"{100 * self.divergent_share:.0f}% of the summed loss"
            if math.isfinite(self.divergent_share)
            else "the sum is not finite"
        )
        return f"{self.divergent} divergent ({share}{extra})"


def tail_summary(
    loss: Tensor, initial_loss: Tensor | None = None, factor: float = DIVERGENCE_FACTOR
) -> TailSummary:
    """Mean, 95% CI ``1.96 * std / sqrt(n)``, median and divergent episodes of ``loss``."""
    v = loss.detach().double().flatten()
    n = v.numel()
    if n == 0:
        raise ValueError("cannot summarise zero episodes")
    mask = divergent_episodes(v, initial_loss, factor)
    finite = torch.isfinite(v)
    std = float(v.std(unbiased=True)) if n > 1 else 0.0
    worst_first = torch.where(torch.isnan(v), torch.full_like(v, math.inf), v)
    total = float(v.sum())
    if not math.isfinite(total):
        share = math.nan
    elif mask.any():
        share = float(v[mask].sum()) / total if total > 0 else math.nan
    else:
        share = 0.0
    return TailSummary(
        mean=float(v.mean()),
        ci95=1.96 * std / math.sqrt(n),
        median=float(worst_first.median()),
        episodes=n,
        divergent=int(mask.sum()),
        nonfinite=int((~finite).sum()),
        factor=None if initial_loss is None else float(factor),
        divergent_share=share,
    )
