"""Measuring one case: wall and CPU time of a call, the floor step (query forward +
backward with the shared parameters), FLOP counts and meta-gradient comparison (steps 2, 4
and 5 of ``metaloop.bench.runner``'s docstring), and the thread-count context."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.functional.speed import num_threads
from metaloop.tasks.base import TaskBatch


# -- timing ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    return _timed2(fn, device)[0]


def _timed2(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def _floor_step(
    model: nn.Module,
    batch: TaskBatch,
    loss: str,
    per_task: bool = False,
    channels_last: bool = False,
) -> Callable[[], None]:
    """Forward + backward of the query loss with the shared parameters: all query examples
    in one call, or (``per_task``) one call per task; ``channels_last``: model and images
    restrided channels-last (pass a copy of the model)."""
    loss_fn = F.mse_loss if loss == "mse" else F.cross_entropy
    params = list(model.parameters())
    if per_task:
        chunks = [(batch.query_x[i], batch.query_y[i]) for i in range(len(batch))]
    else:
        chunks = [(batch.query_x.flatten(0, 1), batch.query_y.flatten(0, 1))]
    if channels_last:
        model.to(memory_format=torch.channels_last)
        chunks = [(x.clone(memory_format=torch.channels_last), y) for x, y in chunks]

    def step() -> None:
        for p in params:
            p.grad = None
        for qx, qy in chunks:
            out = model(qx)
            if loss == "cross_entropy" and (out.dim() != 2 or out.shape[-1] <= int(qy.max())):
                # an encoder without a head (ProtoNet): any scalar of the embedding
                target = out.flatten(1).pow(2).mean()
            else:
                target = loss_fn(out, qy)
            target.backward()

    return step


def _count_flops(fn: Callable[[], None]) -> int | None:
    """Matrix-product and convolution FLOPs of one call of ``fn`` (eager), or ``None``."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    except Exception:  # a kernel the counter cannot trace: no count, not a failed benchmark
        return None
    return int(counter.get_total_flops()) or None


def _grads(model: nn.Module) -> list[Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def _rel_diff(grads: list[Tensor | None], ref: list[Tensor | None]) -> float | None:
    pairs = [(g, r) for g, r in zip(grads, ref) if r is not None]
    if not pairs or any(g is None for g, _ in pairs) or len(grads) != len(ref):
        return None
    scale = max(float(r.abs().max()) for _, r in pairs) or 1.0
    return max(float((g.float() - r.float()).abs().max()) for g, r in pairs) / scale


@contextlib.contextmanager
def _maybe_threads(threads: int | None) -> Iterator[None]:
    with num_threads(threads):
        yield
