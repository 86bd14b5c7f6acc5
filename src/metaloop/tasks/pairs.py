"""Pairs and triplets drawn from classification episodes (``TaskBatch``).

Verification-style learners (Siamese networks) train on pairs ``(x_i, x_j, same)`` or
triplets ``(anchor, positive, negative)`` rather than on query classification.  Here they
are formed *within* each task of an episode batch, from the pooled support and query
examples (``episode_examples``), so any episode sampler doubles as a pair sampler and
classes never mix across tasks.

Two styles:

* dense masks over all examples of a task (``pair_masks``, ``triplet_mask``), for losses
  that use every pair or mine the hardest ones from one embedding pass;
* random index samplers (``sample_pair_indices``, ``sample_triplet_indices``) and their
  gathering forms (``sample_pairs``, ``sample_triplets``), seeded by a
  ``torch.Generator``.  Sampling is uniform over anchors that have a partner, then uniform
  over valid partners, with replacement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metaloop.tasks.base import TaskBatch, TaskError
from metaloop.validate import is_int


def episode_examples(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Support and query pooled per task: ``x [T, S+Q, ...]``, ``y [T, S+Q]``."""
    x = torch.cat([batch.support_x, batch.query_x], dim=1)
    y = torch.cat([batch.support_y, batch.query_y], dim=1)
    return x, y


def pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean ``same [T, N, N]`` (same class, ``i != j``) and ``different [T, N, N]``."""
    if labels.dim() != 2:
        raise TaskError(f"labels must have shape [tasks, examples], got {tuple(labels.shape)}")
    equal = labels.unsqueeze(2) == labels.unsqueeze(1)
    eye = torch.eye(labels.shape[1], dtype=torch.bool, device=labels.device)
    return equal & ~eye, ~equal


def triplet_mask(labels: Tensor) -> Tensor:
    """Boolean ``valid [T, N, N, N]``: ``valid[t, a, p, n]`` iff ``a != p``,
    ``y_a = y_p`` and ``y_n != y_a``."""
    same, different = pair_masks(labels)
    return same.unsqueeze(3) & different.unsqueeze(2)


def _uniform_choice(valid: Tensor, generator: torch.Generator | None) -> Tensor:
    """Index of a uniformly random ``True`` entry along the last dim (rows must have one)."""
    noise = torch.rand(valid.shape, generator=generator, device=valid.device)
    return noise.masked_fill(~valid, -1.0).argmax(-1)


def _check_count(name: str, count: int) -> None:
    if not is_int(count) or count < 1:
        raise TaskError(f"{name} must be a positive integer, got {count!r}")


def sample_pair_indices(
    labels: Tensor,
    pairs_per_task: int,
    generator: torch.Generator | None = None,
    positive_fraction: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random pairs ``(i, j, same)``, each ``[T, P]``: the first ``round(P *
    positive_fraction)`` are same-class pairs, the rest different-class pairs.

    Raises ``TaskError`` when a task has no same-class pair (every class seen once) or no
    different-class pair (one class) but such pairs are requested.
    """
    _check_count("pairs_per_task", pairs_per_task)
    if not 0.0 <= positive_fraction <= 1.0:
        raise TaskError(f"positive_fraction must lie in [0, 1], got {positive_fraction}")
    same, different = pair_masks(labels)
    t = labels.shape[0]
    n_pos = round(pairs_per_task * positive_fraction)
    counts = (n_pos, pairs_per_task - n_pos)
    firsts, seconds = [], []
    for mask, count, kind in (
        (same, counts[0], "same-class"),
        (different, counts[1], "different-class"),
    ):
        if count == 0:
            continue
        has = mask.any(-1)  # [T, N]: example has a partner of this kind
        if not bool(has.any(-1).all()):
            task = int((~has.any(-1)).nonzero()[0])
            raise TaskError(f"task {task} has no {kind} pair to sample")
        first = _uniform_choice(has.unsqueeze(1).expand(t, count, -1), generator)  # [T, P]
        rows = torch.gather(mask, 1, first.unsqueeze(-1).expand(-1, -1, mask.shape[2]))
        firsts.append(first)
        seconds.append(_uniform_choice(rows, generator))
    i, j = torch.cat(firsts, 1), torch.cat(seconds, 1)
    same_flag = torch.cat(
        [
            torch.ones(t, counts[0], dtype=torch.bool, device=labels.device),
            torch.zeros(t, counts[1], dtype=torch.bool, device=labels.device),
        ],
        1,
    )
    return i, j, same_flag


def sample_triplet_indices(
    labels: Tensor, triplets_per_task: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Random triplets ``(a, p, n)``, each ``[T, P]``: anchor uniform over examples that
    have a same-class partner, positive uniform over those partners, negative uniform over
    examples of other classes."""
    _check_count("triplets_per_task", triplets_per_task)
    same, different = pair_masks(labels)
    t, n = labels.shape
    has = same.any(-1) & different.any(-1)
    if not bool(has.any(-1).all()):
        task = int((~has.any(-1)).nonzero()[0])
        raise TaskError(
            f"task {task} has no valid triplet: it needs a class with two examples and a "
            "second class"
        )
    anchor = _uniform_choice(has.unsqueeze(1).expand(t, triplets_per_task, n), generator)
    index = anchor.unsqueeze(-1).expand(-1, -1, n)
    positive = _uniform_choice(torch.gather(same, 1, index), generator)
    negative = _uniform_choice(torch.gather(different, 1, index), generator)
    return anchor, positive, negative


def gather_examples(x: Tensor, index: Tensor) -> Tensor:
    """``x [T, N, *F]`` at ``index [T, P]`` -> ``[T, P, *F]``."""
    flat = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, flat)


@dataclass(frozen=True)
class PairBatch:
    """``x1, x2 [T, P, *F]`` and ``same [T, P]`` (True for same-class pairs)."""

    x1: Tensor
    x2: Tensor
    same: Tensor


@dataclass(frozen=True)
class TripletBatch:
    """``anchor, positive, negative [T, P, *F]``."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor


def sample_pairs(
    batch: TaskBatch,
    pairs_per_task: int,
    generator: torch.Generator | None = None,
    positive_fraction: float = 0.5,
) -> PairBatch:
    """Random same/different-class pairs of inputs from each task's support and query."""
    x, y = episode_examples(batch)
    i, j, same = sample_pair_indices(y, pairs_per_task, generator, positive_fraction)
    return PairBatch(gather_examples(x, i), gather_examples(x, j), same)


def sample_triplets(
    batch: TaskBatch, triplets_per_task: int, generator: torch.Generator | None = None
) -> TripletBatch:
    """Random (anchor, positive, negative) input triplets from each task."""
    x, y = episode_examples(batch)
    a, p, n = sample_triplet_indices(y, triplets_per_task, generator)
    return TripletBatch(gather_examples(x, a), gather_examples(x, p), gather_examples(x, n))
