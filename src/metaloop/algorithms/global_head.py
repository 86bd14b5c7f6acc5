"""TADAM's auxiliary global classification head for metric learners (Oreshkin et al. 2018).

A head over all ``C`` meta-training classes scores every support and query embedding of a
batch against its dataset class ``c(x)`` (``episode_global_labels``); the metric learner
adds ``lambda`` times its loss to the episode loss,

    L = L_episode + lambda * (1 / N) sum_x CE(W f_phi(x) + b, c(x)).

With ``classifier = "cosine"`` the head is ``metaloop.models.CosineClassifier`` instead,
``s (cos(f_phi(x), w_c) - m [c = c(x)])`` (normalised softmax, with CosFace's additive
margin ``m``; ``scale`` is ``s``, ``margin`` is ``m``).  ``MetricMetaLearner`` holds the
head as ``global_head`` (``nn.Linear`` or ``CosineClassifier``: the checkpoint names are
theirs) and uses it in training only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.models.heads import CosineClassifier
from metaloop.tasks.base import TaskBatch, TaskError
from metaloop.validate import is_number


def episode_global_labels(batch: TaskBatch, key: str = "global_labels") -> Tensor | None:
    """Dataset class ids ``[T, S+Q]`` of every support then query example of a batch.

    Read from ``batch.info[key]`` when present, else from ``batch.info["classes"][t, y]``
    (the dataset class of episode label ``y``, which ``metaloop.data`` episodes carry);
    ``None`` when the batch carries neither.
    """
    info = batch.info or {}
    local = torch.cat([batch.support_y, batch.query_y], dim=1)
    if info.get(key) is not None:
        labels = torch.as_tensor(info[key]).to(local.device)
        if labels.shape != local.shape:
            raise TaskError(
                f"batch.info[{key!r}] has shape {tuple(labels.shape)}; expected "
                f"{tuple(local.shape)} (one global label per support and query example)"
            )
        return labels
    if info.get("classes") is not None:
        return torch.gather(torch.as_tensor(info["classes"]).to(local.device), 1, local)
    return None


GLOBAL_CLASSIFIERS = ("linear", "cosine")


def check_global_head(
    global_classes: object, global_loss_weight: object, embedding_dim: object
) -> tuple[int | None, float]:
    """Validate the auxiliary global-classification options; ``(classes, weight)``."""
    if not is_number(global_loss_weight):
        raise ValueError(f"global_loss_weight must be a number >= 0, got {global_loss_weight!r}")
    if global_loss_weight < 0:
        raise ValueError(f"global_loss_weight must be >= 0, got {global_loss_weight!r}")
    if global_classes is None:
        if global_loss_weight > 0:
            raise ValueError(
                "global_loss_weight > 0 needs global_classes (the number of meta-training "
                "classes; the CLI fills it in from the training data)"
            )
        return None, float(global_loss_weight)
    integer = isinstance(global_classes, int) and not isinstance(global_classes, bool)
    if not integer or global_classes < 2:
        raise ValueError(f"global_classes must be an integer >= 2, got {global_classes!r}")
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(
            "global_classes needs the encoder's flattened embedding size: use an encoder with "
            f"an integer embedding_dim attribute (Conv4(ways=None)), got {embedding_dim!r}"
        )
    return global_classes, float(global_loss_weight)


def make_global_head(
    global_classes: object,
    global_loss_weight: object,
    embedding_dim: object,
    classifier: str = "linear",
    scale: float = 10.0,
    margin: float = 0.0,
) -> tuple[nn.Linear | CosineClassifier | None, float]:
    """``(head, weight)``: the checked head over ``global_classes`` classes of
    ``embedding_dim`` features (``None`` without ``global_classes``) and ``lambda``."""
    classes, weight = check_global_head(global_classes, global_loss_weight, embedding_dim)
    if classifier not in GLOBAL_CLASSIFIERS:
        raise ValueError(
            f"unknown global_classifier {classifier!r}; choose one of "
            f"{', '.join(GLOBAL_CLASSIFIERS)}"
        )
    if classifier == "linear" and margin != 0:
        raise ValueError(
            f"global_margin={margin!r} needs global_classifier='cosine' (a margin is "
            "defined on cosines)"
        )
    if classes is None:
        return None, weight
    assert isinstance(embedding_dim, int)
    if classifier == "cosine":
        return CosineClassifier(embedding_dim, classes, scale, margin), weight
    return nn.Linear(embedding_dim, classes), weight


def global_classification_loss(
    head: nn.Linear | CosineClassifier, batch: TaskBatch, z_support: Tensor, z_query: Tensor
) -> Tensor:
    """``(1/N) sum_x CE(head(f(x)), c(x))`` over every support and query embedding of
    ``batch`` (``z_support [T, S, ...]``, ``z_query [T, Q, ...]``)."""
    labels = episode_global_labels(batch)
    if labels is None:
        raise TaskError(
            "global_loss_weight > 0 needs the dataset class of every example: batches "
            "must carry info['classes'] (metaloop.data episodes do) or info['global_labels']"
        )
    z = torch.cat([z_support.flatten(2), z_query.flatten(2)], dim=1).flatten(0, 1)
    y = labels.reshape(-1)
    classes = head.out_features
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise TaskError(
            f"global labels {int(y.min())}..{int(y.max())} exceed the head's {classes} "
            "classes: global_classes must be the number of meta-training classes"
        )
    if isinstance(head, CosineClassifier):
        return F.cross_entropy(head(z, y), y)
    return F.cross_entropy(head(z), y)


__all__ = [
    "GLOBAL_CLASSIFIERS",
    "check_global_head",
    "episode_global_labels",
    "global_classification_loss",
    "make_global_head",
]
