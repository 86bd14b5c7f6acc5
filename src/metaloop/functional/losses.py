"""Task losses and metrics, named so configs can refer to them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error ``mean((f(x) - y)^2)``."""
    return F.mse_loss(prediction, target)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy ``-mean log softmax(f(x))_y``."""
    return F.cross_entropy(logits, labels)


LOSSES: dict[str, LossFn] = {"mse": mse, "cross_entropy": cross_entropy}


def get_loss(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)} or a callable")
    return LOSSES[loss]


def is_classification(loss: str | LossFn) -> bool:
    return loss == "cross_entropy" or loss is cross_entropy


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose arg-max equals the label."""
    return (logits.argmax(dim=-1) == labels).to(torch.get_default_dtype()).mean()
