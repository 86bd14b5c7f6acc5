"""Tasks and task batches: the unit of data every algorithm consumes.

A *task* is a small learning problem split in two: a support set ``(x_s, y_s)`` that the
inner loop adapts on and a query set ``(x_q, y_q)`` that judges the adaptation.  A
``TaskBatch`` holds the same four tensors with a leading task dimension ``T``, so a whole
meta-batch moves as four tensors and can be mapped over with ``torch.func.vmap``.

A ``TaskFamily`` is anything that samples task batches from a seeded ``torch.Generator``;
the same generator state always gives the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from metaloop.validate import is_int


class TaskError(ValueError):
    """A task or task batch is malformed (shapes, labels, non-finite values)."""


@dataclass(frozen=True)
class Task:
    """One task: support set to adapt on, query set to evaluate the adaptation.

    Shapes: ``support_x [S, *feature]``, ``support_y [S, *target]``,
    ``query_x [Q, *feature]``, ``query_y [Q, *target]``.  For classification the targets
    are integer labels in ``0 .. ways-1`` and ``ways`` is set.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def support(self) -> tuple[Tensor, Tensor]:
        return self.support_x, self.support_y

    @property
    def query(self) -> tuple[Tensor, Tensor]:
        return self.query_x, self.query_y

    def to(self, device: torch.device | str) -> Task:
        return Task(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            self.ways,
            self.info,
        )


@dataclass(frozen=True)
class TaskBatch:
    """``T`` tasks of identical shapes stacked along a leading task dimension.

    Shapes: ``support_x [T, S, *feature]``, ``support_y [T, S, *target]``,
    ``query_x [T, Q, *feature]``, ``query_y [T, Q, *target]``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, index: int) -> Task:
        return Task(
            self.support_x[index],
            self.support_y[index],
            self.query_x[index],
            self.query_y[index],
            self.ways,
            _slice_info(self.info, index, len(self)),
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def num_tasks(self) -> int:
        return len(self)

    def split(self, chunk_size: int) -> list[TaskBatch]:
        """Split into consecutive sub-batches of at most ``chunk_size`` tasks."""
        if chunk_size <= 0:
            raise TaskError(f"chunk_size must be a positive integer, got {chunk_size}")
        return [
            TaskBatch(
                self.support_x[i : i + chunk_size],
                self.support_y[i : i + chunk_size],
                self.query_x[i : i + chunk_size],
                self.query_y[i : i + chunk_size],
                self.ways,
                _slice_info(self.info, slice(i, i + chunk_size), len(self)),
            )
            for i in range(0, len(self), chunk_size)
        ]

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            self.ways,
            self.info,
        )

    @staticmethod
    def stack(tasks: list[Task]) -> TaskBatch:
        """Stack tasks of identical shapes into a batch."""
        if not tasks:
            raise TaskError("cannot stack an empty list of tasks")
        ways = tasks[0].ways
        try:
            return TaskBatch(
                torch.stack([t.support_x for t in tasks]),
                torch.stack([t.support_y for t in tasks]),
                torch.stack([t.query_x for t in tasks]),
                torch.stack([t.query_y for t in tasks]),
                ways,
            )
        except RuntimeError as err:
            raise TaskError(f"tasks in a batch must share shapes: {err}") from err


def _slice_info(info: dict[str, Any], index: int | slice, tasks: int) -> dict[str, Any]:
    """Per-task entries of ``info`` (tensors with a leading task dimension), sliced."""
    return {
        k: v[index] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == tasks else v
        for k, v in info.items()
    }


def validate_batch(
    batch: TaskBatch, *, classification: bool | None = None, check_finite: bool = True
) -> None:
    """Check a batch before it reaches an algorithm; raise ``TaskError`` naming the problem.

    Checks: four tensors with a common task dimension, non-empty support and query,
    support and query with the same feature shape, finite inputs and regression targets
    (unless ``check_finite=False``: the one check that reads every value), and for
    classification integer labels in ``0 .. ways-1``.
    """
    names = ("support_x", "support_y", "query_x", "query_y")
    tensors = [getattr(batch, n) for n in names]
    for name, t in zip(names, tensors):
        if not isinstance(t, Tensor):
            raise TaskError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise TaskError(f"{name} must have shape [tasks, examples, ...], got {tuple(t.shape)}")
    sx, sy, qx, qy = tensors
    if len({t.shape[0] for t in tensors}) != 1:
        raise TaskError(
            "support and query tensors must share the task dimension, got "
            + ", ".join(f"{n}={tuple(t.shape)}" for n, t in zip(names, tensors))
        )
    if sx.shape[1] == 0:
        raise TaskError("support set is empty: each task needs at least one support example")
    if qx.shape[1] == 0:
        raise TaskError("query set is empty: each task needs at least one query example")
    if sx.shape[1] != sy.shape[1] or qx.shape[1] != qy.shape[1]:
        raise TaskError(
            f"inputs and targets disagree in example count: support {sx.shape[1]} vs "
            f"{sy.shape[1]}, query {qx.shape[1]} vs {qy.shape[1]}"
        )
    if sx.shape[2:] != qx.shape[2:]:
        raise TaskError(
            f"support and query features differ in shape: {tuple(sx.shape[2:])} vs "
            f"{tuple(qx.shape[2:])}"
        )
    if sy.shape[2:] != qy.shape[2:]:
        raise TaskError(
            f"support and query targets differ in shape: {tuple(sy.shape[2:])} vs "
            f"{tuple(qy.shape[2:])}"
        )
    for name, t in (("support_x", sx), ("query_x", qx), ("support_y", sy), ("query_y", qy)):
        if check_finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TaskError(f"{name} contains NaN or Inf values; task data must be finite")
    is_cls = classification if classification is not None else batch.ways is not None
    if is_cls:
        for name, t in (("support_y", sy), ("query_y", qy)):
            if t.is_floating_point():
                raise TaskError(f"{name} must hold integer class labels, got dtype {t.dtype}")
        ways = batch.ways
        if ways is not None:
            low = int(min(sy.min(), qy.min()))
            high = int(max(sy.max(), qy.max()))
            if low < 0 or high >= ways:
                raise TaskError(
                    f"labels must lie in 0..{ways - 1} for a {ways}-way task, found range "
                    f"{low}..{high}"
                )


@runtime_checkable
class TaskFamily(Protocol):
    """A distribution over tasks.

    ``sample(batch_size, generator)`` draws ``batch_size`` tasks as one ``TaskBatch``;
    the same generator state gives the same batch.  ``shots`` and ``queries`` are the
    support and query sizes per task (per class for classification).
    """

    shots: int
    queries: int

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch: ...


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Validate an integer size argument and return it."""
    if not is_int(value):
        raise TaskError(f"{name} must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else ">= 1"
        raise TaskError(f"{name} must be {bound}, got {value}")
    return value
