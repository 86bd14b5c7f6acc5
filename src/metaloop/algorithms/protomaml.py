"""Proto-MAML (Triantafillou et al., "Meta-Dataset", 2020).

MAML over a body ``f_phi`` and a linear output layer whose initial value is not a
meta-parameter but is computed per task from the support prototypes
``c_k = (1/|S_k|) sum_{y_i = k} f_phi(x_i)``:

    W_k = 2 c_k / tau,   b_k = -||c_k||^2 / tau,

so that before any inner step the logits ``W_k . f(x) + b_k`` equal the prototypical
network's ``-||f(x) - c_k||^2 / tau`` up to the class-independent ``-||f(x)||^2 / tau``:
with ``inner_steps = 0`` Proto-MAML *is* a ProtoNet.  The inner loop then fine-tunes body
and head (or, with ``adapt="head"``, the head only) on the support set; the meta-objective
is MAML's query loss, and the meta-gradient also flows through the prototypes into
``phi`` (the paper's "fo-Proto-MAML" keeps that path while dropping the second-order term:
``first_order=True`` here).

The model must compute ``head(features(x))`` with ``features`` and ``head`` submodules
(``metaloop.models.Conv4`` with ``ways`` set).  Its own ``head`` parameters are
placeholders: every task replaces them, so they are frozen (``requires_grad=False``) and
their shape does not limit the number of ways, which is read from each task's labels.
That makes the head's shape data-dependent, so tasks run one after another
(``vectorize="loop"``; ``"vmap"`` is refused).

Transductive prototypes (``transductive_steps = n > 0``, evaluation only).  Before the
head is built, the support prototypes are refined ``n`` times by the task's unlabelled
queries with ProtoNet's soft k-means step (Ren et al., 2018),

    w_jk = softmax_k(-||f(x_j) - c_k||^2 / tau),
    c_k <- (sum_{i: y_i = k} f(x_i) + sum_j w_jk f(x_j)) / (|S_k| + sum_j w_jk),

with support and queries embedded in one forward pass; the inner loop then fine-tunes on
the support under that same joint forward (``transductive_entropy`` may add the query
entropy term).  At zero inner steps this is ``ProtoNet(transductive_steps=n)``.  A query's
prediction depends on the other queries of its task: report such figures as transductive.
Meta-training is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metaloop.algorithms.maml import MAML
from metaloop.algorithms.metric import (
    check_transductive_balance,
    check_transductive_steps,
    class_means,
    infer_ways,
    soft_kmeans_step,
    squared_euclidean,
)
from metaloop.algorithms.registry import register
from metaloop.functional.params import Params, call
from metaloop.tasks.base import TaskBatch


@register("protomaml")
class ProtoMAML(MAML):
    """MAML with the output layer initialised from support prototypes (see module doc).

    Args:
        model: ``nn.Module`` with ``features`` (body) and ``head`` (``nn.Linear``) submodules.
        temperature: ``tau`` of the prototype logits (default 1, ProtoNet's squared
            Euclidean distance).
        transductive_steps: soft k-means refinements of the initial prototypes by the
            task's queries at evaluation (module docstring); 0 (default) is inductive.
        transductive_balance: Sinkhorn-balanced weights in those refinements (as
            ``ProtoNet(transductive_balance=True)``); needs ``transductive_steps > 0``.
        *args, **kwargs: as for ``MAML`` (``inner_lr``, ``inner_steps``, ``first_order``,
            ``adapt``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        temperature: float = 1.0,
        transductive_steps: int = 0,
        transductive_balance: bool = False,
        **kwargs: Any,
    ):
        features, head = getattr(model, "features", None), getattr(model, "head", None)
        if not isinstance(features, nn.Module) or not isinstance(head, nn.Linear):
            raise ValueError(
                "ProtoMAML needs a model computing head(features(x)) with a `features` module "
                f"and an nn.Linear `head` (e.g. Conv4 with ways set); {type(model).__name__} "
                f"has features={type(features).__name__}, head={type(head).__name__}"
            )
        if head.bias is None:
            raise ValueError("ProtoMAML's head needs a bias (b_k = -||c_k||^2 / tau)")
        if not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        check_transductive_steps(transductive_steps)
        check_transductive_balance(transductive_balance, transductive_steps)
        if kwargs.get("vectorize") == "vmap":
            raise ValueError(
                "ProtoMAML reads the number of ways from each task's labels (a data-dependent "
                "shape), which vmap cannot batch: use vectorize='loop' (the default) or 'auto'"
            )
        kwargs["vectorize"] = "loop"
        for p in head.parameters():
            p.requires_grad_(False)  # replaced by the prototype head in every task
        super().__init__(model, *args, **kwargs)
        self.temperature = float(temperature)
        self.transductive_steps = transductive_steps
        self.transductive_balance = transductive_balance
        if self.transductive and not self.classification:
            raise ValueError(
                "transductive_steps needs a classification loss ('cross_entropy'), "
                f"got {self.loss_name!r}"
            )

    @property
    def transductive(self) -> bool:
        return super().transductive or self.transductive_steps > 0

    #: the batch's number of ways while a compiled meta-step runs (``meta_loss``), else None
    _static_ways: int | None = None

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """MAML's meta-loss.  With ``compile`` the number of ways is read from the batch
        here, outside the compiled ``torch.func.grad``: read from the labels inside it
        (``int(y.max())``, a data-dependent value) it breaks dynamo's graph, and the
        compiled step fails.  Compiled graphs are then specialised to the batch's ways."""
        if self.speed.compile_options is None:
            return super().meta_loss(batch)
        self._static_ways = infer_ways(batch.support_y, batch.ways)
        try:
            return super().meta_loss(batch)
        finally:
            self._static_ways = None

    def task_init(
        self, params: Params, buffers: Params, sx: Tensor, sy: Tensor, context: Tensor | None = None
    ) -> Params:
        """``theta_0`` with ``head.weight = 2 c / tau`` and ``head.bias = -||c||^2 / tau``.

        With ``context`` (the task's unlabelled inputs, transductive evaluation) the support
        is embedded together with it, as in the inner loop's joint forward, and the
        prototypes take ``transductive_steps`` soft k-means steps towards it."""
        n_support = sx.shape[0]
        inputs = sx if context is None else torch.cat([sx, context])
        z = call(self.model.features, _body(params), _body(buffers), inputs).flatten(1)
        z_support, z_context = z[:n_support].unsqueeze(0), z[n_support:].unsqueeze(0)
        ways, labels = infer_ways(sy, self._static_ways), sy.unsqueeze(0)
        prototypes = class_means(z_support, labels, ways)  # [1, ways, D]
        if context is not None:
            for _ in range(self.transductive_steps):
                prototypes = soft_kmeans_step(
                    prototypes,
                    z_support,
                    labels,
                    z_context,
                    self._prototype_logits,
                    self.transductive_balance,
                )
        prototypes = prototypes[0]
        return {
            **params,
            "head.weight": 2.0 * prototypes / self.temperature,
            "head.bias": -(prototypes * prototypes).sum(-1) / self.temperature,
        }

    def _prototype_logits(self, z: Tensor, prototypes: Tensor) -> Tensor:
        """``-||z - c_k||^2 / tau``: the head's logits up to a per-row constant."""
        return -squared_euclidean(z, prototypes) / self.temperature

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, "
            + (f"transductive_steps={self.transductive_steps}, " if self.transductive_steps else "")
            + ("transductive_balance=True, " if self.transductive_balance else "")
            + super().extra_repr()
        )


def _body(tensors: Params) -> Params:
    """The ``features.*`` entries, named as inside ``model.features``."""
    return {k.removeprefix("features."): v for k, v in tensors.items() if k.startswith("features.")}


__all__ = ["ProtoMAML"]
