"""Speed and memory options of the engine, each opt-in and each tested against the default.

``SpeedOptions`` collects them (with the task batching options ``vectorize`` and
``chunk_size``); ``GradientMetaLearner`` takes them as constructor arguments
(``compile=``, ``checkpoint=``, ``autocast=``, ``channels_last=``, ``fuse_forward=``) or as
one ``speed=SpeedOptions(...)``, and routes its meta-step through ``SpeedOptions.wrap`` and
``functional.executor``.  Measured
effects are in ``docs/performance.md``.

* ``compile``: ``torch.compile`` of the whole per-batch computation (inner loop of every
  task, under ``vmap`` or the loop, and the query losses).  The forward *and* the backward
  (AOTAutograd traces the double backward of second-order MAML) become a few fused C++
  kernels instead of hundreds of small eager ops; on small models the meta-step is
  Python/dispatcher bound, so this is the large win (sinusoid: ~4x over eager ``vmap``).
  ``True`` uses the defaults; a dict is passed to ``torch.compile`` (``mode``,
  ``backend``, ``dynamic``, ``fullgraph``, ``options``).  The first call compiles (tens of
  seconds on a small CPU; later runs hit the inductor cache); new shapes, dtypes or
  learner settings recompile (dynamo guards).  If compilation fails the learner warns once
  and runs eagerly.  The result of ``meta_loss`` is an ordinary scalar: ``.backward()``
  puts the meta-gradient into ``self.parameters()`` as before (not differentiable twice).
* ``checkpoint``: rematerialize every second-order inner step (``functional.checkpoint``)
  so memory grows by one copy of the parameters per step instead of one set of support
  activations per step; costs one extra support forward/backward per step.
* ``autocast``: ``torch.autocast`` with the given dtype (``"bfloat16"``, or ``"float16"``
  on CUDA) around the meta-step; parameters and meta-gradients stay in their own dtype.
  Results are close, not identical.  On CPUs without native bf16 (AVX2 only) it is slower.
* ``channels_last``: the *query* forward (and so its backward) runs channels-last: the
  query images and the adapted 4-D weights are restrided to ``[N, H, W, C]`` memory order,
  the format oneDNN's CPU convolutions prefer (a stride-2 convolution's input gradient is
  ~4x faster there).  The support pass keeps the default layout: differentiating through
  its gradient (second order) is slower channels-last on this backend.  Identical numbers
  (a restriding copy), model untouched.
* ``fuse_forward``: evaluation at several step counts runs the query forward at
  ``theta_t`` together with the support forward of step ``t + 1`` (same parameters) as
  one call on ``cat(support, query)``.  Only valid for models that treat examples
  independently (no batch statistics across the batch), so it is opt-in; ``"auto"``
  enables it when the model has no batch-norm layer that uses batch statistics.
* ``chunk_size`` (already a learner argument): at most that many tasks per vectorized
  call; the peak memory of the meta-step scales with it.  The max-memory knob.

Process-wide settings (the allocator's ``retain_freed_memory``, thread counts) are not
engine options: they live in ``metaloop.runtime`` (re-exported here for old imports).
"""

from __future__ import annotations

import contextlib
import re
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

# process settings, re-exported for old imports (metaloop.runtime holds them)
from metaloop.runtime import num_threads as num_threads
from metaloop.runtime import retain_freed_memory as retain_freed_memory
from metaloop.runtime import retained_memory_threshold as retained_memory_threshold

AUTOCAST_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def autocast_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """The dtype named by an ``autocast`` option (``None``/``False``: no autocast)."""
    if value is None or value is False:
        return None
    if isinstance(value, torch.dtype):
        if value not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast dtype must be bfloat16 or float16, got {value}")
        return value
    if isinstance(value, str) and value in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[value]
    raise ValueError(
        f"autocast must be None, a dtype or one of {', '.join(AUTOCAST_DTYPES)}, got {value!r}"
    )


def autocast_context(
    dtype: torch.dtype | None, *args: Any
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on the device of the first tensor in ``args``; a null
    context when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
    return torch.autocast(device, dtype=dtype)


# custom batch-norm layers by class name (``PerStepBatchNorm2d``), not e.g. ``BatchNormNet``
_BATCH_NORM_NAME = re.compile(r"BatchNorm([123]d)?$")


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether some batch-norm layer of ``model`` normalises with the current batch's
    statistics (training mode, or no running statistics), i.e. examples interact."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training or not m.track_running_stats:
                return True
        elif _BATCH_NORM_NAME.search(type(m).__name__):  # e.g. PerStepBatchNorm2d
            return True
    return False


def vmap_batch_norm_hazard(model: nn.Module) -> bool:
    """Whether ``model`` has a batch norm layer that normalises with batch statistics
    *and* can run under ``vmap`` (no in-place running-statistics update in this mode):
    the case where PyTorch's vmapped second-order gradient is wrong (see
    ``functional.executor.vmap_batch_norm_guard``)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training and m.track_running_stats:
                continue  # updates running stats in place: vmap refuses, the loop runs
            if m.training or not m.track_running_stats:
                return True
        elif _BATCH_NORM_NAME.search(type(m).__name__):
            if next(m.buffers(recurse=False), None) is None:
                return True  # e.g. per-step batch norm: batch statistics, no buffers
    return False


def vmap_layer_norm_hazard(model: nn.Module) -> bool:
    """Whether ``model`` holds an ``nn.LayerNorm`` with a learned affine transform: the
    fused ``layer_norm`` kernel's second-order gradient through a vmapped inner gradient
    is wrong (PyTorch 2.13, about 1% off the loop and finite differences; see
    ``functional.executor.vmap_batch_norm_guard``).  ``metaloop.models.norm.LayerNorm``
    (written out) is exact and is not flagged."""
    return any(isinstance(m, nn.LayerNorm) and m.elementwise_affine for m in model.modules())


def updates_running_stats(model: nn.Module) -> bool:
    """Whether a forward pass of ``model`` updates batch-norm running statistics in place."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
        for m in model.modules()
    )


def _to_channels_last(t: Tensor) -> Tensor:
    """A 4-D float tensor restrided channels-last (``clone``, so that the strides are set
    even where they are ambiguous, e.g. one input channel); anything else unchanged."""
    if t.dim() == 4 and t.is_floating_point():
        return t.clone(memory_format=torch.channels_last)
    return t


# compiled callables per (owner, key); weak so learners can be collected, outside the
# module's __dict__ so deepcopy / pickling of a learner never sees them
_COMPILED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


@dataclass
class SpeedOptions:
    """How a gradient learner executes (see the module docstring): task batching
    (``vectorize``: ``"auto"``, ``"vmap"`` or ``"loop"``; ``chunk_size``: at most that many
    tasks per vectorized call) and the opt-in speed/memory options."""

    compile: bool | dict[str, Any] = False
    checkpoint: bool = False
    autocast: str | torch.dtype | None = None
    channels_last: bool = False
    fuse_forward: bool | str = False
    vectorize: str = "auto"
    chunk_size: int | None = None
    _failed: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vectorize not in ("auto", "vmap", "loop"):
            raise ValueError(f"vectorize must be one of auto, vmap, loop, got {self.vectorize!r}")
        if self.chunk_size is not None and (
            isinstance(self.chunk_size, bool)
            or not isinstance(self.chunk_size, int)
            or self.chunk_size < 1
        ):
            raise ValueError(
                f"chunk_size must be a positive integer or None, got {self.chunk_size!r}"
            )
        if not isinstance(self.compile, (bool, dict)):
            raise ValueError(
                f"compile must be a bool or a dict of torch.compile options, got {self.compile!r}"
            )
        if self.fuse_forward not in (True, False, "auto"):
            raise ValueError(
                f"fuse_forward must be True, False or 'auto', got {self.fuse_forward!r}"
            )
        self.autocast_dtype = autocast_dtype(self.autocast)
        self.checkpoint = bool(self.checkpoint)
        self.channels_last = bool(self.channels_last)

    @property
    def compile_options(self) -> dict[str, Any] | None:
        if self.compile is False:
            return None
        return {} if self.compile is True else dict(self.compile)

    def fuse_for(self, model: nn.Module) -> bool:
        if self.fuse_forward == "auto":
            return not uses_batch_statistics(model)
        return bool(self.fuse_forward)

    def describe(self) -> str:
        parts = []
        if self.compile_options is not None:
            parts.append("compile" + (f"={self.compile_options}" if self.compile_options else ""))
        if self.checkpoint:
            parts.append("checkpoint")
        if self.autocast_dtype is not None:
            parts.append(f"autocast={str(self.autocast_dtype).replace('torch.', '')}")
        if self.channels_last:
            parts.append("channels_last")
        if self.fuse_forward:
            parts.append(f"fuse_forward={self.fuse_forward}")
        return ", ".join(parts)

    # -- compiled callables, cached per owner, with a loud fallback to eager -------------------
    def compiled(self, owner: Any, key: str, fn: Callable[..., Any]) -> Callable[..., Any] | None:
        """``torch.compile(fn)`` cached per ``(owner, key)``, or ``None`` when compilation is
        off or failed before.  ``fn`` must not hold ``owner`` (pass it as an argument)."""
        options = self.compile_options
        if options is None or key in self._failed:
            return None
        cache = _COMPILED.setdefault(owner, {})
        if key not in cache:
            cache[key] = torch.compile(fn, **options)
        return cache[key]

    def compiled_keys(self, owner: Any) -> list[str]:
        """Keys of the functions compiled so far for ``owner``."""
        return list(_COMPILED.get(owner, {}))

    def compile_failed(self, key: str, err: BaseException) -> None:
        self._failed[key] = f"{type(err).__name__}: {err}"
        warnings.warn(
            f"torch.compile of {key} failed; running eagerly from now on. "
            f"Reason: {self._failed[key][:2000]}",
            RuntimeWarning,
            stacklevel=3,
        )

    def compile_skipped(self, key: str, reason: str) -> None:
        """Warn once that compilation of ``key`` is not used, and why."""
        if key not in self._failed:
            self._failed[key] = f"skipped: {reason}"
            warnings.warn(f"compile=True: {reason}", RuntimeWarning, stacklevel=3)

    def context(self, *args: Any) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for a call on ``args`` (a null context without autocast)."""
        return autocast_context(self.autocast_dtype, *args)

    def query_layout(
        self, params: dict[str, Tensor], x: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        """``(params, x)`` for the query forward: 4-D ones channels-last when that option is
        on.  Under ``vmap`` (which refuses a channels-last ``clone``; its batched
        convolution picks its own layout) they are returned unchanged."""
        if not self.channels_last:
            return params, x
        try:
            return {k: _to_channels_last(v) for k, v in params.items()}, _to_channels_last(x)
        except RuntimeError as err:
            if "inside vmap" not in str(err):
                raise
            return params, x

    def wrap(self, owner: Any, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with the options applied: autocast, compiled.

        ``fn`` must be an *unbound* function called as ``fn(owner, *args)`` (so that the
        cached compiled function never keeps ``owner`` alive).  Compilation here goes
        through AOTAutograd: the result is differentiated by ordinary ``.backward()``.
        """
        if self.compile_options is None and self.autocast_dtype is None:
            return lambda *args: fn(owner, *args)

        def run(*args: Any) -> Any:
            with self.context(*args):
                compiled = self.compiled(owner, key, fn)
                if compiled is not None:
                    try:
                        return compiled(owner, *args)
                    except Exception as err:
                        self.compile_failed(key, err)
                return fn(owner, *args)

        return run


class _AttachGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, value: Tensor, grads: tuple[Tensor, ...], *params: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (None, None, *(g * grad_output for g in ctx.grads))


def attach_gradient(value: Tensor, params: tuple[Tensor, ...], grads: tuple[Tensor, ...]) -> Tensor:
    """A scalar equal to ``value`` whose backward pass adds ``grad_output * grads[i]`` to
    ``params[i].grad``: a gradient computed ahead of time (e.g. by a compiled
    ``torch.func.grad``) behind the ordinary ``.backward()`` interface.  Not differentiable
    twice."""
    return _AttachGradient.apply(value, tuple(grads), *params)
