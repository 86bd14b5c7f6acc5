"""Pair verification ("same class or not?"): ROC curve, ROC AUC and equal error rate.

The use of the Siamese literature (signatures, faces; Bromley et al. 1993, Koch et al.
2015): a model scores a *pair* of images, higher meaning "more likely the same
identity", and is judged over many pairs of unseen identities.

* ``score_pairs``: the score of a pair is ``s(a, b) = -||f(a) - f(b)||^2`` for an
  embedding ``f`` (``metric="euclidean"``) or the cosine similarity
  ``f(a).f(b) / (||f(a)|| ||f(b)||)`` (``metric="cosine"``).
* ``roc_curve``: predicting "same" when ``s >= tau``, for every distinct score ``tau``
  from the highest down (plus ``tau = +inf``), the false positive rate
  ``FPR(tau) = #{different pairs with s >= tau} / #different`` and the true positive
  rate ``TPR(tau) = #{same pairs with s >= tau} / #same``.
* ``roc_auc``: the area under that curve, computed as the Mann-Whitney statistic
  ``AUC = P(s_same > s_diff) + 1/2 P(s_same = s_diff)`` over all (same, different)
  pairs of pairs: 1 for a perfect ranking, 1/2 for a constant score.
* ``equal_error_rate``: the rate where the false rejection rate ``FNR = 1 - TPR`` equals
  ``FPR``, linearly interpolated between the two ROC points where ``FNR - FPR`` changes
  sign; returned with the interpolated threshold.

``verify`` embeds a labelled image set, forms **all** pairs ``i < j`` and reports the
three numbers (``VerificationResult``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

_METRICS = ("euclidean", "cosine")


def _check(scores: Tensor, same: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    same = torch.as_tensor(same).reshape(-1).bool()
    if scores.numel() != same.numel():
        raise ValueError(
            f"scores ({scores.numel()}) and same-labels ({same.numel()}) differ in length"
        )
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("pair scores must be finite")
    positives = int(same.sum())
    if positives == 0 or positives == same.numel():
        raise ValueError(
            f"verification needs same and different pairs, got {positives} same of "
            f"{same.numel()} pairs"
        )
    return scores, same


def roc_curve(scores: Tensor, same: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(fpr, tpr, thresholds)``, float64, from ``tau = +inf`` (0, 0) down to the lowest
    score (1, 1); see the module docstring."""
    scores, same = _check(scores, same)
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], same[order].double()
    tp, fp = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    # keep the last position of each distinct score (ties move together)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, tp[last] / tp[-1]])
    fpr = torch.cat([zero, fp[last] / fp[-1]])
    thresholds = torch.cat([torch.tensor([float("inf")], dtype=torch.float64), s[last]])
    return fpr, tpr, thresholds


def roc_auc(scores: Tensor, same: Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half)."""
    scores, same = _check(scores, same)
    ranks = _average_ranks(scores)
    n_pos = int(same.sum())
    n_neg = same.numel() - n_pos
    u = float(ranks[same].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks, ties sharing their mean rank."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    n = values.numel()
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    group = torch.cumsum(starts.long(), 0) - 1
    first = torch.nonzero(starts).reshape(-1).double()
    counts = torch.bincount(group).double()
    mean_rank = first + (counts + 1) / 2  # positions first+1 .. first+count
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = mean_rank[group]
    return ranks


def equal_error_rate(scores: Tensor, same: Tensor) -> tuple[float, float]:
    """``(eer, threshold)``: where ``1 - TPR = FPR`` on the ROC curve (interpolated)."""
    fpr, tpr, thresholds = roc_curve(scores, same)
    gap = (1 - tpr) - fpr  # decreasing from 1 to -1
    i = int(torch.nonzero(gap <= 0)[0])  # first point at or past the crossing (i >= 1)
    if gap[i] == 0:
        return float(fpr[i]), float(thresholds[i])
    t = float(gap[i - 1] / (gap[i - 1] - gap[i]))
    eer = float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    high = thresholds[i - 1] if torch.isfinite(thresholds[i - 1]) else thresholds[i]
    return eer, float(high + t * (thresholds[i] - high))


def all_pairs(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every pair ``i < j`` of a labelled set: ``(i, j, same)``."""
    labels = torch.as_tensor(labels).reshape(-1)
    i, j = torch.triu_indices(labels.numel(), labels.numel(), offset=1)
    return i, j, labels[i] == labels[j]


def score_pairs(z_a: Tensor, z_b: Tensor, metric: str = "euclidean") -> Tensor:
    """Scores of embedded pairs ``z_a [P, D]``, ``z_b [P, D]``: ``-||z_a - z_b||^2`` or
    cosine similarity; higher = more likely the same class."""
    if metric not in _METRICS:
        raise ValueError(f"unknown pair metric {metric!r}; choose one of {', '.join(_METRICS)}")
    z_a, z_b = z_a.flatten(1), z_b.flatten(1)
    if metric == "euclidean":
        return -((z_a - z_b) ** 2).sum(-1)
    return torch.nn.functional.cosine_similarity(z_a, z_b, dim=-1, eps=1e-8)


@dataclass(frozen=True)
class VerificationResult:
    """ROC AUC, equal error rate (and its threshold) over ``same + different`` pairs."""

    auc: float
    eer: float
    threshold: float
    same: int
    different: int
    metric: str = "euclidean"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"AUC {self.auc:.4f}, EER {100 * self.eer:.2f}% (threshold {self.threshold:.4g}) "
            f"over {self.same} same and {self.different} different pairs ({self.metric})"
        )


@torch.no_grad()
def embed_images(
    embed: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 256
) -> Tensor:
    """``embed`` applied in batches, rows flattened to vectors."""
    if images.shape[0] == 0:
        raise ValueError("no images to embed")
    return torch.cat(
        [
            embed(images[k : k + batch_size]).flatten(1)
            for k in range(0, images.shape[0], batch_size)
        ]
    )


def verify(
    embed: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    *,
    metric: str = "euclidean",
    batch_size: int = 256,
) -> VerificationResult:
    """Verification over all pairs of ``images [N, ...]`` (model inputs) with class
    ``labels [N]``, scored from the embeddings ``embed(images)``."""
    if metric not in _METRICS:
        raise ValueError(f"unknown pair metric {metric!r}; choose one of {', '.join(_METRICS)}")
    z = embed_images(embed, images, batch_size).double()
    i, j, same = all_pairs(labels)
    scores = score_pairs(z[i], z[j], metric)
    eer, threshold = equal_error_rate(scores, same)
    n_same = int(same.sum())
    return VerificationResult(
        roc_auc(scores, same), eer, threshold, n_same, same.numel() - n_same, metric
    )
