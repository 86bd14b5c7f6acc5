"""The shared shell of the black-box sequence learners (transformer, LSTM, SNAIL).

A sequence learner has no inner loop: it reads a task's support pairs and predicts every
query in one forward pass,

    prediction(x_q) = f_theta( [(phi(x_1), e(y_1)), ..., (phi(x_S), e(y_S))], phi(x_q) ),

where ``phi`` is any input encoder (``nn.Identity()`` for vectors, a ``Conv4`` embedding
for images) and ``e(y)`` is the target itself (regression) or ``one_hot(y, ways)``
(classification).  Each query is predicted from the support set alone, never from the
other queries, so a prediction does not depend on which other queries share the batch.
What ``f_theta`` does with the support sequence (attention without order, a recurrence, or
causal convolutions and attention) is the subclass's ``predict``.

The meta-loss is the task loss of the query predictions (MSE, or cross-entropy over
``ways`` logits), averaged over the queries of all tasks.  With ``min_support = m``,
training reads only a random prefix of ``L ~ U{m, ..., S}`` support points per
meta-batch (one length for the whole batch), so one learner serves every shot count from
``m`` to ``S`` at test time (the random context sizes of Garnelo et al. 2018).  With
``shuffle_support``, training reads each task's support pairs in a fresh random order, so
an order-dependent learner (LSTM, SNAIL) must read the labels rather than learn which
label sits at which position (episode samplers list the support set class by class).
``steps`` in ``adapt`` / ``evaluate_batch`` is accepted for the protocol and ignored.

Classification with ``y_dim = ways`` reads ``W``-way tasks for any ``W <= ways``: labels
``0..W-1`` fill the first ``W`` slots of the one-hot and only the first ``W`` logits are
returned, so the softmax runs over the task's own classes (a learner trained 20-way can be
tested 5-way).  A task with more classes than ``ways`` is refused with a one-line error:
its labels have no slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.base import (
    MetaLearner,
    Predictor,
    StepMetrics,
    as_support,
    encoder_io_defaults,
)
from metaloop.functional.losses import LossFn
from metaloop.tasks.base import Task, TaskBatch, TaskError
from metaloop.tasks.registry import TaskSpec
from metaloop.validate import is_int


def check_size(name: str, value: object) -> int:
    """A positive integer, or a one-line ``ValueError`` naming ``name``."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_similarity_init(value: object) -> float:
    """A positive number (the key = query init scale), or a one-line ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"similarity_init must be a number, got {value!r}")
    if not value > 0:
        raise ValueError(f"similarity_init must be > 0, got {value!r}")
    return float(value)


class SequenceLearner(MetaLearner):
    """Base of the black-box sequence learners (see the module docstring).

    Args:
        encoder: ``phi``; its output, flattened after the batch dimension, has ``x_dim``
            features.
        x_dim: features of ``phi(x)``.
        y_dim: target dimension (regression) or ``ways`` (classification).
        loss: ``"mse"`` or ``"cross_entropy"``.
        min_support: train on random support prefixes of at least this many points
            (``None``: always the whole support set).
        channels_last: lay the encoder's 4-D (convolution) weights out channels-last
            (identical numbers up to float rounding; faster convolutions on the CPU).
        shuffle_support: while training, read each task's support set in a random order.
    """

    model_role = "embedding"

    @classmethod
    def config_defaults(
        cls, spec: TaskSpec, model: nn.Module, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Sizes and loss from the encoder and the family (``encoder_io_defaults``)."""
        return encoder_io_defaults(spec, model)

    def __init__(
        self,
        encoder: nn.Module,
        x_dim: int,
        y_dim: int,
        loss: str | LossFn = "mse",
        min_support: int | None = None,
        channels_last: bool = False,
        shuffle_support: bool = False,
    ) -> None:
        super().__init__(loss)
        self.x_dim = check_size("x_dim", x_dim)
        self.y_dim = check_size("y_dim", y_dim)
        if min_support is not None:
            check_size("min_support", min_support)
        self.min_support = min_support
        for name, flag in (("channels_last", channels_last), ("shuffle_support", shuffle_support)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        if channels_last:
            encoder.to(memory_format=torch.channels_last)
        self.shuffle_support = shuffle_support
        self.encoder = encoder

    # -- inputs ------------------------------------------------------------------------------

    def features(self, x: Tensor) -> Tensor:
        """``phi(x)`` for ``x [T, N, ...]`` -> ``[T, N, x_dim]``.

        Training makes one encoder call for the whole meta-batch (an encoder with batch
        statistics, such as ``Conv4(norm="batch_episode")``, then pools the meta-batch's
        images); evaluation (``eval()`` mode) makes one call per task, so a task's
        predictions never depend on the other tasks evaluated beside it."""
        if x.dim() < 3:
            raise TaskError(
                f"inputs must be [tasks, points, features...], got shape {tuple(x.shape)}"
            )
        t, n = x.shape[:2]
        if self.training or t == 1:
            z = self.encoder(x.reshape(t * n, *x.shape[2:])).reshape(t, n, -1)
        else:
            z = torch.stack([self.encoder(task).reshape(n, -1) for task in x])
        if z.shape[-1] != self.x_dim:
            raise TaskError(
                f"the encoder gives {z.shape[-1]} features per input but the learner was built "
                f"with x_dim={self.x_dim}: set x_dim to the encoder's output size"
            )
        return z

    def task_ways(self, *labels: Tensor) -> int:
        """Classes of a classification batch (labels ``0..W-1`` among ``labels``), checked
        against the ``ways = y_dim`` the learner was built for (module docstring)."""
        for y in labels:
            if y.is_floating_point():
                raise TaskError(f"classification labels must be integers, got {y.dtype}")
        ways = max(int(y.max()) + 1 for y in labels if y.numel())
        if ways > self.y_dim:
            raise TaskError(
                f"the task is {ways}-way but this learner reads at most {self.y_dim}-way tasks "
                f"(y_dim = ways it was built for): evaluate with ways <= {self.y_dim} or train "
                f"with task.ways = {ways}"
            )
        return ways

    def encode_targets(self, y: Tensor, dtype: torch.dtype) -> Tensor:
        """``e(y)``: one-hot labels (classification) or the targets, ``[T, S, y_dim]``."""
        if self.classification:
            if y.is_floating_point():
                raise TaskError(f"classification labels must be integers, got {y.dtype}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.y_dim):
                raise TaskError(
                    f"labels must lie in 0..{self.y_dim - 1} (y_dim = ways = {self.y_dim}), "
                    f"got {int(y.min())}..{int(y.max())}"
                )
            return F.one_hot(y.long(), self.y_dim).to(dtype)
        if y.dim() != 3 or y.shape[-1] != self.y_dim:
            raise TaskError(
                f"regression targets must be [tasks, points, y_dim={self.y_dim}], "
                f"got shape {tuple(y.shape)}"
            )
        return y.to(dtype)

    # -- the model ---------------------------------------------------------------------------

    def predict(self, zs: Tensor, es: Tensor, zq: Tensor) -> Tensor:
        """Support features ``zs [T, S, x_dim]`` and encoded targets ``es [T, S, y_dim]``,
        query features ``zq [T, Q, x_dim]`` -> outputs ``[T, Q, y_dim]``."""
        raise NotImplementedError

    def forward_task(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int | None = None
    ) -> Tensor:
        """The whole learner as one function of ``[T, N, ...]`` tensors; a classification
        task has ``ways`` classes (``None``: those of the support labels)."""
        if support_x.shape[:2] != support_y.shape[:2]:
            raise TaskError(
                f"support inputs {tuple(support_x.shape)} and targets {tuple(support_y.shape)} "
                "disagree on the number of tasks or points"
            )
        s = support_x.shape[1]
        if s < 1:
            raise TaskError("the support set is empty: a sequence learner needs >= 1 point")
        if not self.classification:
            ways = self.y_dim
        elif ways is None:
            ways = self.task_ways(support_y)
        z = self.features(torch.cat([support_x, query_x], 1))
        out = self.predict(z[:, :s], self.encode_targets(support_y, z.dtype), z[:, s:])
        return out[..., :ways]  # a W-way task's logits: its own W classes

    def _loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.classification:
            return self.loss_fn(prediction.reshape(-1, prediction.shape[-1]), target.reshape(-1))
        return self.loss_fn(prediction, target)

    def shuffled(self, sx: Tensor, sy: Tensor) -> tuple[Tensor, Tensor]:
        """The support pairs of each task in its own random order (torch's global RNG)."""
        t, s = sx.shape[:2]
        order = torch.rand(t, s).argsort(1).to(sx.device)
        pick_x = order.view(t, s, *[1] * (sx.dim() - 2)).expand_as(sx)
        pick_y = order.view(t, s, *[1] * (sy.dim() - 2)).expand_as(sy)
        return sx.gather(1, pick_x), sy.gather(1, pick_y)

    # -- the protocol ------------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        sx, sy = batch.support_x, batch.support_y
        ways = self.task_ways(sy, batch.query_y) if self.classification else None
        if self.shuffle_support and self.training:
            sx, sy = self.shuffled(sx, sy)
        if self.min_support is not None and self.training and self.min_support < sx.shape[1]:
            length = int(torch.randint(self.min_support, sx.shape[1] + 1, ()))
            sx, sy = sx[:, :length], sy[:, :length]
        prediction = self.forward_task(sx, sy, batch.query_x, ways)  # a prefix may miss a class
        loss = self._loss(prediction, batch.query_y)
        metrics = {"loss": float(loss.detach())}
        if self.classification:
            hits = prediction.detach().argmax(-1) == batch.query_y
            metrics["accuracy"] = float(hits.double().mean())
        return loss, metrics

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        """Read the support set; the predictor maps queries ``[Q, ...]`` to ``[Q, y_dim]``."""
        x, y = as_support(support)

        def predictor(query_x: Tensor) -> Tensor:
            return self.forward_task(x.unsqueeze(0), y.unsqueeze(0), query_x.unsqueeze(0))[0]

        return predictor

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """Per-task query metrics from one forward pass (every step count reports the same)."""
        ways = self.task_ways(batch.support_y, batch.query_y) if self.classification else None
        prediction = self.forward_task(batch.support_x, batch.support_y, batch.query_x, ways)
        per_task: dict[str, list[Tensor]] = {}
        for p, y in zip(prediction, batch.query_y):
            for k, v in self.query_metrics(p, y).items():
                per_task.setdefault(k, []).append(v)
        metrics = {k: torch.stack(v) for k, v in per_task.items()}
        return {s: metrics for s in (tuple(steps) if steps else self.default_eval_steps)}

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, y_dim={self.y_dim}, loss={self.loss_name}"


__all__ = ["SequenceLearner", "check_similarity_init", "check_size"]
