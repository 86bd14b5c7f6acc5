"""Stage 1 of the fine-tuning baseline (``finetune.py``): supervised pretraining.

An encoder ``f_phi`` and a linear classifier ``W_0`` over all ``C`` meta-training classes
are trained jointly by plain supervised learning on global labels (Chen et al. 2019's
"Baseline"),

    min_{phi, W_0} E_(x, y) CE(W_0 f_phi(x), y),

by minibatch Adam over a tensor dataset or any map-style dataset of ``(x, y)`` pairs.  The
episodic route to the same objective is ``FineTuneBaseline.meta_loss`` under the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.metric import embed


@dataclass
class PretrainResult:
    """The trained classification head and per-epoch mean training loss and accuracy."""

    head: nn.Module
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


def _embedding_dim(encoder: nn.Module, example: Tensor) -> int:
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            return int(embed(encoder, example[:1]).flatten(1).shape[1])
    finally:
        encoder.train(was_training)


def _as_tensors(data: Any, labels: Tensor | None) -> tuple[Tensor, Tensor] | None:
    if isinstance(data, Tensor):
        if labels is None:
            raise ValueError("pretrain(encoder, x, y): labels are required with a tensor x")
        return data, torch.as_tensor(labels)
    if hasattr(data, "images") and hasattr(data, "labels"):
        return torch.as_tensor(data.images), torch.as_tensor(data.labels)
    return None


def pretrain(
    encoder: nn.Module,
    data: Any,
    labels: Tensor | None = None,
    *,
    num_classes: int | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    head: nn.Module | None = None,
    generator: torch.Generator | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> PretrainResult:
    """Train ``encoder`` and a linear head on global labels with Adam and cross-entropy.

    ``data`` is a tensor ``x [N, ...]`` with ``labels [N]``, an object with ``images`` and
    ``labels`` attributes, or any map-style dataset of ``(x, y)`` pairs such as
    ``metaloop.data.ClassDataset`` (then ``num_classes`` comes from the argument, the
    dataset's ``num_classes`` attribute or ``head``).  ``num_classes`` defaults to
    ``max(y) + 1`` for tensors; ``head`` defaults to ``nn.Linear(embedding_dim,
    num_classes)``.  ``uint8`` images are scaled to ``[0, 1]``, then ``transform`` (e.g. a
    normalisation) is applied to every input batch.  The encoder is trained in place; the
    head is returned with the training curve.
    """

    param = next(iter(encoder.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")

    def prepare(xb: Tensor) -> Tensor:
        xb = xb.to(device)
        xb = xb.float() / 255.0 if xb.dtype == torch.uint8 else xb
        return transform(xb) if transform is not None else xb

    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    tensors = _as_tensors(data, labels)
    if tensors is not None:
        x, y = tensors
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(
                f"need as many labels as inputs (and at least one), got "
                f"{x.shape[0]} inputs and {y.shape[0]} labels"
            )
        if y.is_floating_point():
            raise ValueError(f"labels must be integer class ids, got dtype {y.dtype}")
        num_classes = num_classes or int(y.max()) + 1
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(
                f"labels must lie in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}"
            )
        first = x[:1]

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            order = torch.randperm(x.shape[0], generator=generator)
            for i in range(0, x.shape[0], batch_size):
                idx = order[i : i + batch_size]
                yield x[idx], y[idx]
    else:
        num_classes = num_classes or getattr(data, "num_classes", None)
        if num_classes is None and head is None:
            raise ValueError("pretrain on a generic dataset needs num_classes or head")
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=True, generator=generator
        )
        first = torch.as_tensor(data[0][0]).unsqueeze(0)

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            for xb, yb in loader:
                yield torch.as_tensor(xb), torch.as_tensor(yb)

    if head is None:
        dim = _embedding_dim(encoder, prepare(first))
        head = nn.Linear(dim, int(num_classes)).to(device)  # type: ignore[arg-type]
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    result = PretrainResult(head)
    encoder.train()
    head.train()
    for _ in range(epochs):
        total, correct, count = 0.0, 0, 0
        for xb, yb in batches():
            logits = head(embed(encoder, prepare(xb)).flatten(1))
            yb = yb.to(device)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * yb.shape[0]
            correct += int((logits.argmax(-1) == yb).sum())
            count += yb.shape[0]
        result.loss.append(total / max(count, 1))
        result.accuracy.append(correct / max(count, 1))
    return result


__all__ = ["PretrainResult", "pretrain"]
