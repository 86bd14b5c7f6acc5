"""The inner loop: adapt parameters to one task's support set.

``theta_0 = theta``; ``u_t, s_{t+1} = update(grad L_support(theta_t), s_t, theta_t)`` and
``theta_{t+1} = theta_t + u_t`` for ``t = 0 .. steps-1``, where ``update`` is a
differentiable ``InnerOptimizer`` (``metaloop.functional.optim``).

Gradient modes decide what the meta-gradient sees:

* ``"second_order"``: every inner gradient stays on the graph, so backpropagating a query
  loss through ``theta_K`` computes the exact meta-gradient, Hessian-vector products
  through every step included.
* ``"first_order"``: inner gradients are constants (computed on detached tensors), so
  ``d theta_K / d theta = I`` and the meta-gradient is the query gradient at ``theta_K``
  (FOMAML).

Gradients are taken with ``torch.func.grad`` (``backend="func"``), so the same code runs
for one task and under ``torch.func.vmap`` for a batch of tasks.  ``backend="autograd"``
takes them with ``torch.autograd.grad`` (``create_graph`` in second-order mode): the same
numbers, without the transform's per-op wrapping (about 5% of a Conv4 meta-step on the
CPU), for a task run on its own, outside any ``torch.func`` transform.  It needs the
parameters of ``theta_0`` to be independent tensors: ``torch.autograd.grad`` with respect to
one of them would also follow a path through another that is computed from it, where
``torch.func.grad`` treats each input as a variable of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import grad_and_value

from metaloop.functional.optim import InnerOptimizer, apply_updates, by_name
from metaloop.functional.params import Params, detach

GradientMode = Literal["second_order", "first_order"]
GRADIENT_MODES: tuple[str, ...] = ("second_order", "first_order")
GradientBackend = Literal["func", "autograd"]

# loss_fn(params, x, y) -> scalar
TaskLoss = Callable[[Params, Tensor, Tensor], Tensor]


@dataclass
class InnerLoop:
    """A gradient learner's inner-loop options.

    ``lr``: the rate ``alpha`` of a named optimizer (and the initial value of learned
    rates); ``steps``: inner steps ``K`` during meta-training (``min_steps`` the least a
    learner allows); ``eval_steps``: at test time (default ``steps``); ``optimizer``: a name
    (``"sgd"``, ``"momentum"``, ``"adam"``, built at ``lr`` with ``optimizer_kwargs``) or an
    ``InnerOptimizer``; ``adapt``: which parameters adapt (``None``: all; a name prefix, a
    list of prefixes or a predicate on names).
    """

    lr: float = 0.01
    steps: int = 1
    eval_steps: int | None = None
    optimizer: str | InnerOptimizer = "sgd"
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    adapt: Any = None
    min_steps: int = 1
    recipe: tuple[Callable[..., InnerOptimizer], tuple, dict] | None = None

    def __post_init__(self) -> None:
        steps, lr = self.steps, self.lr
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"inner_steps must be an integer, got {steps!r}")
        if steps < self.min_steps:
            raise ValueError(
                f"inner_steps must be >= {self.min_steps} for this algorithm, got {steps}"
            )
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise ValueError(f"inner_lr must be a positive finite number, got {lr!r}")
        self.lr = float(lr)
        eval_steps = self.eval_steps
        if eval_steps is not None and (
            isinstance(eval_steps, bool) or not isinstance(eval_steps, int) or eval_steps < 0
        ):
            raise ValueError(f"eval_steps must be an integer >= 0 or None, got {eval_steps!r}")
        if self.eval_steps is None:
            self.eval_steps = steps
        if not isinstance(self.optimizer, (str, InnerOptimizer)):
            raise ValueError(
                "inner_optimizer must be a name (sgd, momentum, adam) or an InnerOptimizer, "
                f"got {type(self.optimizer).__name__}"
            )
        self.optimizer_kwargs = dict(self.optimizer_kwargs or {})
        if not isinstance(self.optimizer, str) and self.optimizer_kwargs:
            raise ValueError("inner_optimizer_kwargs apply to a named inner optimizer only")
        self.build_optimizer(self.lr)  # validates the name and its arguments

    def use(self, fn: Callable[..., InnerOptimizer], *args: Any, **kwargs: Any) -> None:
        """Make ``fn(*args, **kwargs)`` the inner optimizer (``optimizer`` then builds it).
        Learnable parts among ``args`` (a ``LearnedRates``, a rule) must be modules of the
        learner, so that they are saved and receive the meta-gradient; the optimizer is
        rebuilt from this recipe at every use, so a copy of the learner uses its own."""
        self.recipe = (fn, args, kwargs)
        fn(*args, **kwargs)  # validates now rather than in the first inner loop

    def current_optimizer(self) -> InnerOptimizer:
        """The inner optimizer: from the recipe given to ``use``, else ``build_optimizer(lr)``
        (a few closures, built afresh at every call so that it reads the current rates)."""
        if self.recipe is None:
            return self.build_optimizer(self.lr)
        fn, args, kwargs = self.recipe
        return fn(*args, **kwargs)

    def build_optimizer(self, rate: Any, **extra: Any) -> InnerOptimizer:
        """The named optimizer at ``rate`` (a number, tensors, a module of learned rates or a
        schedule, see ``optim.scale_by_learning_rate``; ``extra``: e.g. ``per_step=True``),
        or the given ``InnerOptimizer``."""
        if isinstance(self.optimizer, str):
            return by_name(self.optimizer, rate, **self.optimizer_kwargs, **extra)
        return self.optimizer

    @property
    def optimizer_name(self) -> str:
        return self.optimizer if isinstance(self.optimizer, str) else "custom"


def check_mode(mode: str) -> None:
    if mode not in GRADIENT_MODES:
        raise ValueError(
            f"unknown gradient mode {mode!r}; choose one of {', '.join(GRADIENT_MODES)}"
        )


def split_fast(params: Params, adapt: Sequence[str] | None = None) -> tuple[Params, Params]:
    """``(fast, fixed)``: the parameters named in ``adapt`` (all by default), which the inner
    loop changes, and the rest, which it holds fixed."""
    names = list(params) if adapt is None else list(adapt)
    fast = {k: params[k] for k in names}
    return fast, {k: v for k, v in params.items() if k not in fast}


def inner_steps_iter(
    loss_fn: TaskLoss,
    params: Params,
    x: Tensor,
    y: Tensor,
    optimizer: InnerOptimizer,
    steps: int,
    mode: GradientMode = "second_order",
    adapt: Sequence[str] | None = None,
    buffers: Params | None = None,
    backend: GradientBackend = "func",
    has_aux: bool = False,
) -> Iterator[tuple[Params, Any]]:
    """Yield ``(theta_t, L_support(theta_{t-1}))`` after each of ``steps`` inner steps.

    With ``has_aux=True`` ``loss_fn`` returns ``(loss, aux)`` and the second item yielded is
    that pair (the aux of the forward at ``theta_{t-1}``, e.g. query outputs computed in
    the same call as the support loss); ``backend`` must then be ``"func"``.

    Only the parameters named in ``adapt`` (all by default) change; the rest are held
    fixed inside the loop but still receive meta-gradient through the query loss.

    ``buffers``, when given, are passed on as ``loss_fn(params, x, y, buffers)`` and enter
    the gradient transform as *inputs*: ``torch.func`` refuses in-place updates of captured
    tensors, so this is what lets a model update its buffers inside the inner loop (batch
    norm's running statistics in training mode, with the loop engine).
    """
    check_mode(mode)
    fast, fixed = split_fast(params, adapt)
    state = optimizer.init(fast)
    first_order = mode == "first_order"
    fixed_for_grad = detach(fixed) if first_order else fixed

    def support_loss(fast_params: Params, bufs: Params | None) -> Any:
        merged = {**fixed_for_grad, **fast_params}
        return loss_fn(merged, x, y) if bufs is None else loss_fn(merged, x, y, bufs)

    if backend not in ("func", "autograd"):
        raise ValueError(f"backend must be 'func' or 'autograd', got {backend!r}")
    if has_aux and backend != "func":
        raise ValueError("has_aux=True needs backend='func'")
    for _ in range(steps):
        if backend == "autograd":
            grads, loss = _autograd_grad_and_value(support_loss, fast, buffers, first_order)
        elif first_order:
            grads, loss = grad_and_value(support_loss, has_aux=has_aux)(detach(fast), buffers)
            grads = detach(grads)
        else:
            grads, loss = grad_and_value(support_loss, has_aux=has_aux)(fast, buffers)
        updates, state = optimizer.update(grads, state, fast)
        fast = apply_updates(fast, updates)
        yield {**fixed, **fast}, loss


def _autograd_grad_and_value(
    loss_fn: Callable[[Params, Params | None], Tensor],
    fast: Params,
    buffers: Params | None,
    first_order: bool,
) -> tuple[Params, Tensor]:
    """``(grad loss_fn(fast), loss_fn(fast))`` with ``torch.autograd.grad``; in second-order
    mode the gradient stays on the graph (``create_graph``)."""
    with torch.enable_grad():
        inputs = {
            k: v if (v.requires_grad and not first_order) else v.detach().requires_grad_()
            for k, v in fast.items()
        }
        loss = loss_fn(inputs, buffers)
        grads = torch.autograd.grad(
            loss, tuple(inputs.values()), create_graph=not first_order, allow_unused=True
        )
    grads = tuple(torch.zeros_like(v) if g is None else g for g, v in zip(grads, fast.values()))
    if first_order:
        return dict(zip(inputs, (g.detach() for g in grads))), loss.detach()
    return dict(zip(inputs, grads)), loss


def inner_loop(
    loss_fn: TaskLoss,
    params: Params,
    x: Tensor,
    y: Tensor,
    optimizer: InnerOptimizer,
    steps: int,
    mode: GradientMode = "second_order",
    adapt: Sequence[str] | None = None,
    buffers: Params | None = None,
    backend: GradientBackend = "func",
) -> Params:
    """Run ``steps`` inner steps and return the adapted parameters ``theta_K``."""
    adapted = params
    for adapted, _ in inner_steps_iter(  # noqa: B007 - the last value is the result
        loss_fn, params, x, y, optimizer, steps, mode, adapt, buffers=buffers, backend=backend
    ):
        pass
    return adapted
