"""The same meta-training on ``torch.distributed`` (launch with ``torchrun``).

Every process holds the whole learner and the same task generator.  Each iteration all
processes draw the same meta-batch; process ``r`` of ``W`` keeps tasks ``r, r+W, r+2W, ...``
(a strided shard, so shard sizes differ by at most one), computes its share of the
meta-loss, and the gradients are summed across processes with ``all_reduce``.  The result
is the gradient of the mean meta-loss over the whole meta-batch, exactly what a single
process computes, up to the order of floating-point additions.  Only rank 0 writes logs
and checkpoints; all ranks resume from the same run directory.

    torchrun --nproc_per_node 2 -m metaloop train configs/sinusoid-maml.toml --run-dir runs/ddp
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from metaloop.tasks.base import TaskBatch
from metaloop.train.trainer import Trainer


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment variables."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
    return world()


def shutdown() -> None:
    """Wait for every process, then tear down the default process group.

    The barrier matters: with gloo, a process that destroys the group while a peer is
    still finishing its last collective (or writing rank 0's checkpoint) can abort the
    peer with ``terminate called without an active exception``.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(batch: TaskBatch, rank: int, world_size: int) -> TaskBatch:
    """Tasks ``rank, rank + world_size, ...`` of the batch."""
    if len(batch) < world_size:
        raise ValueError(
            f"meta_batch_size ({len(batch)}) must be >= the number of processes ({world_size})"
        )
    index = torch.arange(rank, len(batch), world_size)
    return TaskBatch(
        batch.support_x[index],
        batch.support_y[index],
        batch.query_x[index],
        batch.query_y[index],
        batch.ways,
        batch.info,
    )


class DistributedTrainer(Trainer):
    """``Trainer`` whose meta-batch is split across the processes of a process group."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank, self.world_size = world()
        self.is_main = self.rank == 0
        self._broadcast_parameters()

    def _broadcast_parameters(self) -> None:
        if self.world_size > 1:
            with torch.no_grad():
                for p in self.learner.parameters():
                    dist.broadcast(p.data, src=0)

    def step(self, batch: TaskBatch) -> dict[str, float]:
        if self.world_size == 1:
            return super().step(batch)
        local = shard(batch, self.rank, self.world_size)
        self.learner.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = self.learner.meta_loss(local)
        weight = len(local) / len(batch)
        (loss * weight).backward()
        # one flat all-reduce: gradients, then the weighted metrics and the finiteness flag
        params = list(self.learner.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        keys = sorted(metrics)
        extra = torch.tensor(
            [weight * metrics[k] for k in keys] + [float(torch.isfinite(loss))],
            dtype=grads[0].dtype,
        )
        flat = torch.cat([g.reshape(-1) for g in grads] + [extra])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
        reduced = flat[offset:]
        summed = {k: float(v) for k, v in zip(keys, reduced[:-1])}
        if float(reduced[-1]) < self.world_size:
            return self._nonfinite("meta-loss", float("nan"), summed)
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        if not torch.isfinite(norm):
            return self._nonfinite("meta-gradient", float(norm), summed)
        summed["grad_norm"] = float(norm)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return summed
