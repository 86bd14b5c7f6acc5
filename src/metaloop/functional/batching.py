"""Run a per-task function over a batch of tasks: with ``vmap`` or with a loop.

``map_tasks(fn, *tensors)`` applies ``fn`` to the ``i``-th slice of every tensor and stacks
the outputs.  ``vectorize="vmap"`` uses ``torch.func.vmap`` (one batched computation),
``"loop"`` a Python loop (works for any model, e.g. batch norm that updates running
statistics in place), and ``"auto"`` tries ``vmap`` and falls back to the loop for models
that cannot be vectorized, remembering the decision in a ``VectorizePolicy``.

``"auto"`` also skips ``vmap`` on the CPU for convolutional models
(``VectorizePolicy(..., loop_on_cpu=True)``, which ``GradientMetaLearner`` sets when its model
has a convolution): there a batched convolution runs about half as fast as one call per
task (docs/performance.md, Omniglot workload), while on CUDA ``vmap`` pays off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torch.func import vmap

Vectorize = Literal["auto", "vmap", "loop"]
VECTORIZE_MODES = ("auto", "vmap", "loop")


class VectorizePolicy:
    """Remembers whether ``vmap`` worked for a given learner, so ``auto`` tries it once.

    ``loop_on_cpu``: with ``mode="auto"``, run the loop for CPU tensors (convolutional
    models, where per-task calls are faster than a batched convolution on this backend).
    """

    def __init__(self, mode: str = "auto", loop_on_cpu: bool = False) -> None:
        if mode not in VECTORIZE_MODES:
            raise ValueError(f"vectorize must be one of {', '.join(VECTORIZE_MODES)}, got {mode!r}")
        self.mode = mode
        self.loop_on_cpu = loop_on_cpu
        self.vmap_failed: str | None = None

    @property
    def uses_vmap(self) -> bool:
        """Whether ``vmap`` is used for tensors on a non-CPU device."""
        return self.mode == "vmap" or (self.mode == "auto" and self.vmap_failed is None)

    def uses_vmap_on(self, device: torch.device | str) -> bool:
        """Whether ``vmap`` is used for tensors on ``device``."""
        if self.mode == "auto" and self.loop_on_cpu and torch.device(device).type == "cpu":
            return False
        return self.uses_vmap


def has_convolution(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds a convolution (``nn.Conv1d/2d/3d`` or a transposed one)."""
    return any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())


def _stack(outputs: list) -> tuple[Tensor, ...]:
    return tuple(torch.stack(parts) for parts in zip(*outputs))


def map_tasks(
    fn: Callable[..., tuple[Tensor, ...]],
    *tensors: Tensor,
    policy: VectorizePolicy | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, ...]:
    """Stack ``fn(t[0][i], t[1][i], ...)`` over the leading task dimension.

    ``fn`` returns a tuple of tensors; the result is the tuple of their stacks.
    ``chunk_size`` runs at most that many tasks at once (the rest follow), to bound memory.
    """
    policy = policy or VectorizePolicy("auto")
    n = tensors[0].shape[0]
    if chunk_size is not None and chunk_size < n:
        parts = [
            map_tasks(fn, *(t[i : i + chunk_size] for t in tensors), policy=policy)
            for i in range(0, n, chunk_size)
        ]
        return tuple(torch.cat(p) for p in zip(*parts))
    if policy.uses_vmap_on(tensors[0].device):
        try:
            return tuple(vmap(fn, randomness="different")(*tensors))
        except Exception as err:
            if policy.mode == "vmap":
                raise
            policy.vmap_failed = f"{type(err).__name__}: {err}"
            warnings.warn(
                "vmap over tasks failed for this model; falling back to a per-task loop "
                f"(vectorize='loop' silences this). Reason: {policy.vmap_failed}",
                RuntimeWarning,
                stacklevel=2,
            )
    return _stack([fn(*(t[i] for t in tensors)) for i in range(n)])
