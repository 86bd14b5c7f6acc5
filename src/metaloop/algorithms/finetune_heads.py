"""Stage 2 of the fine-tuning baseline (``finetune.py``): a new ``ways``-way linear head
``(W, b)`` per task, fitted on frozen support embeddings,

    min_{W, b} (1/S) sum_i CE(W f_phi(x_i) + b, y_i),

from ``W = 0, b = 0`` (``"zeros"``) or from the prototype classifier ``W_k = 2 c_k,
b_k = -||c_k||^2`` (``"prototypes"``), for all tasks of a batch at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.algorithms.metric_ops import class_means

HeadInit = Literal["zeros", "prototypes"]


# -- stage 2: per-task heads -----------------------------------------------------------------


def _torch_optimizer(name: str, groups: list[dict[str, Any]], weight_decay: float):
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")


def init_heads(z: Tensor, y: Tensor, ways: int, init: HeadInit) -> tuple[Tensor, Tensor]:
    """Initial heads ``W [T, ways, D]``, ``b [T, ways]`` for embeddings ``z [T, S, D]``."""
    t, _, d = z.shape
    if init == "zeros":
        return z.new_zeros(t, ways, d), z.new_zeros(t, ways)
    if init == "prototypes":
        c = class_means(z, y, ways)
        return 2.0 * c, -(c * c).sum(-1)
    raise ValueError(f"unknown head_init {init!r}; choose 'zeros' or 'prototypes'")


def head_logits(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``z W^T + b`` per task: ``z [T, N, D]``, ``W [T, ways, D]``, ``b [T, ways]``."""
    return z @ weight.transpose(1, 2) + bias.unsqueeze(1)


def per_task_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each task: ``[T, N, ways]``, ``[T, N]`` -> ``[T]``."""
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)


def fit_heads(
    z: Tensor,
    y: Tensor,
    ways: int,
    steps: int,
    head_init: HeadInit,
    optimizer_name: str,
    lr: float,
    weight_decay: float,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the heads after 0, 1, .., ``steps`` steps on frozen embeddings ``z``
    (``FineTuneBaseline._fit_heads``: ``z [T, S, D]``, ``y [T, S]``; heads ``W [T, ways, D]``,
    ``b [T, ways]``, optimizer ``optimizer_name`` at learning rate ``lr``)."""
    z = z.detach()
    weight, bias = init_heads(z, y, ways, head_init)
    weight, bias = weight.requires_grad_(), bias.requires_grad_()
    opt = _torch_optimizer(optimizer_name, [{"params": [weight, bias], "lr": lr}], weight_decay)
    yield weight.detach().clone(), bias.detach().clone()
    for _ in range(steps):
        with torch.enable_grad():
            # sum of per-task means: each task's head gets exactly its own gradient
            # float32 even under autocast: on a linear head bf16 only adds casts
            # (measured 8-25% slower per episode, docs/text.md)
            logits = head_logits(z, weight, bias)
            loss = per_task_cross_entropy(logits, y).sum()
            opt.zero_grad()
            loss.backward()
        opt.step()
        yield weight.detach().clone(), bias.detach().clone()


def _last(iterator: Iterator[Any]) -> Any:
    item = None
    for item in iterator:  # noqa: B007 - keep the last yielded value
        pass
    return item
