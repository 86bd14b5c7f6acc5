"""Prototypical Networks (Snell, Swersky and Zemel, 2017).

An encoder ``f_phi`` maps examples to embeddings.  A class's prototype is the mean
embedding of its support examples,

    c_k = (1 / |S_k|) sum_{(x_i, y_i) in S, y_i = k} f_phi(x_i),

and a query ``x`` is classified by a softmax over negative distances to the prototypes,

    p(y = k | x) = softmax_k( -d(f_phi(x), c_k) / tau ),

with ``d`` the squared Euclidean distance (the paper's choice, which makes the classifier
linear in ``f_phi(x)``) or, with ``distance="cosine"``, the logit ``cos(f_phi(x), c_k) / tau``
(scaled cosine similarity; ``tau = 0.1`` by default, i.e. a scale of 10).  The meta-loss
is the query cross-entropy ``-(1/N) sum log p(y_q | x_q)``, minimised over ``phi``.

Transductive refinement (``transductive_steps = n > 0``; the soft k-means step of Ren et
al., 2018, with the queries as the unlabelled set): the queries of a task, scored together,
move the prototypes ``n`` times,

    w_jk = p(y = k | x_j)  (under the current prototypes),
    c_k <- (sum_{i: y_i = k} f_phi(x_i) + sum_j w_jk f_phi(x_j)) / (|S_k| + sum_j w_jk),

before the final scores.  With ``transductive_balance`` the weights ``w_jk`` are the
Sinkhorn-balanced assignment instead (every class claims the same share of the queries;
PT-MAP's step, Hu et al. 2021), which assumes balanced query sets.  A query's prediction
then depends on the other queries of its
task (all queries of an episode, or all inputs given to one ``adapt`` predictor call), so
report such numbers as transductive.

Auxiliary global classification (``global_classes``, ``global_loss_weight = lambda > 0``):
the meta-loss adds ``lambda`` times the cross-entropy of a linear head over all
meta-training classes on every support and query embedding (``metaloop.algorithms.metric``;
TADAM's auxiliary co-training, Oreshkin et al. 2018), or, with ``global_classifier =
"cosine"``, of a scaled cosine head with an additive margin (CosFace).  It changes training
only.

Support and query of the whole meta-batch go through the encoder in one forward pass.
Nothing here fixes the number of ways: it is read per batch, so the paper's recipe of
training with more ways (60) than testing (5 or 20) works as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metaloop.algorithms.metric import (
    MetricMetaLearner,
    check_transductive_balance,
    check_transductive_steps,
    class_means,
    cosine_similarity,
    soft_kmeans_step,
    squared_euclidean,
)
from metaloop.algorithms.registry import register
from metaloop.tasks.registry import TaskSpec

Distance = Literal["squared_euclidean", "cosine"]
DISTANCES = ("squared_euclidean", "cosine")


def _drop_saved_fixed_scale(state: dict, prefix: str, *args: object) -> None:
    """Checkpoints written before the fixed temperature stopped being saved hold it; the
    constructor's value wins."""
    state.pop(prefix + "log_scale", None)


@register("protonet")
class ProtoNet(MetricMetaLearner):
    """Prototypical network over any encoder.

    Args:
        encoder: ``nn.Module`` mapping ``[N, *input]`` to ``[N, *E]`` embeddings (feature maps
            are flattened).
        distance: ``"squared_euclidean"`` (logits ``-||f(x) - c_k||^2 / tau``) or
            ``"cosine"`` (logits ``cos(f(x), c_k) / tau``).
        temperature: ``tau``; default 1 for squared Euclidean and 0.1 for cosine.
        learn_temperature: make ``log(1/tau)`` a learned parameter (meta-trained with phi).
        channels_last: lay the encoder's convolution weights out channels-last (faster on
            the CPU; see ``MetricMetaLearner``).
        autocast: ``"bfloat16"`` (or ``"float16"`` on CUDA): meta-train the encoder in mixed
            precision (``MetricMetaLearner``); ``None`` (default): float32.
        transductive_steps: soft k-means refinements of the prototypes by the task's
            queries (module docstring); 0 (default) is the paper's inductive classifier.
        transductive_balance: balance the refinement's weights over the classes (module
            docstring); needs ``transductive_steps > 0``.
        global_classes: number of meta-training classes of the auxiliary global
            classification head (module docstring); needs an encoder with an integer
            ``embedding_dim``.  ``None`` (default): no head.
        global_loss_weight: ``lambda``, the weight of the global classification loss
            (0 by default; > 0 needs ``global_classes``).
        global_classifier: ``"linear"`` (default) or ``"cosine"``
            (``metaloop.models.CosineClassifier``).
        global_scale, global_margin: the cosine head's scale ``s`` and additive margin
            ``m`` (``0 <= m < 1``; a margin needs the cosine head).
    """

    @classmethod
    def config_defaults(
        cls, spec: TaskSpec, model: nn.Module, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """With a global loss (``global_loss_weight > 0``), the auxiliary head spans the
        family's training classes (``spec.num_classes``), at evaluation too (so the
        checkpoint's head shape is rebuilt)."""
        defaults = super().config_defaults(spec, model, options)
        if cls.needs_training_classes(options) and spec.num_classes is not None:
            defaults["global_classes"] = spec.num_classes
        return defaults

    @classmethod
    def needs_training_classes(cls, options: Mapping[str, Any]) -> bool:
        return bool(options.get("global_loss_weight")) and "global_classes" not in options

    def __init__(
        self,
        encoder: nn.Module,
        distance: Distance = "squared_euclidean",
        temperature: float | None = None,
        learn_temperature: bool = False,
        channels_last: bool = False,
        autocast: str | None = None,
        transductive_steps: int = 0,
        transductive_balance: bool = False,
        global_classes: int | None = None,
        global_loss_weight: float = 0.0,
        global_classifier: Literal["linear", "cosine"] = "linear",
        global_scale: float = 10.0,
        global_margin: float = 0.0,
    ) -> None:
        super().__init__(encoder, "cross_entropy", channels_last, autocast)
        self._init_global_head(
            global_classes, global_loss_weight, global_classifier, global_scale, global_margin
        )
        self.transductive_steps = check_transductive_steps(transductive_steps)
        self.transductive_balance = check_transductive_balance(
            transductive_balance, self.transductive_steps
        )
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
        if temperature is None:
            temperature = 1.0 if distance == "squared_euclidean" else 0.1
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.distance = distance
        log_scale = torch.tensor(-math.log(float(temperature)))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            # a fixed temperature is a setting, not state: not saved, so the value given
            # here (e.g. an evaluation's --set algorithm.temperature) is the one used
            self.register_buffer("log_scale", log_scale, persistent=False)
            self._register_load_state_dict_pre_hook(_drop_saved_fixed_scale)
        self.learn_temperature = bool(learn_temperature)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.log_scale.detach()))

    def prototypes(self, z_support: Tensor, y_support: Tensor, ways: int) -> Tensor:
        """``c_k``: mean flattened support embedding per class, ``[T, ways, D]``."""
        return class_means(z_support.flatten(2), y_support, ways)

    def logits(self, z_query: Tensor, prototypes: Tensor) -> Tensor:
        """``[T, Q, ways]`` logits of flattened query embeddings against prototypes."""
        z_query = z_query.flatten(2)
        if z_query.shape[-1] != prototypes.shape[-1]:
            raise ValueError(
                f"query embeddings have {z_query.shape[-1]} features but prototypes "
                f"{prototypes.shape[-1]}"
            )
        scale = self.log_scale.exp().to(z_query.dtype)
        if self.distance == "squared_euclidean":
            return -squared_euclidean(z_query, prototypes) * scale
        return cosine_similarity(z_query, prototypes) * scale

    def refine(
        self, prototypes: Tensor, z_support: Tensor, y_support: Tensor, z_query: Tensor
    ) -> Tensor:
        """One soft k-means step: ``c_k`` moved towards the queries it claims (module
        docstring); ``[T, ways, D]`` -> ``[T, ways, D]``."""
        return soft_kmeans_step(
            prototypes,
            z_support.flatten(2),
            y_support,
            z_query.flatten(2),
            self.logits,
            self.transductive_balance,
        )

    def scores(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        prototypes = self.prototypes(z_support, y_support, ways)
        for _ in range(self.transductive_steps):
            prototypes = self.refine(prototypes, z_support, y_support, z_query)
        return self.logits(z_query, prototypes)

    def extra_repr(self) -> str:
        return (
            f"distance={self.distance}, temperature={self.temperature:.4g}, "
            f"learn_temperature={self.learn_temperature}"
            + (f", transductive_steps={self.transductive_steps}" if self.transductive_steps else "")
            + (", transductive_balance=True" if self.transductive_balance else "")
            + (
                f", global_classes={self.global_head.out_features}, "
                f"global_loss_weight={self.global_loss_weight:g}, "
                f"global_classifier={type(self.global_head).__name__}"
                if self.global_head is not None
                else ""
            )
        )
