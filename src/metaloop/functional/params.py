"""Parameter and buffer dictionaries, and calling any ``nn.Module`` with them.

The engine never copies or patches a module: it reads the module's parameters and
buffers as ``{name: tensor}`` dicts and calls ``torch.func.functional_call`` with
substituted tensors.  ``Params`` is a plain dict so that arithmetic on it is a dict
comprehension and ``torch.func`` transforms see a pytree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]


def split_module(module: nn.Module) -> tuple[Params, Params]:
    """Return ``(params, buffers)`` of ``module`` as dicts of its own tensors (not copies)."""
    return dict(module.named_parameters()), dict(module.named_buffers())


def call(module: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], *args):
    """``module(*args)`` with its parameters and buffers replaced by the given tensors."""
    return functional_call(module, (dict(params), dict(buffers)), args, strict=False)


def select(params: Mapping[str, Tensor], names: Iterable[str]) -> Params:
    """The sub-dict of ``params`` with the given names, in order."""
    return {n: params[n] for n in names}


def name_filter(
    module: nn.Module, include: str | Iterable[str] | Callable[[str], bool] | None
) -> list[str]:
    """Names of the parameters of ``module`` picked by ``include``.

    ``include`` may be ``None`` (all), a prefix string or a list of prefixes (e.g. ``"head"``
    for ANIL's classifier), or a predicate on the parameter name.  A prefix names a
    submodule or parameter: ``"layers.1"`` picks ``layers.1.weight`` but not
    ``layers.10.weight`` (a prefix ending in ``"."`` is taken as is).
    """
    names = [n for n, _ in module.named_parameters()]
    if include is None:
        return names
    if callable(include):
        picked = [n for n in names if include(n)]
    else:
        prefixes = (include,) if isinstance(include, str) else tuple(include)
        dotted = tuple(p if p.endswith(".") else p + "." for p in prefixes)
        picked = [n for n in names if n in prefixes or n.startswith(dotted)]
    if not picked:
        raise ValueError(f"no parameter matches {include!r}; parameters are: {', '.join(names)}")
    return picked


def tree_map(fn: Callable[..., Tensor], *trees: Mapping[str, Tensor]) -> Params:
    """Apply ``fn`` leafwise over dicts that share keys."""
    first = trees[0]
    return {k: fn(*(t[k] for t in trees)) for k in first}


def detach(params: Mapping[str, Tensor]) -> Params:
    return {k: v.detach() for k, v in params.items()}


def squared_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """``sum_k ||a_k - b_k||^2`` over a dict of tensors."""
    return sum(((a[k] - b[k]) ** 2).sum() for k in a)


def flatten(params: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1) for v in params.values()])
