"""Rematerialization (activation checkpointing) that works under ``torch.func`` transforms.

Second-order MAML keeps, for every inner step, the activations of the support forward
pass *and* of its backward pass (the inner gradient stays on the graph), so its memory
grows linearly with the number of inner steps.  ``remat(fn, *args)`` calls ``fn`` without
keeping any of its intermediate tensors: it saves only its inputs, and during the backward
pass recomputes ``fn`` and backpropagates through the recomputation with
``torch.func.vjp``.  Wrapping each inner step in ``remat`` makes the memory of the unroll
grow only by one copy of the (small) adapted parameters and optimizer state per step, at
the price of one more support forward-and-backward per step in the meta-backward pass.

Why not ``torch.utils.checkpoint``: its non-reentrant form relies on saved-tensor hooks,
which ``torch.func.grad`` refuses ("don't yet support saved tensor hooks"), and its
reentrant form runs the function under ``no_grad`` and has no ``vmap`` rule.  ``remat`` is
a ``torch.autograd.Function`` with ``generate_vmap_rule = True`` whose backward is written
with ``torch.func.vjp``, so it composes with ``vmap`` over tasks, with ``torch.func.grad``
inside ``fn`` (the inner gradient) and with ordinary autograd outside (``.backward()`` on
the meta-loss).

Contract: ``fn`` must be a pure function of the tensors in ``args`` (pytrees of tensors and
other leaves).  Tensors that ``fn`` captures by closure get **no** gradient through it, so
anything that must receive a meta-gradient (parameters, learned learning rates) has to be
passed in ``args``.  ``fn`` runs twice (forward and recomputation), so it must not update
state in place (e.g. batch norm running statistics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import vjp
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["remat"]


class _Remat(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(flat_fn: Callable[..., tuple[Tensor, ...]], *tensors: Tensor) -> tuple[Tensor, ...]:
        return flat_fn(*tensors)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        flat_fn, *tensors = inputs
        ctx.flat_fn = flat_fn
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        tensors = ctx.saved_tensors
        wanted = [
            i
            for i, t in enumerate(tensors)
            if ctx.needs_input_grad[i + 1] and (t.is_floating_point() or t.is_complex())
        ]
        grads: list[Tensor | None] = [None] * len(tensors)
        if wanted:

            def partial(*diff: Tensor) -> tuple[Tensor, ...]:
                full = list(tensors)
                for i, t in zip(wanted, diff):
                    full[i] = t
                return ctx.flat_fn(*full)

            _, pullback = vjp(partial, *(tensors[i] for i in wanted))
            for i, g in zip(wanted, pullback(tuple(grad_outputs))):
                grads[i] = g
        return (None, *grads)


def remat(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, recomputed in the backward pass instead of stored (see module doc).

    ``args`` and the result are pytrees (dicts, tuples, lists) whose tensor leaves are
    differentiated; other leaves (ints, floats, ``None``) pass through unchanged.
    """
    leaves, in_spec = tree_flatten(args)
    tensor_pos = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
    out_info: dict[str, Any] = {}
    # the recomputation runs in the backward pass, outside the caller's autocast region:
    # capture its state now and re-enter it (as torch.utils.checkpoint does)
    autocast = [
        (device, torch.get_autocast_dtype(device))
        for device in ("cpu", "cuda")
        if torch.is_autocast_enabled(device)
    ]

    def flat_fn(*tensors: Tensor) -> tuple[Tensor, ...]:
        full = list(leaves)
        for i, t in zip(tensor_pos, tensors):
            full[i] = t
        with contextlib.ExitStack() as stack:
            for device, dtype in autocast:
                stack.enter_context(torch.autocast(device, dtype=dtype))
            out = fn(*tree_unflatten(full, in_spec))
        out_leaves, out_spec = tree_flatten(out)
        is_tensor = [isinstance(leaf, Tensor) for leaf in out_leaves]
        out_info["spec"] = out_spec
        out_info["static"] = [None if t else leaf for t, leaf in zip(is_tensor, out_leaves)]
        out_info["is_tensor"] = is_tensor
        return tuple(leaf for t, leaf in zip(is_tensor, out_leaves) if t)

    outputs = iter(_Remat.apply(flat_fn, *(leaves[i] for i in tensor_pos)))
    merged = [
        next(outputs) if is_t else leaf
        for is_t, leaf in zip(out_info["is_tensor"], out_info["static"])
    ]
    return tree_unflatten(merged, out_info["spec"])
