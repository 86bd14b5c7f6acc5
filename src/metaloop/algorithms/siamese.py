"""Siamese networks: a tied-weight twin encoder trained on pairs or triplets.

One encoder ``f`` embeds both members of a pair (the "twins" share every weight).  Training
uses the examples of each episode (support and query pooled, ``tasks.pairs``), never
mixing classes across tasks, with one of two losses on Euclidean embedding distances:

* ``loss="contrastive"`` (Hadsell, Chopra and LeCun 2006), over pairs ``(i, j)`` with
  ``d_ij = ||f(x_i) - f(x_j)||``:

      L = 1/2 mean_{same}(d_ij^2) + 1/2 mean_{different}(max(0, m - d_ij)^2)

  (positive and negative terms each averaged over their own pairs, so the many negative
  pairs of an episode do not swamp the few positive ones; ``balanced=False`` averages
  ``1/2 [y d^2 + (1 - y) max(0, m - d)^2]`` over all pairs instead);

* ``loss="triplet"`` (Schroff et al. 2015), over triplets ``(a, p, n)`` with
  ``y_a = y_p != y_n``:

      L = max(0, ||f(a) - f(p)||^2 - ||f(a) - f(n)||^2 + m)

  with ``mining="all"`` (batch-all: the mean over **every** valid triplet of each task,
  zero-loss ones included) or ``mining="hard"`` (batch-hard, Hermans et al. 2017: for each
  anchor the farthest positive and the closest negative in its task; mean over anchors).

With ``samples=None`` (default) the loss uses every pair / triplet of each episode from one
embedding pass; ``samples=P`` instead draws ``P`` random pairs (half positive) or triplets
per task with ``tasks.pairs`` samplers (mining is then ignored).

``adapt`` does N-way K-shot classification by the nearest support embedding: the score of
class ``k`` is ``-min_{i: y_i = k} ||f(x) - f(x_i)||^2`` (1-nearest-neighbour; for one shot
this is the distance to the single example, as in Koch et al. 2015's one-shot protocol).
The evaluation "loss" is the cross-entropy of these scores, reported for completeness;
accuracy is the number that matters.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from metaloop.algorithms.metric import (
    MetricMetaLearner,
    check_labels,
    embed_batch,
    infer_ways,
    squared_euclidean,
)
from metaloop.algorithms.registry import register
from metaloop.tasks.base import TaskBatch, TaskError
from metaloop.tasks.pairs import pair_masks, sample_pair_indices, sample_triplet_indices
from metaloop.validate import is_int

PairLoss = Literal["contrastive", "triplet"]
Mining = Literal["all", "hard"]


def contrastive_loss(
    sq_dist: Tensor, same: Tensor, different: Tensor, margin: float, balanced: bool = True
) -> Tensor:
    """Contrastive loss from squared distances ``[..]`` and boolean pair masks ``[..]``."""
    d = sq_dist.clamp_min(1e-12).sqrt()
    pos = 0.5 * sq_dist
    neg = 0.5 * (margin - d).clamp_min(0.0) ** 2
    n_pos, n_neg = same.sum(), different.sum()
    if int(n_pos) == 0 or int(n_neg) == 0:
        raise TaskError(
            f"contrastive loss needs same-class and different-class pairs, got {int(n_pos)} "
            f"and {int(n_neg)}: episodes need two examples of a class and two classes"
        )
    pos_sum = torch.where(same, pos, torch.zeros_like(pos)).sum()
    neg_sum = torch.where(different, neg, torch.zeros_like(neg)).sum()
    if balanced:
        return pos_sum / n_pos + neg_sum / n_neg
    return (pos_sum + neg_sum) / (n_pos + n_neg)


def triplet_loss_all(sq_dist: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-all: mean over valid ``(a, p, n)`` of ``max(0, d_ap - d_an + m)``, with
    ``sq_dist [T, N, N]`` squared distances and ``labels [T, N]``."""
    same, different = pair_masks(labels)
    valid = same.unsqueeze(3) & different.unsqueeze(2)  # [T, a, p, n]
    count = valid.sum()
    if int(count) == 0:
        raise TaskError(
            "no valid triplet in the batch: episodes need a class with two "
            "examples and a second class"
        )
    hinge = (sq_dist.unsqueeze(3) - sq_dist.unsqueeze(2) + margin).clamp_min(0.0)
    return torch.where(valid, hinge, torch.zeros_like(hinge)).sum() / count


def triplet_loss_hard(sq_dist: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard: per anchor ``max(0, max_p d_ap - min_n d_an + m)``, mean over anchors
    that have a positive and a negative in their task."""
    same, different = pair_masks(labels)
    usable = same.any(-1) & different.any(-1)  # [T, N]
    if not bool(usable.any()):
        raise TaskError(
            "no valid triplet in the batch: episodes need a class with two "
            "examples and a second class"
        )
    hardest_pos = sq_dist.masked_fill(~same, float("-inf")).amax(-1)
    hardest_neg = sq_dist.masked_fill(~different, float("inf")).amin(-1)
    hinge = (hardest_pos - hardest_neg + margin).clamp_min(0.0)
    return torch.where(usable, hinge, torch.zeros_like(hinge)).sum() / usable.sum()


def nearest_neighbour_scores(sq_dist: Tensor, y_support: Tensor, ways: int) -> Tensor:
    """``-min_{i: y_i = k} d[q, i]`` for ``sq_dist [T, Q, S]`` -> ``[T, Q, ways]``."""
    member = torch.nn.functional.one_hot(y_support, ways).bool().unsqueeze(1)  # [T,1,S,ways]
    masked = sq_dist.unsqueeze(-1).masked_fill(~member, float("inf"))
    return -masked.amin(dim=2)


@register("siamese")
class SiameseNet(MetricMetaLearner):
    """Siamese (twin) network trained with a contrastive or triplet loss on episodes.

    Args:
        encoder: the shared ``nn.Module`` ``f`` (outputs are flattened to vectors).
        loss: ``"contrastive"`` or ``"triplet"``.
        margin: ``m`` (default 1.0); a distance for contrastive, a squared distance gap
            for triplet.
        mining: triplet mining, ``"all"`` (batch-all, default) or ``"hard"`` (batch-hard).
        balanced: contrastive positive and negative terms averaged separately (default).
        samples: ``None`` for every pair/triplet of an episode; an int for that many random
            pairs/triplets per task (``generator`` seeds them; default RNG otherwise).
    """

    def __init__(
        self,
        encoder: nn.Module,
        loss: PairLoss = "contrastive",
        margin: float = 1.0,
        mining: Mining = "all",
        balanced: bool = True,
        samples: int | None = None,
        generator: torch.Generator | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__(encoder, "cross_entropy", channels_last)
        if loss not in ("contrastive", "triplet"):
            raise ValueError(f"SiameseNet loss must be 'contrastive' or 'triplet', got {loss!r}")
        if mining not in ("all", "hard"):
            raise ValueError(f"mining must be 'all' or 'hard', got {mining!r}")
        if not isinstance(margin, (int, float)) or margin <= 0:
            raise ValueError(f"margin must be a positive number, got {margin!r}")
        if samples is not None and (not is_int(samples) or samples < 1):
            raise ValueError(f"samples must be None or a positive integer, got {samples!r}")
        self.pair_loss, self.margin, self.mining = loss, float(margin), mining
        self.balanced, self.samples, self.generator = balanced, samples, generator

    def scores(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        """Nearest-support-embedding scores ``[T, Q, ways]``."""
        d = squared_euclidean(z_query.flatten(2), z_support.flatten(2))
        return nearest_neighbour_scores(d, y_support, ways)

    def pair_objective(self, z: Tensor, labels: Tensor) -> Tensor:
        """The training loss on embeddings ``z [T, N, D]`` with labels ``[T, N]``."""
        if self.samples is None:
            d = squared_euclidean(z, z)
            if self.pair_loss == "contrastive":
                same, different = pair_masks(labels)
                upper = torch.ones_like(same).triu(1)  # each unordered pair once
                return contrastive_loss(
                    d, same & upper, different & upper, self.margin, self.balanced
                )
            if self.mining == "all":
                return triplet_loss_all(d, labels, self.margin)
            return triplet_loss_hard(d, labels, self.margin)
        rows = torch.arange(z.shape[0], device=z.device).unsqueeze(1)
        if self.pair_loss == "contrastive":
            i, j, same = sample_pair_indices(labels.cpu(), self.samples, self.generator)
            i, j, same = i.to(z.device), j.to(z.device), same.to(z.device)
            d = ((z[rows, i] - z[rows, j]) ** 2).sum(-1)
            return contrastive_loss(d, same, ~same, self.margin, self.balanced)
        a, p, n = (
            v.to(z.device)
            for v in sample_triplet_indices(labels.cpu(), self.samples, self.generator)
        )
        d_ap = ((z[rows, a] - z[rows, p]) ** 2).sum(-1)
        d_an = ((z[rows, a] - z[rows, n]) ** 2).sum(-1)
        return (d_ap - d_an + self.margin).clamp_min(0.0).mean()

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Pair/triplet loss over each episode's pooled support and query embeddings, plus
        the nearest-neighbour query accuracy from the same forward pass."""
        ways = infer_ways(batch.support_y, batch.ways)
        check_labels(batch.support_y, batch.query_y, ways)
        z_s, z_q = embed_batch(self.encoder, batch)
        z_s, z_q = z_s.flatten(2), z_q.flatten(2)
        z = torch.cat([z_s, z_q], dim=1)
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)
        loss = self.pair_objective(z, labels)
        with torch.no_grad():
            scores = self.scores(z_s, batch.support_y, z_q, ways)
            acc = (scores.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    def extra_repr(self) -> str:
        extra = f", mining={self.mining}" if self.pair_loss == "triplet" else ""
        return f"loss={self.pair_loss}, margin={self.margin}{extra}, samples={self.samples}"
