"""Input checks of the Python API: what ``adapt``, ``meta_loss`` and ``evaluate_batch`` accept.

Every learner class (a subclass of ``Adaptable``: ``MetaLearner``, the evaluation
wrappers) gets the methods it defines among
``adapt``, ``meta_loss``, ``evaluate_batch`` and ``query_log_probs`` wrapped (its base
class's ``__init_subclass__`` calls ``wrap_learner_class``), so a learner written outside
metaloop is checked too.  Before the method runs:

* ``adapt(support, steps)``: ``support`` is a ``Task`` or a pair ``(x [N, ...], y [N, ...])``
  of tensors with ``N >= 1`` examples on both sides, finite inputs, and for a classifier
  integer labels ``>= 0`` (below ``ways`` when the ``Task`` says how many); ``steps`` is
  ``None`` or an integer ``>= 0``;
* ``meta_loss(batch)``, ``evaluate_batch(batch, steps)`` and ``query_log_probs(batch,
  steps)``: ``tasks.base.validate_batch`` (four tensors with one task dimension, non-empty
  support and query, matching shapes, labels in ``0..ways-1``, and finite data except in
  ``meta_loss``, the hot path, where a NaN shows as a non-finite loss that the trainer
  reports); ``meta_loss`` also needs at least one parameter with ``requires_grad`` (there
  is nothing to meta-learn otherwise), and the others step counts ``>= 0``.

A classifier whose labels exceed its model's outputs fails inside the loss with torch's
``IndexError``; that error is re-raised as a ``TaskError`` saying which labels and which
call.  Only the outermost call is checked: a learner's methods calling each other (an
``evaluate_batch`` calling ``adapt`` per task, a wrapper calling its members) run
unchecked inside it.  Errors are ``TaskError`` (a ``ValueError``) with a one-line message.

The cost is a few tensor reductions per call, under 2% of a sinusoid MAML meta-step
(docs/reliability.md); ``unchecked()`` turns the checks off for code that validated its
batches already.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from metaloop.tasks.base import Task, TaskBatch, TaskError, validate_batch
from metaloop.validate import is_int

_local = threading.local()


def _busy() -> bool:
    return getattr(_local, "depth", 0) > 0


@contextmanager
def unchecked() -> Iterator[None]:
    """Run ``adapt`` / ``meta_loss`` / ``evaluate_batch`` calls inside without input checks
    (for callers that validated their batches already)."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def check_steps(steps: Any, name: str = "steps") -> None:
    """``steps`` must be ``None`` or an integer ``>= 0`` (a negative count used to run zero
    steps silently)."""
    if steps is None:
        return
    if not is_int(steps):
        raise TaskError(f"{name} must be an integer >= 0 or None, got {steps!r}")
    if steps < 0:
        raise TaskError(f"{name} must be >= 0, got {steps}")


def check_support(support: Any, *, classification: bool) -> None:
    """Raise ``TaskError`` unless ``support`` is a usable support set (see the module)."""
    ways = support.ways if isinstance(support, Task) else None
    if isinstance(support, Task):
        x, y = support.support
    elif isinstance(support, (tuple, list)) and len(support) == 2:
        x, y = support
    else:
        raise TaskError(
            "support must be a Task or a pair (inputs, targets) of tensors, got "
            f"{type(support).__name__}"
        )
    for name, t in (("support inputs", x), ("support targets", y)):
        if not isinstance(t, Tensor):
            raise TaskError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 1:
            raise TaskError(f"{name} must have shape [examples, ...], got a scalar")
    if x.shape[0] == 0:
        raise TaskError("support set is empty: adapting needs at least one support example")
    if x.shape[0] != y.shape[0]:
        raise TaskError(
            f"support inputs and targets disagree in example count: {x.shape[0]} vs {y.shape[0]}"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise TaskError("support inputs contain NaN or Inf values; task data must be finite")
    if classification:
        if y.is_floating_point() or y.is_complex():
            raise TaskError(f"support targets must hold integer class labels, got {y.dtype}")
        low, high = int(y.min()), int(y.max())
        if low < 0 or (ways is not None and high >= ways):
            allowed = f"0..{ways - 1} for a {ways}-way task" if ways is not None else ">= 0"
            raise TaskError(f"support labels must lie in {allowed}, found range {low}..{high}")
    elif y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise TaskError("support targets contain NaN or Inf values; task data must be finite")


def check_trainable(learner: torch.nn.Module) -> None:
    """``meta_loss`` needs something to learn: at least one parameter with ``requires_grad``."""
    for p in learner.parameters():
        if p.requires_grad:
            return
    count = sum(1 for _ in learner.parameters())
    state = "no parameters" if count == 0 else f"{count} parameter tensors, all frozen"
    raise TaskError(
        f"{type(learner).__name__} has {state}: meta_loss has nothing to meta-learn; give "
        "the model trainable parameters (requires_grad=True) or unfreeze some (adapt and "
        "evaluate work without them)"
    )


def _label_error(err: IndexError, call: str) -> TaskError:
    return TaskError(
        f"{call}: a class label is outside the model's outputs ({err}); labels must lie in "
        "0..C-1 for a model with C outputs"
    )


def validated(kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a learner's ``adapt``, ``meta_loss`` or ``evaluate_batch``, as ``kind``
    says) with its input checks in front."""
    if getattr(method, "_metaloop_validated", False):
        return method

    if kind == "adapt":

        @functools.wraps(method)
        def adapt(self, support, *args, **kwargs):
            if _busy():
                return method(self, support, *args, **kwargs)
            steps = args[0] if args else kwargs.get("steps")
            check_steps(steps)
            check_support(support, classification=getattr(self, "classification", False))
            with unchecked():
                try:
                    return method(self, support, *args, **kwargs)
                except IndexError as err:
                    if not getattr(self, "classification", False):
                        raise
                    raise _label_error(err, f"{type(self).__name__}.adapt") from err

        wrapper = adapt
    elif kind in ("meta_loss", "evaluate_batch", "query_log_probs"):

        @functools.wraps(method)
        def batch_method(self, batch, *args, **kwargs):
            if _busy():
                return method(self, batch, *args, **kwargs)
            if not isinstance(batch, TaskBatch):
                raise TaskError(f"{kind} needs a TaskBatch, got {type(batch).__name__}")
            validate_batch(
                batch,
                classification=getattr(self, "classification", False),
                check_finite=kind != "meta_loss",  # a NaN there is the trainer's to report
            )
            if kind == "meta_loss":
                check_trainable(self)
            else:
                steps = args[0] if args else kwargs.get("steps")
                if steps is not None:
                    if isinstance(steps, int):
                        raise TaskError(f"{kind} steps must be a sequence of integers, got {steps}")
                    for s in steps:
                        check_steps(s, f"{kind} step counts")
            with unchecked():
                try:
                    return method(self, batch, *args, **kwargs)
                except IndexError as err:
                    if not getattr(self, "classification", False):
                        raise
                    raise _label_error(err, f"{type(self).__name__}.{kind}") from err

        wrapper = batch_method
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown kind {kind!r}")
    wrapper._metaloop_validated = True  # type: ignore[attr-defined]
    return wrapper


#: the methods ``MetaLearner.__init_subclass__`` wraps
CHECKED_METHODS = ("adapt", "meta_loss", "evaluate_batch", "query_log_probs")


def wrap_learner_class(cls: type) -> None:
    """Wrap the checked methods ``cls`` defines itself (``MetaLearner.__init_subclass__``)."""
    for name in CHECKED_METHODS:
        method = cls.__dict__.get(name)
        if callable(method):
            setattr(cls, name, validated(name, method))


__all__ = [
    "check_steps",
    "check_support",
    "check_trainable",
    "unchecked",
    "validated",
    "wrap_learner_class",
]
