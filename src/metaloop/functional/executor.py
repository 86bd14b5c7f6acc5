"""How a gradient learner's inner loop and meta-step are executed, with explicit arguments.

The learner (``algorithms.gradient``) says *what* to compute: ``theta_K`` after ``K`` inner
steps from ``theta_0`` and the query loss there.  This module decides *how*, from arguments
it is given rather than flags stored on the learner:

* ``run_inner``: the inner loop, either step by step (``inner_steps_iter``) or with every
  second-order step rematerialized (``remat_steps=True``: ``checkpoint=True``, or the vmap
  batch-norm guard below), with the gradient ``backend`` chosen by ``inner_backend`` and the
  per-step batch-norm row (MAML++ BNWB) selected before every forward (``with_norm_rows``);
* ``vmap_batch_norm_guard``: whether second-order steps must be rematerialized to be
  correct under ``vmap`` (a PyTorch bug, see there);
* ``compiled_meta_gradient``: the meta-gradient of a whole meta-step as one compiled
  ``torch.func.grad`` (``compile=True``).

All three compute the same numbers as the plain loop (tested in
``tests/functional/test_speed_options.py`` and the algorithm tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad
from torch.utils._pytree import tree_leaves, tree_map

from metaloop.functional.batching import VectorizePolicy
from metaloop.functional.checkpoint import remat
from metaloop.functional.inner import (
    GradientBackend,
    GradientMode,
    TaskLoss,
    inner_steps_iter,
    split_fast,
)
from metaloop.functional.losses import LossFn
from metaloop.functional.optim import InnerOptimizer, apply_updates
from metaloop.functional.params import Params, call
from metaloop.functional.speed import (
    SpeedOptions,
    attach_gradient,
    updates_running_stats,
    vmap_batch_norm_hazard,
    vmap_layer_norm_hazard,
)
from metaloop.models.norm import set_norm_step

_Item = TypeVar("_Item")

BUFFER_MESSAGE = (
    "checkpoint=True recomputes the inner steps, but this model updates its buffers in "
    "place (e.g. batch norm running statistics in training mode); use a normalization "
    "without running statistics (norm='batch_episode') or checkpoint=False"
)


def with_norm_rows(model: nn.Module, inner: Iterator[_Item]) -> Iterator[_Item]:
    """``inner`` (an ``inner_steps_iter``) with the per-step norm row of each forward set.

    The generator runs the support forward of step ``t`` inside its ``next()`` after
    yielding ``theta_t``: so row ``0`` is set before the first ``next()``, and row ``t``
    right after ``theta_t`` arrives, which also serves a query forward at ``theta_t`` made
    by the consumer before it asks for the next step.
    """
    set_norm_step(model, 0)
    for t, item in enumerate(inner, start=1):
        set_norm_step(model, t)
        yield item


def vmap_batch_norm_guard(
    mode: GradientMode, policy: VectorizePolicy, model: nn.Module, device: torch.device
) -> bool:
    """Whether second-order steps must go through ``remat`` to be correct under vmap.

    PyTorch bug (functorch "batch_norm backward batching rule is incorrect"): when a batch
    norm layer normalises with batch statistics and its affine weight is adapted (so
    batched over tasks), differentiating *through* a vmapped inner gradient gives a wrong
    meta-gradient for the layers before it (float64, Conv4: 0.7% to 15% off the loop
    engine and finite differences).  ``remat`` computes each step's vector-Jacobian
    product *inside* vmap, which is correct (cost: one more support forward/backward per
    step in the backward pass).  The same holds for ``nn.LayerNorm`` with an affine weight
    (float64, linear layer, ``nn.LayerNorm(6)``, head: 0.8% off; ``vmap_layer_norm_hazard``),
    so such a model is rematerialized too; metaloop's own models use the written-out
    ``models.norm.LayerNorm``, exact without it.
    """
    return (
        mode == "second_order"
        and policy.uses_vmap_on(device)
        and torch.is_grad_enabled()
        and (vmap_batch_norm_hazard(model) or vmap_layer_norm_hazard(model))
    )


def remat_guard(
    mode: GradientMode, policy: VectorizePolicy, model: nn.Module, device: torch.device,
    speed: SpeedOptions,
) -> bool:  # fmt: skip
    """``vmap_batch_norm_guard``, refusing autocast where it applies (unsupported)."""
    guard = vmap_batch_norm_guard(mode, policy, model, device)
    if guard and speed.autocast_dtype is not None:
        raise ValueError(
            "autocast with second-order vmap through batch norm or nn.LayerNorm is not "
            "supported (mixed dtypes in the rematerialized double backward); use "
            "vectorize='loop', no autocast, or metaloop.models.norm.LayerNorm"
        )
    return guard


def inner_backend(
    policy: VectorizePolicy, device: torch.device, in_transform: bool, plain_init: bool
) -> GradientBackend:
    """``"autograd"`` for a task run on its own outside any ``torch.func`` transform (the
    same numbers with less overhead, see ``functional.inner``), ``"func"`` otherwise.  Only
    from a plain ``theta_0`` (``plain_init``): ``autograd.grad`` would also follow paths
    *between* the inputs (Proto-MAML's head is a function of the body)."""
    if not policy.uses_vmap_on(device) and not in_transform and plain_init:
        return "autograd"
    return "func"


def run_inner(
    task_loss: TaskLoss,
    params: Params,
    buffers: Params,
    x: Tensor,
    y: Tensor,
    optimizer: InnerOptimizer,
    steps: int,
    mode: GradientMode,
    adapt: Sequence[str] | None = None,
    *,
    backend: GradientBackend = "func",
    remat_steps: bool = False,
    model: nn.Module | None = None,
    per_step_norm: bool = False,
) -> Params:
    """``theta_K`` after ``steps`` inner steps on ``(x, y)`` from ``params``.

    ``remat_steps``: rematerialize every step (second-order mode with grad enabled only;
    otherwise ignored; refused for a ``model`` that updates buffers in place).
    ``per_step_norm``: set the per-step batch norm row of ``model`` before every forward;
    row ``steps`` is left selected, for the query forward.
    """
    norm_model = model if per_step_norm else None
    if remat_steps and mode == "second_order" and torch.is_grad_enabled():
        if model is not None and updates_running_stats(model):
            raise RuntimeError(BUFFER_MESSAGE)
        return _run_rematerialized(
            task_loss, params, buffers, x, y, optimizer, steps, adapt, norm_model
        )
    inner = inner_steps_iter(
        task_loss, params, x, y, optimizer, steps, mode, adapt, buffers=buffers, backend=backend
    )
    if norm_model is not None:
        inner = with_norm_rows(norm_model, inner)
    adapted = params
    for adapted, _ in inner:  # noqa: B007 - the last value is the result
        pass
    return adapted


def predictions_at_steps(
    model: nn.Module,
    task_loss: TaskLoss,
    loss_fn: LossFn,
    start: Params,
    buffers: Params,
    sx: Tensor,
    sy: Tensor,
    qx: Tensor,
    optimizer: InnerOptimizer,
    wanted: set[int],
    adapt: Sequence[str] | None,
    *,
    fuse: bool = False,
    per_step_norm: bool = False,
) -> Iterator[Tensor]:
    """Query predictions ``f_{theta_t}(x_q)`` for every ``t`` in ``wanted``, in order, along
    one first-order inner loop of ``task_loss`` on ``(sx, sy)`` from ``start``.

    ``fuse``: the query forward at ``theta_t`` runs in the same call as the support forward
    of step ``t + 1`` (``cat(support, query)``, the query rows an aux output of the inner
    loss ``loss_fn(f(x_s), y_s)``); only for models that treat examples independently.
    ``per_step_norm``: row ``t`` of the model's per-step norm for the forwards at ``theta_t``.
    """
    last = max(wanted)
    n_support, both, with_query = sx.shape[0], torch.cat([sx, qx]), [0 in wanted]

    def fused_loss(p: Params, x: Tensor, y: Tensor, bufs: Params) -> tuple[Tensor, Tensor]:
        out = call(model, p, bufs, both if with_query[0] else x)
        return loss_fn(out[:n_support], y), out[n_support:]

    inner = inner_steps_iter(
        fused_loss if fuse else task_loss, start, sx, sy, optimizer, last, "first_order",
        adapt, buffers=buffers, has_aux=fuse,
    )  # fmt: skip
    if per_step_norm:  # row t for the query at theta_t and the support of step t
        set_norm_step(model, 0)
        inner = with_norm_rows(model, inner)
    if 0 in wanted and not (fuse and last > 0):
        yield call(model, start, buffers, qx)
    for t, (adapted, aux) in enumerate(inner, start=1):
        if fuse and with_query[0]:
            yield aux[1]  # the query at theta_{t-1}
        with_query[0] = t in wanted and t < last
        if t in wanted and not (fuse and t < last):
            yield call(model, adapted, buffers, qx)


class _Carried:
    """Marks a state tensor that a rematerialized step passed through unchanged."""

    def __init__(self, index: int) -> None:
        self.index = index


def _run_rematerialized(
    task_loss: TaskLoss,
    params: Params,
    buffers: Params,
    x: Tensor,
    y: Tensor,
    optimizer: InnerOptimizer,
    steps: int,
    adapt: Sequence[str] | None,
    norm_model: nn.Module | None,
) -> Params:
    """Second-order inner loop with every step rematerialized.

    Same numbers as ``inner_steps_iter``; each step is a pure function of the adapted
    parameters, the optimizer state (which holds the learning rates, so learned rates get
    their meta-gradient) and the fixed parameters, all passed to ``remat``.  With per-step
    batch norm the step's index is passed too (a static leaf): the recomputation in the
    backward pass selects its own norm row, whatever the layers hold by then.
    """
    fast, fixed = split_fast(params, adapt)
    state = optimizer.init(fast)
    versions = [b._version for b in buffers.values()]

    def step(fast: Params, state: Any, fixed: Params, x: Tensor, y: Tensor, row: int | None):
        if row is not None:
            set_norm_step(norm_model, row)
        grads = grad(lambda f: task_loss({**fixed, **f}, x, y))(fast)
        updates, new_state = optimizer.update(grads, state, fast)
        # state carried through unchanged (learning rates, anchors) is not returned by remat
        # but marked, and put back outside: under vmap the generated rule of an unbatched
        # input returned as an output would lose its gradient (tested with learned rates)
        ids = {id(t): i for i, t in enumerate(tree_leaves(state)) if isinstance(t, Tensor)}
        new_state = tree_map(
            lambda t: _Carried(ids[id(t)]) if isinstance(t, Tensor) and id(t) in ids else t,
            new_state,
        )
        return apply_updates(fast, updates), new_state

    def put_back(new_state: Any, carried: list[Any]) -> Any:
        return tree_map(lambda v: carried[v.index] if isinstance(v, _Carried) else v, new_state)

    for k in range(steps):
        row = k if norm_model is not None else None
        carried = tree_leaves(state)
        fast, state = remat(step, fast, state, fixed, x, y, row)
        state = put_back(state, carried)
    if [b._version for b in buffers.values()] != versions:
        raise RuntimeError(BUFFER_MESSAGE)
    if norm_model is not None:
        set_norm_step(norm_model, steps)  # for the query forward
    return {**fixed, **fast}


def _meta_objective(
    trainable: Params,
    frozen: Params,
    buffers: Params,
    learner: nn.Module,
    args: tuple[Tensor, ...],
    mode: GradientMode,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Mean per-task loss of ``learner(*args, mode, in_transform=True)`` as a pure function of
    its parameters; ``learner.forward`` returns per-task ``(losses, accuracies)``."""
    losses, accs = functional_call(
        learner,
        ({**trainable, **frozen}, buffers),
        (*args, mode),
        {"in_transform": True},
        strict=False,
    )
    loss = losses.mean()
    return loss, (loss.detach(), losses.detach(), accs.detach())


#: ``(grads, (loss, per-task losses, per-task accuracies))``; compiled per learner
_META_GRAD = grad(_meta_objective, has_aux=True)


def compiled_meta_loss(
    learner: nn.Module,
    speed: SpeedOptions,
    policy: VectorizePolicy,
    model: nn.Module,
    args: tuple[Tensor, ...],
    mode: GradientMode,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """``compile=True``: ``(loss, per-task losses, per-task accuracies)`` where ``loss``
    carries the meta-gradient computed ahead of time by ``compiled_meta_gradient``
    (``loss.backward()`` delivers it, ``speed.attach_gradient``); ``None`` when compilation
    is off, failed, or skipped (second-order vmap through batch norm runs eagerly with
    rematerialized steps: a PyTorch vmap bug makes the fused graph wrong)."""
    if speed.compile_options is None or not torch.is_grad_enabled():
        return None
    device = args[0].device
    if vmap_batch_norm_guard(mode, policy, model, device):
        speed.compile_skipped(
            "meta_grad",
            "second-order vmap through batch norm or nn.LayerNorm runs eagerly with "
            "rematerialized steps (a PyTorch vmap bug makes the fused graph wrong)",
        )
        return None
    per_task = not policy.uses_vmap_on(device)
    compiled = compiled_meta_gradient(learner, speed, args, mode, per_task)
    if compiled is None:
        return None
    grads, losses, accs = compiled
    named = [(n, p) for n, p in learner.named_parameters() if p.requires_grad]
    params, values = tuple(p for _, p in named), tuple(grads[n] for n, _ in named)
    return attach_gradient(losses.mean(), params, values), losses, accs


def compiled_meta_gradient(
    learner: nn.Module,
    speed: SpeedOptions,
    args: tuple[Tensor, ...],
    mode: GradientMode,
    per_task: bool,
) -> tuple[dict[str, Tensor], Tensor, Tensor] | None:
    """``(grads, per-task losses, per-task accuracies)`` of the meta-step on the task batch
    ``args`` by a compiled ``torch.func.grad`` (one forward-only graph: no autograd tape),
    or ``None`` when compilation is off or failed (the learner then runs eagerly).

    With ``per_task`` (the loop policy) the compiled function is one task's meta-gradient,
    called per task, ``grad (1/T) sum_i L_i = (1/T) sum_i grad L_i``: one small graph
    compiled once instead of the meta-batch unrolled into one.
    """
    key = f"meta_grad{'/task' if per_task else ''}/{mode}"
    fn = speed.compiled(learner, key, _META_GRAD)
    if fn is None:
        return None
    named = list(learner.named_parameters())
    trainable = {n: p.detach() for n, p in named if p.requires_grad}
    frozen = {n: p.detach() for n, p in named if not p.requires_grad}
    buffers = dict(learner.named_buffers())
    n_tasks = args[0].shape[0]
    chunks = [tuple(a[i : i + 1] for a in args) for i in range(n_tasks)] if per_task else [args]
    try:
        with torch.no_grad(), speed.context(*args):
            parts = [fn(trainable, frozen, buffers, learner, c, mode) for c in chunks]
    except Exception as err:
        speed.compile_failed(key, err)
        return None
    losses = torch.cat([aux[1] for _, aux in parts])
    accs = torch.cat([aux[2] for _, aux in parts])
    grads = {n: sum(g[n] for g, _ in parts) / len(parts) for n in trainable}
    return grads, losses, accs
