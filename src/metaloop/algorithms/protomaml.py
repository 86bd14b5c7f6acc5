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
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metaloop.algorithms.maml import MAML
from metaloop.algorithms.metric import class_means, infer_ways
from metaloop.functional.params import Params, call


class ProtoMAML(MAML):
    """MAML with the output layer initialised from support prototypes (see module doc).

    Args:
        model: ``nn.Module`` with ``features`` (body) and ``head`` (``nn.Linear``) submodules.
        temperature: ``tau`` of the prototype logits (default 1, ProtoNet's squared
            Euclidean distance).
        *args, **kwargs: as for ``MAML`` (``inner_lr``, ``inner_steps``, ``first_order``,
            ``adapt``, ...).
    """

    def __init__(self, model: nn.Module, *args: Any, temperature: float = 1.0, **kwargs: Any):
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

    def task_init(
        self, params: Params, buffers: Params, sx: Tensor, sy: Tensor, context: Tensor | None = None
    ) -> Params:
        """``theta_0`` with ``head.weight = 2 c / tau`` and ``head.bias = -||c||^2 / tau``.

        With ``context`` (the task's unlabelled inputs, transductive fine-tuning) the support
        is embedded together with it, as in the inner loop's joint forward."""
        inputs = sx if context is None else torch.cat([sx, context])
        z = call(self.model.features, _body(params), _body(buffers), inputs)
        z = z[: sx.shape[0]].flatten(1)
        ways = infer_ways(sy)
        prototypes = class_means(z.unsqueeze(0), sy.unsqueeze(0), ways)[0]  # [ways, D]
        return {
            **params,
            "head.weight": 2.0 * prototypes / self.temperature,
            "head.bias": -(prototypes * prototypes).sum(-1) / self.temperature,
        }

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, " + super().extra_repr()


def _body(tensors: Params) -> Params:
    """The ``features.*`` entries, named as inside ``model.features``."""
    return {k.removeprefix("features."): v for k, v in tensors.items() if k.startswith("features.")}


__all__ = ["ProtoMAML"]
