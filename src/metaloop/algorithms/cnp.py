"""Conditional Neural Process (Garnelo et al. 2018): a black-box learner.

There is no inner loop.  The learner *reads* a task's support set and predicts its queries
in one forward pass:

    r_i = h_theta([phi(x_i), e(y_i)])          every support pair, encoded
    r   = (1/S) sum_i r_i                      one task representation (order-free)
    out(x) = g_theta([phi(x), r])              every query, decoded

With ``aggregation="attention"`` (the deterministic path of the Attentive Neural Process,
Kim et al. 2019) each query reads its own representation instead of the mean,

    r(x) = sum_i softmax_i(<W_q phi(x), W_k phi(x_i)> / sqrt(R)) r_i,

so a query is decoded mostly from the support points that resemble it.

``phi`` is the ``encoder`` given (``nn.Identity()`` for vector inputs, a ``Conv4``
embedding for images), ``e(y)`` is ``y`` itself for regression and ``one_hot(y, ways)``
for classification, and ``h`` and ``g`` are MLPs.  The mean makes the prediction invariant
to the order of the support set and defined for any support size.

* Regression, ``likelihood="gaussian"`` (the paper's): ``g`` outputs a mean ``mu`` and a
  scale ``sigma = min_std + (1 - min_std) softplus(s)`` per target dimension; the meta-loss
  is the Gaussian negative log-likelihood ``-log N(y | mu, sigma^2)``, summed over target
  dimensions and averaged over points.  ``likelihood="deterministic"``: ``g`` outputs
  ``mu`` and the meta-loss is the task loss (MSE).
* Classification (``loss="cross_entropy"``): ``g`` outputs ``ways`` logits.

The predictor returned by ``adapt`` gives ``mu`` (or the logits), so evaluation scores the
task loss (MSE, cross-entropy and accuracy) exactly as for every other learner.  With
``support_in_loss`` (default, as in the paper, whose targets include the context points)
the meta-loss averages over the support and query points; otherwise over the queries.
``steps`` is accepted for protocol compatibility and ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

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
from metaloop.algorithms.registry import register
from metaloop.functional.losses import LossFn
from metaloop.models.mlp import MLP
from metaloop.tasks.base import Task, TaskBatch, TaskError
from metaloop.tasks.registry import TaskSpec
from metaloop.validate import is_int

Likelihood = Literal["gaussian", "deterministic"]


def gaussian_nll(mu: Tensor, sigma: Tensor, y: Tensor) -> Tensor:
    """``-log N(y | mu, sigma^2)`` summed over the last dimension, averaged over the rest:
    ``sum_d [log sigma_d + (y_d - mu_d)^2 / (2 sigma_d^2) + log(2 pi) / 2]``."""
    per_dim = torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2 + 0.5 * math.log(2 * math.pi)
    return per_dim.sum(-1).mean()


@register("cnp")
class ConditionalNeuralProcess(MetaLearner):
    """A CNP over ``encoder``'s features (see the module docstring for the equations).

    Args:
        encoder: ``phi``, applied to every input; ``nn.Identity()`` for vectors.  Its
            output, flattened after the batch dimension, must have ``x_dim`` features.
        x_dim: features of ``phi(x)``.
        y_dim: target dimension (regression) or ``ways`` (classification).
        representation: size of ``r`` (and of the attention keys).
        aggregation: ``"mean"`` (CNP) or ``"attention"`` (one representation per query).
        hidden: hidden layer sizes of both ``h`` and ``g``.
        likelihood: ``"gaussian"`` or ``"deterministic"`` for regression; classification
            always decodes logits (deterministic).
        loss: ``"mse"`` (regression) or ``"cross_entropy"`` (classification).
        min_std: the smallest ``sigma`` of the Gaussian likelihood, in (0, 1).
        support_in_loss: include the support points in the meta-loss.
    """

    #: the model is the encoder ``phi`` (``identity`` on raw vectors, a headless Conv4 ...)
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
        representation: int = 128,
        hidden: Sequence[int] = (128, 128, 128),
        likelihood: Likelihood = "gaussian",
        loss: str | LossFn = "mse",
        min_std: float = 0.1,
        support_in_loss: bool = True,
        aggregation: Literal["mean", "attention"] = "mean",
    ) -> None:
        super().__init__(loss)
        for name, value in (("x_dim", x_dim), ("y_dim", y_dim), ("representation", representation)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if likelihood not in ("gaussian", "deterministic"):
            raise ValueError(
                f"likelihood must be 'gaussian' or 'deterministic', got {likelihood!r}"
            )
        if aggregation not in ("mean", "attention"):
            raise ValueError(f"aggregation must be 'mean' or 'attention', got {aggregation!r}")
        if self.classification and likelihood == "gaussian":
            likelihood = "deterministic"  # classification: the decoder's logits are the model
        if not (isinstance(min_std, (int, float)) and 0 < min_std < 1):
            raise ValueError(f"min_std must lie in (0, 1), got {min_std!r}")
        self.encoder = encoder
        self.x_dim, self.y_dim, self.representation = x_dim, y_dim, representation
        self.likelihood: Likelihood = likelihood
        self.min_std = float(min_std)
        self.support_in_loss = bool(support_in_loss)
        outputs = 2 * y_dim if likelihood == "gaussian" else y_dim
        self.aggregation = aggregation
        self.context_net = MLP(x_dim + y_dim, representation, hidden=tuple(hidden))
        self.decoder = MLP(x_dim + representation, outputs, hidden=tuple(hidden))
        if aggregation == "attention":
            self.query_key = nn.Linear(x_dim, representation, bias=False)
            self.support_key = nn.Linear(x_dim, representation, bias=False)

    # -- the functional core: [T, N, ...] tensors in, [T, N, outputs] out --------------------

    def features(self, x: Tensor) -> Tensor:
        """``phi(x)`` for ``x [T, N, ...]`` -> ``[T, N, x_dim]`` (one encoder call)."""
        t, n = x.shape[:2]
        z = self.encoder(x.reshape(t * n, *x.shape[2:])).reshape(t, n, -1)
        if z.shape[-1] != self.x_dim:
            raise TaskError(
                f"the encoder gives {z.shape[-1]} features per input but the CNP was built "
                f"with x_dim={self.x_dim}: set x_dim to the encoder's output size"
            )
        return z

    def encode_targets(self, y: Tensor) -> Tensor:
        """``e(y)``: one-hot labels (classification) or the targets ``[T, N, y_dim]``."""
        if self.classification:
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.y_dim):
                raise TaskError(
                    f"labels must lie in 0..{self.y_dim - 1} (y_dim = ways = {self.y_dim}), "
                    f"got {int(y.min())}..{int(y.max())}"
                )
            return F.one_hot(y.long(), self.y_dim)
        if y.shape[-1] != self.y_dim:
            raise TaskError(
                f"targets have {y.shape[-1]} dimensions but the CNP was built with "
                f"y_dim={self.y_dim}"
            )
        return y

    def encode(self, zs: Tensor, ys: Tensor) -> Tensor:
        """``r_i = h([phi(x_i), e(y_i)])``: ``zs [T, S, x_dim]``, ``ys [T, S, ...]``
        -> ``[T, S, representation]``."""
        pairs = torch.cat([zs, self.encode_targets(ys).to(zs.dtype)], -1)
        return self.context_net(pairs)

    def aggregate(self, zq: Tensor, zs: Tensor, encoded: Tensor) -> Tensor:
        """The representation each query reads, ``[T, Q, representation]``: the mean of
        the support encodings, or their attention-weighted sum."""
        if self.aggregation == "mean":
            return encoded.mean(1, keepdim=True).expand(-1, zq.shape[1], -1)
        scores = self.query_key(zq) @ self.support_key(zs).transpose(1, 2)
        weights = torch.softmax(scores / math.sqrt(self.representation), -1)  # [T, Q, S]
        return weights @ encoded

    def decode(self, zq: Tensor, r: Tensor) -> tuple[Tensor, Tensor | None]:
        """``g([phi(x), r(x)])`` -> ``(mu or logits [T, Q, y_dim], sigma or None)``."""
        out = self.decoder(torch.cat([zq, r], -1))
        if self.likelihood == "deterministic":
            return out, None
        mu, raw = out.split(self.y_dim, -1)
        return mu, self.min_std + (1 - self.min_std) * F.softplus(raw)

    def predict(self, zs: Tensor, ys: Tensor, zq: Tensor) -> tuple[Tensor, Tensor | None]:
        """Support features and targets, query features (all ``[T, N, ...]``) -> the
        decoded queries: the whole learner as one function."""
        return self.decode(zq, self.aggregate(zq, zs, self.encode(zs, ys)))

    # -- the protocol ----------------------------------------------------------------------

    def _batch_features(self, batch: TaskBatch) -> tuple[Tensor, int]:
        """``phi`` of every support and query input, ``[T, S + Q, x_dim]`` (one encoder
        call), and ``S``."""
        return self.features(torch.cat([batch.support_x, batch.query_x], 1)), batch.support_x.shape[
            1
        ]

    def _forward(self, batch: TaskBatch) -> tuple[Tensor, Tensor | None, Tensor]:
        """Predictions for the query points (and the support points with
        ``support_in_loss``) of every task, with their targets."""
        z, s = self._batch_features(batch)
        if self.support_in_loss:
            targets = torch.cat([batch.support_y, batch.query_y], 1)
            mu, sigma = self.predict(z[:, :s], batch.support_y, z)
        else:
            targets = batch.query_y
            mu, sigma = self.predict(z[:, :s], batch.support_y, z[:, s:])
        return mu, sigma, targets

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        mu, sigma, targets = self._forward(batch)
        if sigma is not None:
            loss = gaussian_nll(mu, sigma, targets)
            mse = F.mse_loss(mu.detach(), targets)
            return loss, {"loss": float(loss.detach()), "mse": float(mse)}
        if self.classification:  # cross-entropy over [points, ways] rows
            loss = self.loss_fn(mu.reshape(-1, self.y_dim), targets.reshape(-1))
        else:
            loss = self.loss_fn(mu, targets)
        return loss, {"loss": float(loss.detach())}

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        """Read the support set once; the predictor decodes queries ``[Q, ...]``."""
        x, y = as_support(support)
        zs, ys = self.features(x.unsqueeze(0)), y.unsqueeze(0)
        encoded = self.encode(zs, ys)

        def predict(query_x: Tensor) -> Tensor:
            zq = self.features(query_x.unsqueeze(0))
            return self.decode(zq, self.aggregate(zq, zs, encoded))[0].squeeze(0)

        return predict

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """Per-task query metrics from one forward pass over the batch (``steps`` ignored:
        every requested count reports the same numbers)."""
        z, s = self._batch_features(batch)
        prediction, _ = self.predict(z[:, :s], batch.support_y, z[:, s:])
        per_task: dict[str, list[Tensor]] = {}
        for p, y in zip(prediction, batch.query_y):
            for k, v in self.query_metrics(p, y).items():
                per_task.setdefault(k, []).append(v)
        metrics = {k: torch.stack(v) for k, v in per_task.items()}
        return {step: metrics for step in (tuple(steps) if steps else self.default_eval_steps)}

    def extra_repr(self) -> str:
        return (
            f"x_dim={self.x_dim}, y_dim={self.y_dim}, representation={self.representation}, "
            f"aggregation={self.aggregation}, likelihood={self.likelihood}, loss={self.loss_name}"
        )


__all__ = ["ConditionalNeuralProcess", "gaussian_nll"]
