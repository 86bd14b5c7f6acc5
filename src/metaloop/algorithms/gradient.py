"""Shared shell of the gradient-based learners (MAML and its relatives).

A ``GradientMetaLearner`` wraps any ``nn.Module`` and adapts it with the functional inner
loop of ``metaloop.functional``.  Subclasses change only what differs: which learning
rates the inner loop uses (Meta-SGD learns them), which parameters adapt (ANIL), and
how the adapted parameters become a meta-loss (MAML: query loss; Reptile: a surrogate).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from metaloop.algorithms.base import MetaLearner, Predictor, StepMetrics, as_support
from metaloop.functional.batching import VectorizePolicy, has_convolution, map_tasks
from metaloop.functional.checkpoint import remat
from metaloop.functional.inner import GradientMode, TaskLoss, inner_steps_iter
from metaloop.functional.losses import LossFn, accuracy
from metaloop.functional.optim import InnerOptimizer, LearningRate, apply_updates
from metaloop.functional.optim import by_name as make_inner_optimizer
from metaloop.functional.params import Params, call, detach, name_filter, split_module
from metaloop.functional.speed import (
    SpeedOptions,
    attach_gradient,
    updates_running_stats,
    vmap_batch_norm_hazard,
)
from metaloop.models.norm import PerStepBatchNorm2d, set_norm_step
from metaloop.tasks.base import Task, TaskBatch

_Item = TypeVar("_Item")


def mean_entropy(logits: Tensor) -> Tensor:
    """``(1/Q) sum_q H(softmax(logits_q))`` over the rows of ``logits [Q, C]`` (0 if empty)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def _meta_objective(
    trainable: Params,
    frozen: Params,
    buffers: Params,
    learner: GradientMetaLearner,
    sx: Tensor,
    sy: Tensor,
    qx: Tensor,
    qy: Tensor,
    mode: GradientMode,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The meta-loss as a pure function of the learner's parameters (``compile=True``)."""
    losses, accs = functional_call(
        learner, ({**trainable, **frozen}, buffers), (sx, sy, qx, qy, mode), strict=False
    )
    loss = losses.mean()
    return loss, (loss.detach(), losses.detach(), accs.detach())


#: ``(grads, (loss, per-task losses, per-task accuracies))``; compiled per learner
_META_GRAD = grad(_meta_objective, has_aux=True)


def _check_inner(inner_lr: float, inner_steps: int, *, allow_zero_steps: bool = False) -> None:
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int):
        raise ValueError(f"inner_steps must be an integer, got {inner_steps!r}")
    if inner_steps < (0 if allow_zero_steps else 1):
        raise ValueError(
            f"inner_steps must be >= {0 if allow_zero_steps else 1} for this algorithm, "
            f"got {inner_steps}"
        )
    if not isinstance(inner_lr, (int, float)) or not 0 < inner_lr < float("inf"):
        raise ValueError(f"inner_lr must be a positive finite number, got {inner_lr!r}")


class GradientMetaLearner(MetaLearner):
    """Common machinery: inner loop, task batching, evaluation at several step counts.

    Args:
        model: any ``nn.Module`` mapping inputs to predictions.
        inner_lr: inner learning rate ``alpha``.
        inner_steps: inner steps ``K`` during meta-training.
        loss: ``"mse"``, ``"cross_entropy"`` or a callable ``(prediction, target) -> scalar``.
        inner_optimizer: ``"sgd"``, ``"momentum"`` or ``"adam"`` (differentiated through),
            with ``inner_optimizer_kwargs`` passed on.
        adapt: which parameters the inner loop changes: ``None`` for all, a name prefix or a
            list of prefixes, or a predicate on names.
        eval_steps: inner steps at test time (default ``inner_steps``).
        vectorize: ``"auto"``, ``"vmap"`` or ``"loop"`` (see ``functional.batching``);
            ``"auto"`` runs convolutional models as a loop on the CPU, where that is faster.
        chunk_size: at most this many tasks in one vectorized call (bounds memory: the
            meta-step's peak memory scales with it; ``1`` is the minimum-memory setting).
        compile: ``torch.compile`` the meta-step (``True`` or a dict of ``torch.compile``
            options); falls back to eager with a warning if compilation fails.
        checkpoint: recompute each second-order inner step in the backward pass instead of
            storing its activations (memory grows much slower with ``inner_steps``).
        autocast: ``"bfloat16"`` (or ``"float16"`` on CUDA) to run the meta-step under
            ``torch.autocast``; parameters and gradients keep their dtype.
        channels_last: run the query forward channels-last (query images and adapted 4-D
            weights restrided; CPU/GPU convolutions).
        fuse_forward: in ``evaluate_batch``, run the query forward at ``theta_t`` and the
            support forward of the next step as one call (``"auto"``: only for models
            without batch-statistics normalization).
        transductive_entropy: ``lambda >= 0`` of transductive fine-tuning at test time
            (classification only; default 0, off); see below.
        See ``metaloop.functional.speed`` and ``docs/performance.md`` for these options.

    Transductive fine-tuning (Dhillon et al., "A Baseline for Few-Shot Image
    Classification", 2020).  With ``transductive_entropy = lambda > 0``, evaluation
    (``evaluate_batch``, ``adapt``) adapts each task on its support set *and* its unlabelled
    query inputs ``x_q``:

        L_inner(theta) = CE(f_theta(x_s), y_s) + lambda * (1/Q) sum_q H(softmax f_theta(x_q)),
        H(p) = -sum_k p_k log p_k,

    with support and queries in one forward pass (batch statistics of the whole episode),
    and scores the queries from that same joint forward, so a query's prediction depends
    on the other queries of its task.  Report such figures as transductive.  ``adapt``
    returns a predictor that runs the inner loop when it is given the task's inputs.
    Meta-training (``meta_loss``) is unchanged: the option is a test-time procedure.

    Per-step normalization (``norm="batch_per_step"``, MAML++ "BNWB").  When the model holds
    a ``PerStepBatchNorm2d`` the learner selects its affine row automatically, in every
    path (``meta_loss`` with either vectorization, ``checkpoint=True``, ``evaluate_batch``,
    ``adapt``): row ``k`` for the support forward of inner step ``k`` (``k = 0 .. K-1``)
    and row ``K`` for the query forward after ``K`` steps (rows past the last one clamp
    to it).  The row is a Python attribute of the layers, hence the same for all tasks of a
    batch; the learner sets it right before each forward (rematerialized steps set their
    own row when recomputed).  Models without such a layer run unchanged.
    """

    gradient_mode: GradientMode = "second_order"

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        loss: str | LossFn = "mse",
        inner_optimizer: str = "sgd",
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
    ) -> None:
        super().__init__(loss)
        _check_inner(inner_lr, inner_steps)
        if (
            isinstance(transductive_entropy, bool)
            or not isinstance(transductive_entropy, (int, float))
            or not 0 <= transductive_entropy < float("inf")
        ):
            raise ValueError(
                "transductive_entropy must be a finite number >= 0 (0 turns it off), "
                f"got {transductive_entropy!r}"
            )
        if transductive_entropy > 0 and not self.classification:
            raise ValueError(
                "transductive_entropy needs a classification loss ('cross_entropy'): the "
                f"query entropy is of class probabilities, but the loss is {loss!r}"
            )
        self.transductive_entropy = float(transductive_entropy)
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        if eval_steps is not None and (
            isinstance(eval_steps, bool) or not isinstance(eval_steps, int) or eval_steps < 0
        ):
            raise ValueError(f"eval_steps must be an integer >= 0 or None, got {eval_steps!r}")
        self.eval_steps = inner_steps if eval_steps is None else eval_steps
        self.inner_optimizer_name = inner_optimizer
        self.inner_optimizer_kwargs = dict(inner_optimizer_kwargs or {})
        make_inner_optimizer(inner_optimizer, self.inner_lr, **self.inner_optimizer_kwargs)
        self.adapt_names = name_filter(model, adapt)
        self.policy = VectorizePolicy(vectorize, loop_on_cpu=has_convolution(model))
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        self.chunk_size = chunk_size
        self.speed = SpeedOptions(
            compile=compile,
            checkpoint=checkpoint,
            autocast=autocast,
            channels_last=channels_last,
            fuse_forward=fuse_forward,
        )
        #: whether the model has per-step batch norm, whose row the learner selects
        self.per_step_norm = any(isinstance(m, PerStepBatchNorm2d) for m in model.modules())

    # -- per-step normalization ----------------------------------------------------------
    def set_norm_row(self, step: int) -> None:
        """Select affine row ``step`` of the model's per-step batch norm (no-op without)."""
        if self.per_step_norm:
            set_norm_step(self.model, step)

    def _norm_rows(self, inner: Iterator[_Item]) -> Iterator[_Item]:
        """``inner`` (an ``inner_steps_iter``) with the norm row of each forward selected.

        The generator runs the support forward of step ``t`` inside its ``next()`` after
        yielding ``theta_t``: so row ``0`` is set before the first ``next()``, and row ``t``
        right after ``theta_t`` arrives, which also serves a query forward at ``theta_t``
        made by the consumer before it asks for the next step.
        """
        set_norm_step(self.model, 0)
        for t, item in enumerate(inner, start=1):
            set_norm_step(self.model, t)
            yield item

    # -- pieces subclasses may override ------------------------------------------------
    def inner_learning_rates(self) -> LearningRate:
        """The inner learning rate(s); Meta-SGD returns learned per-parameter tensors."""
        return self.inner_lr

    def make_optimizer(self) -> InnerOptimizer:
        return self.optimizer_for(self.inner_learning_rates())

    def optimizer_for(self, lr: LearningRate) -> InnerOptimizer:
        """The inner optimizer with learning rate(s) ``lr`` (``checkpoint=True`` rebuilds it
        from rates passed in explicitly, so that learned rates get their meta-gradient)."""
        return make_inner_optimizer(self.inner_optimizer_name, lr, **self.inner_optimizer_kwargs)

    @property
    def default_eval_steps(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.eval_steps,)

    def task_init(
        self, params: Params, buffers: Params, sx: Tensor, sy: Tensor, context: Tensor | None = None
    ) -> Params:
        """``theta_0`` of one task's inner loop; the meta-parameters by default.

        Proto-MAML overrides it to initialise the output layer from the task's support
        prototypes.  It must stay differentiable in ``params`` (the meta-gradient flows
        through it) and is called in every path: ``meta_loss``, ``evaluate_batch``, ``adapt``.
        ``context`` holds the task's unlabelled inputs when they are normalised together
        with the support (transductive fine-tuning); ``None`` otherwise.
        """
        return params

    @property
    def transductive(self) -> bool:
        """Whether evaluation adapts each task together with its unlabelled queries (one
        joint forward of support and queries; see the class docstring)."""
        return self.transductive_entropy > 0

    # -- functional core -----------------------------------------------------------------
    def task_loss(self, buffers: Params) -> TaskLoss:
        """``(params, x, y) -> L(f_params(x), y)`` for this learner's model."""
        model, loss_fn = self.model, self.loss_fn

        def loss(params: Params, x: Tensor, y: Tensor, bufs: Params | None = None) -> Tensor:
            # the inner loop passes the buffers back in as ``bufs`` (see inner_steps_iter)
            return loss_fn(call(model, params, buffers if bufs is None else bufs, x), y)

        return loss

    def transductive_loss(self, buffers: Params) -> TaskLoss:
        """``(params, [x_s; x_q], y_s) -> CE(f(x_s), y_s) + lambda * mean_q H(f(x_q))``.

        One forward over support and queries; the rows after ``len(y_s)`` are the queries.
        """
        model, loss_fn, weight = self.model, self.loss_fn, self.transductive_entropy

        def loss(params: Params, x: Tensor, y: Tensor, bufs: Params | None = None) -> Tensor:
            out = call(model, params, buffers if bufs is None else bufs, x)
            n_support = y.shape[0]
            support_loss = loss_fn(out[:n_support], y)
            if weight == 0:  # joint normalization only (e.g. Proto-MAML's transductive init)
                return support_loss
            return support_loss + weight * mean_entropy(out[n_support:])

        return loss

    def _transductive_steps(
        self, params: Params, buffers: Params, sx: Tensor, sy: Tensor, qx: Tensor, steps: int
    ) -> Iterator[Tensor]:
        """Query predictions after 0 .. ``steps`` steps of transductive fine-tuning."""
        model, n_support, both = self.model, sx.shape[0], torch.cat([sx, qx])
        self.set_norm_row(0)
        start = self.task_init(params, buffers, sx, sy, context=qx)
        yield call(model, start, buffers, both)[n_support:]
        inner = inner_steps_iter(
            self.transductive_loss(buffers),
            start,
            both,
            sy,
            self.make_optimizer(),
            steps,
            "first_order",
            self.adapt_names,
            buffers=buffers,
        )
        if self.per_step_norm:
            inner = self._norm_rows(inner)
        for adapted, _ in inner:
            yield call(model, adapted, buffers, both)[n_support:]

    def adapt_params(
        self,
        params: Params,
        buffers: Params,
        x: Tensor,
        y: Tensor,
        steps: int,
        mode: GradientMode | None = None,
    ) -> Params:
        """``theta_K`` after ``steps`` inner steps on ``(x, y)`` from ``params``."""
        if (
            (self.speed.checkpoint or getattr(self, "_remat_inner", False))
            and (mode or self.gradient_mode) == "second_order"
            and torch.is_grad_enabled()
        ):
            return self._adapt_checkpointed(params, buffers, x, y, steps)
        adapted = params
        inner = inner_steps_iter(
            self.task_loss(buffers),
            params,
            x,
            y,
            self.make_optimizer(),
            steps,
            mode or self.gradient_mode,
            self.adapt_names,
            buffers=buffers,
            backend=self.__dict__.get("_inner_backend", "func"),
        )
        if self.per_step_norm:  # leaves row ``steps`` selected, for the query forward
            inner = self._norm_rows(inner)
        for adapted, _ in inner:  # noqa: B007 - the last value is the result
            pass
        return adapted

    def _adapt_checkpointed(
        self, params: Params, buffers: Params, x: Tensor, y: Tensor, steps: int
    ) -> Params:
        """Second-order inner loop with every step rematerialized (``checkpoint=True``).

        Same numbers as ``inner_steps_iter``; each step is a pure function of the adapted
        parameters, the optimizer state, the fixed parameters and the learning rates (all
        passed to ``remat`` so they all receive their meta-gradient).  With per-step batch
        norm the step's index is passed too (a static leaf): the recomputation in the
        backward pass selects its own norm row, whatever the layers hold by then.
        """
        if updates_running_stats(self.model):
            raise RuntimeError(self._BUFFER_MESSAGE)
        names = self.adapt_names
        fast = {k: params[k] for k in names}
        fixed = {k: v for k, v in params.items() if k not in fast}
        lrs = self.inner_learning_rates()
        state = self.optimizer_for(lrs).init(fast)
        task_loss = self.task_loss(buffers)
        versions = [b._version for b in buffers.values()]

        def step(
            fast: Params,
            state: Any,
            fixed: Params,
            lrs: Any,
            x: Tensor,
            y: Tensor,
            row: int | None = None,
        ):
            if row is not None:
                set_norm_step(self.model, row)
            grads = grad(lambda f: task_loss({**fixed, **f}, x, y))(fast)
            updates, state = self.optimizer_for(lrs).update(grads, state, fast)
            return apply_updates(fast, updates), state

        for k in range(steps):
            row = (k,) if self.per_step_norm else ()
            fast, state = remat(step, fast, state, fixed, lrs, x, y, *row)
        if [b._version for b in buffers.values()] != versions:
            raise RuntimeError(self._BUFFER_MESSAGE)
        self.set_norm_row(steps)  # for the query forward
        return {**fixed, **fast}

    _BUFFER_MESSAGE = (
        "checkpoint=True recomputes the inner steps, but this model updates its buffers in "
        "place (e.g. batch norm running statistics in training mode); use a normalization "
        "without running statistics (norm='batch_episode') or checkpoint=False"
    )

    def query_loss_per_task(self, batch: TaskBatch, mode: GradientMode) -> tuple[Tensor, Tensor]:
        """Per-task query loss and accuracy after ``inner_steps`` steps, shape ``[T]`` each."""
        run = self.speed.wrap(self, f"query_loss/{mode}", type(self)._query_losses)
        return run(batch.support_x, batch.support_y, batch.query_x, batch.query_y, mode)

    def _vmap_batch_norm_guard(self, mode: GradientMode, device: torch.device) -> bool:
        """Whether second-order steps must go through ``remat`` to be correct under vmap.

        PyTorch bug (functorch "batch_norm backward batching rule is incorrect"): when a
        batch norm layer normalises with batch statistics and its affine weight is
        adapted (so batched over tasks), differentiating *through* a vmapped inner
        gradient gives a wrong meta-gradient for the layers before it (float64, Conv4:
        0.7% to 15% off the loop engine and finite differences).  ``remat`` computes
        each step's vector-Jacobian product *inside* vmap, which is correct, so the
        engine routes second-order steps through it for such models (cost: one more
        support forward/backward per step in the backward pass).
        """
        return (
            mode == "second_order"
            and self.policy.uses_vmap_on(device)
            and torch.is_grad_enabled()
            and vmap_batch_norm_hazard(self.model)
        )

    def _query_losses(
        self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, mode: GradientMode
    ) -> tuple[Tensor, Tensor]:
        params, buffers = split_module(self.model)
        model, loss_fn, steps = self.model, self.loss_fn, self.inner_steps
        classification = self.classification

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            start = self.task_init(params, buffers, sx, sy)
            adapted = self.adapt_params(start, buffers, sx, sy, steps, mode)
            self.set_norm_row(steps)
            adapted, qx = self.speed.query_layout(adapted, qx)
            prediction = call(model, adapted, buffers, qx)
            loss = loss_fn(prediction, qy)
            acc = accuracy(prediction, qy) if classification else torch.zeros_like(loss)
            return loss, acc

        guard = self._vmap_batch_norm_guard(mode, sx.device)
        if guard and self.speed.autocast_dtype is not None:
            raise ValueError(
                "autocast with second-order vmap through batch norm is not supported (mixed "
                "dtypes in the rematerialized batch-norm double backward); use "
                "vectorize='loop' or no autocast"
            )
        if guard:
            self.__dict__["_remat_inner"] = True
        # A task run on its own, outside any torch.func transform, takes its inner gradients
        # with torch.autograd (same numbers, less overhead); vmap and compile need torch.func.
        # Only from the plain theta_0: autograd.grad would also follow paths *between* the
        # inputs (Proto-MAML's head is a function of the body), torch.func.grad does not.
        if (
            not self.policy.uses_vmap_on(sx.device)
            and not self.__dict__.get("_in_transform")
            and type(self).task_init is GradientMetaLearner.task_init
        ):
            self.__dict__["_inner_backend"] = "autograd"
        try:
            return map_tasks(
                per_task, sx, sy, qx, qy, policy=self.policy, chunk_size=self.chunk_size
            )
        finally:
            self.__dict__.pop("_remat_inner", None)
            self.__dict__.pop("_inner_backend", None)

    def metrics(
        self, loss: Tensor, per_task_loss: Tensor, per_task_acc: Tensor
    ) -> dict[str, float]:
        out = {"loss": float(loss.detach()), "query_loss": float(per_task_loss.detach().mean())}
        if self.classification:
            out["accuracy"] = float(per_task_acc.detach().mean())
        return out

    def forward(
        self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, mode: GradientMode | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-task query loss and accuracy ``[T]`` from the four tensors of a task batch.

        The functional core of ``meta_loss``; it is the module's ``forward`` so that
        ``torch.func.functional_call`` can run the whole meta-step with substituted
        parameters (which is how ``compile=True`` differentiates it).
        """
        return self._query_losses(sx, sy, qx, qy, mode or self.gradient_mode)

    def _meta_loss_compiled(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]] | None:
        """``compile=True``: the meta-gradient computed *in the forward call* by a compiled
        ``torch.func.grad`` of the whole meta-step (one forward-only graph: no autograd
        tape, no AOTAutograd backward), attached to the returned loss so that
        ``loss.backward()`` delivers it.  ``None`` when compilation is off or failed.

        Under the loop policy the compiled function is one task's meta-gradient, called per
        task, ``grad (1/T) sum_i L_i = (1/T) sum_i grad L_i``: one small graph compiled once
        instead of the meta-batch unrolled into one."""
        per_task = not self.policy.uses_vmap_on(batch.support_x.device)
        key = f"meta_grad{'/task' if per_task else ''}/{self.gradient_mode}"
        fn = self.speed.compiled(self, key, _META_GRAD)
        if fn is None:
            return None
        named = list(self.named_parameters())
        trainable = {n: p.detach() for n, p in named if p.requires_grad}
        frozen = {n: p.detach() for n, p in named if not p.requires_grad}
        buffers = dict(self.named_buffers())
        args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        chunks = (
            [tuple(a[i : i + 1] for a in args) for i in range(len(batch))] if per_task else [args]
        )
        self.__dict__["_in_transform"] = True
        try:
            with torch.no_grad(), self.speed.context(*args):
                parts = [
                    fn(trainable, frozen, buffers, self, *c, self.gradient_mode) for c in chunks
                ]
        except Exception as err:
            self.speed.compile_failed(key, err)
            return None
        finally:
            self.__dict__.pop("_in_transform", None)
        losses = torch.cat([aux[1] for _, aux in parts])
        accs = torch.cat([aux[2] for _, aux in parts])
        loss = losses.mean()
        grads = {n: sum(g[n] for g, _ in parts) / len(parts) for n in trainable}
        params = tuple(p for _, p in named if p.requires_grad)
        loss = attach_gradient(loss, params, tuple(grads[n] for n in trainable))
        return loss, self.metrics(loss, losses, accs)

    # -- protocol ------------------------------------------------------------------------
    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """``(1/T) sum_i L_query_i(theta_K^i)`` differentiated per ``gradient_mode``."""
        if self.speed.compile_options is not None and torch.is_grad_enabled():
            compiled = None
            if self._vmap_batch_norm_guard(self.gradient_mode, batch.support_x.device):
                self.speed.compile_skipped(
                    "meta_grad",
                    "second-order vmap through batch norm runs eagerly with "
                    "rematerialized steps (a PyTorch vmap bug makes the fused graph wrong)",
                )
            else:
                compiled = self._meta_loss_compiled(batch)
            if compiled is not None:
                return compiled
        losses, accs = self.query_loss_per_task(batch, self.gradient_mode)
        loss = losses.mean()
        return loss, self.metrics(loss, losses, accs)

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        x, y = as_support(support)
        steps = self.eval_steps if steps is None else steps
        params, buffers = split_module(self.model)
        if self.transductive:
            # the inner loop needs the task's unlabelled inputs: it runs once per call
            def predict_transductive(inputs: Tensor) -> Tensor:
                *_, last = self._transductive_steps(detach(params), buffers, x, y, inputs, steps)
                return last.detach()

            return predict_transductive
        start = self.task_init(params, buffers, x, y)
        adapted = detach(self.adapt_params(start, buffers, x, y, steps, "first_order"))
        model = self.model

        def predict(inputs: Tensor) -> Tensor:
            self.set_norm_row(steps)
            return call(model, adapted, buffers, inputs)

        return predict

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """One inner loop per task up to ``max(steps)``; query metrics at each step count."""
        steps = sorted(set(steps if steps is not None else self.default_eval_steps))
        if steps and steps[0] < 0:
            raise ValueError(f"evaluation step counts must be >= 0, got {steps}")
        params, buffers = split_module(self.model)
        params = detach(params)
        model, loss_fn, classification = self.model, self.loss_fn, self.classification
        wanted = set(steps)
        optimizer = self.make_optimizer()
        task_loss = self.task_loss(buffers)
        fuse = self.speed.fuse_for(model)
        names = self.adapt_names

        def fused(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            # query forward at theta_t and support forward of step t+1 in one call
            start = self.task_init(params, buffers, sx, sy)
            fast = {k: start[k] for k in names}
            fixed = {k: v for k, v in start.items() if k not in fast}
            state = optimizer.init(fast)
            n_support, both = sx.shape[0], torch.cat([sx, qx])
            losses, accs = [], []

            def record(prediction: Tensor) -> None:
                losses.append(loss_fn(prediction, qy))
                accs.append(accuracy(prediction, qy) if classification else losses[-1] * 0)

            def support_loss(f: Params, with_query: bool) -> tuple[Tensor, Tensor]:
                out = call(model, {**fixed, **f}, buffers, both if with_query else sx)
                return loss_fn(out[:n_support], sy), out[n_support:]

            for t in range(max(steps)):
                self.set_norm_row(t)  # query at theta_t and support of step t: both row t
                grads, query_out = grad(support_loss, has_aux=True)(fast, t in wanted)
                if t in wanted:
                    record(query_out)
                updates, state = optimizer.update(grads, state, fast)
                fast = apply_updates(fast, updates)
            self.set_norm_row(max(steps))
            record(call(model, {**fixed, **fast}, buffers, qx))
            return torch.stack(losses), torch.stack(accs)

        def per_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            losses, accs = [], []

            def record(p: Params) -> None:
                prediction = call(model, p, buffers, qx)
                losses.append(loss_fn(prediction, qy))
                accs.append(accuracy(prediction, qy) if classification else losses[-1] * 0)

            if self.transductive:
                for t, prediction in enumerate(
                    self._transductive_steps(params, buffers, sx, sy, qx, max(steps))
                ):
                    if t in wanted:
                        losses.append(loss_fn(prediction, qy))
                        accs.append(accuracy(prediction, qy))
                return torch.stack(losses), torch.stack(accs)
            if fuse:
                return fused(sx, sy, qx, qy)
            self.set_norm_row(0)
            start = self.task_init(params, buffers, sx, sy)
            if 0 in wanted:
                record(start)
            inner = inner_steps_iter(
                task_loss,
                start,
                sx,
                sy,
                optimizer,
                max(steps),
                "first_order",
                self.adapt_names,
                buffers=buffers,
            )
            if self.per_step_norm:  # row t for the query at theta_t and the support of step t
                inner = self._norm_rows(inner)
            for t, (adapted, _) in enumerate(inner, start=1):
                if t in wanted:
                    record(adapted)
            return torch.stack(losses), torch.stack(accs)

        losses, accs = map_tasks(
            per_task,
            batch.support_x,
            batch.support_y,
            batch.query_x,
            batch.query_y,
            policy=self.policy,
            chunk_size=self.chunk_size,
        )
        out: StepMetrics = {}
        for j, s in enumerate(steps):
            out[s] = {"loss": losses[:, j]}
            if classification:
                out[s]["accuracy"] = accs[:, j]
        return out

    def extra_repr(self) -> str:
        return (
            f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"mode={self.gradient_mode}, inner_optimizer={self.inner_optimizer_name}, "
            f"vectorize={self.policy.mode}, loss={self.loss_name}"
            + (f", {self.speed.describe()}" if self.speed.describe() else "")
            + (
                f", transductive_entropy={self.transductive_entropy}"
                if self.transductive_entropy
                else ""
            )
        )
