"""Tensor operations of the metric-based learners (``metric.py``): distances between
embeddings, label checks, per-class sums and means (prototypes), and the soft k-means
refinement of prototypes by unlabelled queries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.functional.assignment import balance_log_probs
from metaloop.tasks.base import TaskError
from metaloop.validate import is_int

# -- distances ---------------------------------------------------------------------------


def squared_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """``d[..., i, j] = ||a[..., i, :] - b[..., j, :]||^2``, ``a [..., N, D]``, ``b [..., M, D]``.

    Computed as ``||a||^2 - 2 a.b + ||b||^2`` (one batched matmul), clamped at zero.
    """
    a2 = (a * a).sum(-1, keepdim=True)
    b2 = (b * b).sum(-1).unsqueeze(-2)
    return (a2 - 2.0 * a @ b.transpose(-1, -2) + b2).clamp_min(0.0)


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``c[..., i, j] = a_i . b_j / (||a_i|| ||b_j||)`` for ``a [..., N, D]``, ``b [..., M, D]``."""
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return a @ b.transpose(-1, -2)


def euclidean(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """``||a_i - b_j||`` with a gradient that stays finite at zero distance."""
    return squared_euclidean(a, b).clamp_min(eps).sqrt()


# -- labels ------------------------------------------------------------------------------


def infer_ways(support_y: Tensor, ways: int | None = None) -> int:
    """``ways`` if given, else ``max(support_y) + 1``."""
    if ways is not None:
        return int(ways)
    if support_y.numel() == 0:
        raise TaskError("cannot infer the number of ways from an empty support set")
    return int(support_y.max()) + 1


def check_labels(support_y: Tensor, query_y: Tensor | None, ways: int) -> None:
    """Raise ``TaskError`` unless labels are integers in ``0..ways-1`` and every class has
    at least one support example in every task.  ``support_y [T, S]``, ``query_y [T, Q]``.
    """
    for name, y in (("support_y", support_y), ("query_y", query_y)):
        if y is None:
            continue
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TaskError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= ways):
            raise TaskError(
                f"{name} labels must lie in 0..{ways - 1} for a {ways}-way task, found range "
                f"{int(y.min())}..{int(y.max())}"
            )
    counts = F.one_hot(support_y, ways).sum(-2)  # [T, ways]
    missing = (counts == 0).nonzero()
    if missing.numel():
        task, cls = (int(v) for v in missing[0])
        raise TaskError(
            f"class {cls} has no support examples in task {task} ({missing.shape[0]} empty "
            f"(task, class) pairs in all); every class 0..{ways - 1} needs at least one "
            "support example"
        )


def one_hot(labels: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    return F.one_hot(labels, ways).to(dtype)


def class_means(z: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Per-class mean of embeddings: ``z [T, S, D]``, ``labels [T, S]`` -> ``[T, ways, D]``.

    ``c_k = (1/|S_k|) sum_{i: y_i = k} z_i`` (ProtoNet's prototypes).
    """
    return class_sums(z, labels, ways, mean=True)


def class_sums(z: Tensor, labels: Tensor, ways: int, mean: bool = False) -> Tensor:
    """Per-class sum (or mean) of embeddings of any trailing shape: ``z [T, S, *F]`` ->
    ``[T, ways, *F]``.
    """
    onehot = one_hot(labels, ways, z.dtype)  # [T, S, ways]
    if mean:
        onehot = onehot / onehot.sum(1, keepdim=True).clamp_min(1.0)
    flat = z.reshape(*z.shape[:2], -1)
    out = onehot.transpose(1, 2) @ flat
    return out.reshape(z.shape[0], ways, *z.shape[2:])


def check_transductive_steps(steps: object) -> int:
    """``steps`` if it is a valid number of soft k-means refinements (an int >= 0)."""
    if not is_int(steps) or steps < 0:
        raise ValueError(
            f"transductive_steps must be an integer >= 0 (0 turns it off), got {steps!r}"
        )
    return steps


def check_transductive_balance(balance: object, steps: int) -> bool:
    """``balance`` if it is a bool and, when true, there are refinement steps to balance."""
    if not isinstance(balance, bool):
        raise ValueError(f"transductive_balance must be true or false, got {balance!r}")
    if balance and steps == 0:
        raise ValueError(
            "transductive_balance balances the soft k-means weights, so it needs "
            "transductive_steps >= 1 (got 0); for balanced final predictions use "
            "metaloop.evaluation.BalancedAssignment (eval --balanced)"
        )
    return balance


def soft_kmeans_step(
    prototypes: Tensor,
    z_support: Tensor,
    y_support: Tensor,
    z_query: Tensor,
    logits: Callable[[Tensor, Tensor], Tensor],
    balanced: bool = False,
) -> Tensor:
    """One soft k-means refinement of prototypes by unlabelled queries (Ren et al., 2018):

        w_jk = softmax_k(logits(z_j, c)),
        c_k <- (sum_{i: y_i = k} z_i + sum_j w_jk z_j) / (|S_k| + sum_j w_jk).

    With ``balanced`` the weights are instead the Sinkhorn-balanced assignment of the
    queries (``metaloop.functional.assignment``: rows sum to 1, every class receives
    ``Q / ways`` of the query mass), the k-means step of PT-MAP (Hu et al., 2021); it
    assumes the queries are spread evenly over the classes.

    ``prototypes [T, ways, D]``, ``z_support [T, S, D]``, ``y_support [T, S]``,
    ``z_query [T, Q, D]``; ``logits(z_query, prototypes) -> [T, Q, ways]``.
    """
    ways = prototypes.shape[1]
    scores = logits(z_query, prototypes)
    w = balance_log_probs(scores).exp() if balanced else scores.softmax(-1)  # [T, Q, ways]
    total = class_sums(z_support, y_support, ways) + w.transpose(1, 2) @ z_query
    count = one_hot(y_support, ways, w.dtype).sum(1) + w.sum(1)  # [T, ways]
    return total / count.unsqueeze(-1)
