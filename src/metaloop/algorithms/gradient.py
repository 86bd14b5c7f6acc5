"""Shared shell of the gradient-based learners (MAML and its relatives).

A ``GradientMetaLearner`` adapts any ``nn.Module`` with the inner loop
``theta_{t+1} = theta_t + update(grad L_support(theta_t))`` (``update``: a composable
``functional.optim`` transform).  Subclasses change only what differs: the inner optimizer
(Meta-SGD, LSLR, learned rule), which parameters adapt (ANIL), ``theta_0`` (Proto-MAML),
the meta-loss (Reptile).  Execution (remat, compile, vmap guards) is ``functional.executor``;
transductive fine-tuning is ``algorithms.transductive``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metaloop.algorithms.base import (
    MetaLearner,
    NoEmbeddingError,
    Predictor,
    StepMetrics,
    as_support,
)
from metaloop.algorithms.metric import encoder_embedding
from metaloop.algorithms.transductive import (
    check_entropy_weight,
    mean_entropy,
    transductive_predictions,
    transductive_predictor,
)
from metaloop.functional import executor
from metaloop.functional.batching import VectorizePolicy, has_convolution, map_tasks
from metaloop.functional.inner import GradientMode, InnerLoop, TaskLoss
from metaloop.functional.losses import LossFn, accuracy
from metaloop.functional.optim import InnerOptimizer
from metaloop.functional.params import Params, call, detach, name_filter, split_module
from metaloop.functional.speed import SpeedOptions
from metaloop.models.norm import PerStepBatchNorm2d, set_norm_step
from metaloop.tasks.base import Task, TaskBatch

__all__ = ["GradientMetaLearner", "mean_entropy"]


class GradientMetaLearner(MetaLearner):
    """Common machinery: inner loop, task batching, evaluation at several step counts.

    Args (each also accepted grouped: ``inner=InnerLoop(...)``, ``speed=SpeedOptions(...)``):
        model: any ``nn.Module`` mapping inputs to predictions.
        inner_lr, inner_steps, eval_steps, inner_optimizer (a name, ``"sgd"``,
            ``"momentum"``, ``"adam"``, with ``inner_optimizer_kwargs``, or an
            ``InnerOptimizer``), adapt: the inner loop (``functional.inner.InnerLoop``).
        loss: ``"mse"``, ``"cross_entropy"`` or a callable ``(prediction, target) -> scalar``.
        vectorize, chunk_size, compile, checkpoint, autocast, channels_last, fuse_forward:
            execution (``functional.speed.SpeedOptions``; ``docs/performance.md``).
        transductive_entropy: ``lambda >= 0`` of transductive fine-tuning at test time
            (classification only; default 0, off; ``algorithms.transductive``).
        support_transform: inner-loop data augmentation, ``(x_s, y_s) -> (x_s', y_s')`` on
            a batch's support tensors ``[T, S, ...]`` (``tasks.augment``), applied before
            every inner loop (``meta_loss``, ``evaluate_batch``, ``adapt``); queries untouched.

    Per-step normalization (MAML++ "BNWB", a ``PerStepBatchNorm2d`` in the model): row ``k``
    for the support forward of inner step ``k``, row ``K`` for the query after ``K`` steps.
    """

    gradient_mode: GradientMode = "second_order"
    #: the fewest inner steps this learner trains with
    min_inner_steps: int = 1

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        loss: str | LossFn = "mse",
        inner_optimizer: str | InnerOptimizer = "sgd",
        inner_optimizer_kwargs: dict[str, Any] | None = None,
        adapt: str | Sequence[str] | None = None,
        eval_steps: int | None = None,
        vectorize: str = "auto",
        chunk_size: int | None = None,
        compile: bool | dict[str, Any] = False,
        checkpoint: bool = False,
        autocast: str | torch.dtype | None = None,
        channels_last: bool = False,
        fuse_forward: bool | str = False,
        transductive_entropy: float = 0.0,
        *,
        inner: InnerLoop | None = None,
        speed: SpeedOptions | None = None,
        support_transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        super().__init__(loss)
        self.inner = inner or InnerLoop(
            inner_lr, inner_steps, eval_steps, inner_optimizer, inner_optimizer_kwargs or {},
            adapt, self.min_inner_steps,
        )  # fmt: skip
        self.speed = speed or SpeedOptions(
            compile, checkpoint, autocast, channels_last, fuse_forward, vectorize, chunk_size
        )
        self.transductive_entropy = check_entropy_weight(
            transductive_entropy, self.classification, loss
        )
        self.model = model
        self.adapt_names = name_filter(model, self.inner.adapt)
        self.policy = VectorizePolicy(self.speed.vectorize, loop_on_cpu=has_convolution(model))
        #: whether the model has per-step batch norm, whose row the learner selects
        self.per_step_norm = any(isinstance(m, PerStepBatchNorm2d) for m in model.modules())
        if support_transform is not None and not callable(support_transform):
            raise ValueError(f"support_transform must be callable, got {support_transform!r}")
        self.support_transform = support_transform

    # -- options -------------------------------------------------------------------------
    inner_steps = property(lambda self: self.inner.steps)
    eval_steps = property(lambda self: self.inner.eval_steps)
    inner_optimizer_name = property(lambda self: self.inner.optimizer_name)
    inner_optimizer_kwargs = property(lambda self: self.inner.optimizer_kwargs)
    # settable: a named optimizer is rebuilt from ``inner_lr`` at every use
    inner_lr = property(lambda self: self.inner.lr, lambda self, v: setattr(self.inner, "lr", v))
    chunk_size = property(
        lambda self: self.speed.chunk_size, lambda self, v: setattr(self.speed, "chunk_size", v)
    )

    #: the inner optimizer, ``inner.current_optimizer()``: a factory such as Meta-SGD's sets
    #: its own with ``self.inner.use(fn, *args)`` (``functional.inner.InnerLoop.use``)
    inner_optimizer = property(lambda self: self.inner.current_optimizer())

    def set_norm_row(self, step: int) -> None:
        """Select affine row ``step`` of the model's per-step batch norm (no-op without)."""
        if self.per_step_norm:
            set_norm_step(self.model, step)

    @property
    def default_eval_steps(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.eval_steps,)

    @property
    def transductive(self) -> bool:
        """Whether evaluation adapts each task with its unlabelled queries (one joint
        forward of support and queries, ``algorithms.transductive``)."""
        return self.transductive_entropy > 0

    # -- functional core -----------------------------------------------------------------
    def task_init(
        self, params: Params, buffers: Params, sx: Tensor, sy: Tensor, context: Tensor | None = None
    ) -> Params:
        """``theta_0`` of one task's inner loop; the meta-parameters by default.  It must stay
        differentiable in ``params`` and is called in every path (Proto-MAML overrides it).
        ``context``: the task's unlabelled inputs under transductive evaluation, else ``None``.
        """
        return params

    def task_loss(self, buffers: Params) -> TaskLoss:
        """``(params, x, y) -> L(f_params(x), y)`` for this learner's model."""
        model, loss_fn = self.model, self.loss_fn

        def loss(params: Params, x: Tensor, y: Tensor, bufs: Params | None = None) -> Tensor:
            # the inner loop passes the buffers back in as ``bufs`` (see inner_steps_iter)
            return loss_fn(call(model, params, buffers if bufs is None else bufs, x), y)

        return loss

    def adapt_params(
        self, params: Params, buffers: Params, x: Tensor, y: Tensor, steps: int,
        mode: GradientMode | None = None, *, remat_steps: bool = False, backend: str = "func",
    ) -> Params:  # fmt: skip
        """``theta_K`` after ``steps`` inner steps on ``(x, y)`` from ``params`` (executed by
        ``functional.executor.run_inner``; ``checkpoint=True`` rematerializes every step)."""
        return executor.run_inner(
            self.task_loss(buffers), params, buffers, x, y, self.inner_optimizer, steps,
            mode or self.gradient_mode, self.adapt_names, backend=backend,  # type: ignore[arg-type]
            remat_steps=remat_steps or self.speed.checkpoint,
            model=self.model, per_step_norm=self.per_step_norm,
        )  # fmt: skip

    def query_loss_per_task(self, batch: TaskBatch, mode: GradientMode) -> tuple[Tensor, Tensor]:
        """Per-task query loss and accuracy after ``inner_steps`` steps, shape ``[T]`` each."""
        run = self.speed.wrap(self, f"query_loss/{mode}", type(self)._query_losses)
        return run(batch.support_x, batch.support_y, batch.query_x, batch.query_y, mode)

    def _query_losses(
        self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, mode: GradientMode,
        in_transform: bool = False,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        params, buffers = split_module(self.model)
        model, loss_fn, steps = self.model, self.loss_fn, self.inner_steps
        classification = self.classification
        guard = executor.remat_guard(mode, self.policy, model, sx.device, self.speed)
        plain_init = type(self).task_init is GradientMetaLearner.task_init
        backend = executor.inner_backend(self.policy, sx.device, in_transform, plain_init)

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            start = self.task_init(params, buffers, sx, sy)
            adapted = self.adapt_params(
                start, buffers, sx, sy, steps, mode, remat_steps=guard, backend=backend
            )
            self.set_norm_row(steps)
            adapted, qx = self.speed.query_layout(adapted, qx)
            prediction = call(model, adapted, buffers, qx)
            loss = loss_fn(prediction, qy)
            acc = accuracy(prediction, qy) if classification else torch.zeros_like(loss)
            return loss, acc

        return map_tasks(per_task, sx, sy, qx, qy, policy=self.policy, chunk_size=self.chunk_size)

    def metrics(
        self, loss: Tensor, per_task_loss: Tensor, per_task_acc: Tensor
    ) -> dict[str, float]:
        out = {"loss": float(loss.detach()), "query_loss": float(per_task_loss.detach().mean())}
        if self.classification:
            out["accuracy"] = float(per_task_acc.detach().mean())
        return out

    def forward(
        self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, mode: GradientMode | None = None,
        in_transform: bool = False,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Per-task query loss and accuracy ``[T]``: ``meta_loss``'s core, as ``forward`` so that
        ``functional_call`` runs it with substituted parameters (``compile=True``)."""
        return self._query_losses(sx, sy, qx, qy, mode or self.gradient_mode, in_transform)

    # -- protocol ------------------------------------------------------------------------
    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """``(1/T) sum_i L_query_i(theta_K^i)`` differentiated per ``gradient_mode``."""
        batch, mode = self.augment_support(batch), self.gradient_mode
        args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        compiled = executor.compiled_meta_loss(
            self, self.speed, self.policy, self.model, args, mode
        )
        if compiled is not None:
            loss, losses, accs = compiled
            return loss, self.metrics(loss, losses, accs)
        losses, accs = self.query_loss_per_task(batch, mode)
        return losses.mean(), self.metrics(losses.mean(), losses, accs)

    def augment_support(self, batch: TaskBatch) -> TaskBatch:
        """``batch`` with ``support_transform`` applied to its support sets (as is without)."""
        if self.support_transform is None:
            return batch
        sx, sy = self.support_transform(batch.support_x, batch.support_y)
        return TaskBatch(sx, sy, batch.query_x, batch.query_y, batch.ways, batch.info)

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        (x, y), (params, buffers), model = as_support(support), split_module(self.model), self.model
        if self.support_transform is not None:
            x, y = (t.squeeze(0) for t in self.support_transform(x.unsqueeze(0), y.unsqueeze(0)))
        steps = self.eval_steps if steps is None else steps
        if self.transductive:  # the inner loop needs the task's unlabelled inputs
            return transductive_predictor(self, detach(params), buffers, x, y, steps)
        start = self.task_init(params, buffers, x, y)
        adapted = detach(self.adapt_params(start, buffers, x, y, steps, "first_order"))

        def predict(inputs: Tensor) -> Tensor:
            self.set_norm_row(steps)
            return call(model, adapted, buffers, inputs)

        return predict

    def embed(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``z = features(x)``: the model's features before its head (the image backbones,
        Conv4 and ResNet-12, compute ``head(features(x))``), unadapted; ``params``, named
        as the model's parameters (``adapt_params``'s output, say), replaces them (the
        ``head.*`` entries are not used).  A model without a ``features`` module raises
        ``NoEmbeddingError`` naming the learner and the model."""
        features = getattr(self.model, "features", None)
        if not isinstance(features, nn.Module):
            raise NoEmbeddingError(
                f"{type(self).__name__}'s model {type(self.model).__name__} has no `features` "
                "module before a head, so it has no embedding: use an image backbone (conv4, "
                "resnet12) or a metric learner"
            )
        self.set_norm_row(0)
        if params is None:
            return encoder_embedding(features, x)
        own = dict(self.model.named_parameters())
        unknown = sorted(set(params) - set(own))
        if unknown:
            raise ValueError(
                f"{type(self.model).__name__} has no parameter {unknown[0]!r}; its parameters "
                f"are: {', '.join(own)}"
            )
        prefix = "features."
        body = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        return encoder_embedding(features, x, body)

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """One inner loop per task up to ``max(steps)``; query metrics at each step count
        (``fuse_forward``: see ``functional.executor.predictions_at_steps``)."""
        steps = sorted(set(steps if steps is not None else self.default_eval_steps))
        if steps and steps[0] < 0:
            raise ValueError(f"evaluation step counts must be >= 0, got {steps}")
        batch = self.augment_support(batch)
        params, buffers = split_module(self.model)
        params = detach(params)
        model, loss_fn, classification = self.model, self.loss_fn, self.classification
        wanted, optimizer = set(steps), self.inner_optimizer
        fuse = self.speed.fuse_for(model) and not self.transductive

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            if self.transductive:
                every = transductive_predictions(self, params, buffers, sx, sy, qx, max(steps))
                predictions = [p for t, p in enumerate(every) if t in wanted]
            else:
                self.set_norm_row(0)
                start = self.task_init(params, buffers, sx, sy)
                predictions = list(executor.predictions_at_steps(
                    model, self.task_loss(buffers), loss_fn, start, buffers, sx, sy, qx,
                    optimizer, wanted, self.adapt_names, fuse=fuse,
                    per_step_norm=self.per_step_norm,
                ))  # fmt: skip
            losses = [loss_fn(p, qy) for p in predictions]
            accs = [accuracy(p, qy) if classification else loss * 0 for p, loss in zip(
                predictions, losses)]  # fmt: skip
            return torch.stack(losses), torch.stack(accs)

        losses, accs = map_tasks(
            per_task, batch.support_x, batch.support_y, batch.query_x, batch.query_y,
            policy=self.policy, chunk_size=self.chunk_size,
        )  # fmt: skip
        extra = (lambda j: {"accuracy": accs[:, j]}) if classification else (lambda j: {})
        return {s: {"loss": losses[:, j], **extra(j)} for j, s in enumerate(steps)}

    def extra_repr(self) -> str:
        speed = self.speed.describe()
        return (
            f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"mode={self.gradient_mode}, inner_optimizer={self.inner_optimizer_name}, "
            f"vectorize={self.policy.mode}, loss={self.loss_name}"
            + (f", {speed}" if speed else "")
            + (f", transductive_entropy={self.transductive_entropy}" if self.transductive else "")
        )
