"""The throughput workloads of ``BENCHMARKS.md``, on random tensors of the right shapes.

Throughput does not depend on the pixel values, so no dataset is needed: inputs are
standard normal, labels are ``0 .. ways-1`` repeated ``shots`` (``queries``) times per
task, sinusoid targets are ``A sin(x - phi)`` as in the task family.

=========  ==================================================================================
workload   cases
=========  ==================================================================================
sinusoid   MLP 1-40-40-1, 10 support + 10 query points, meta-batch 25, 1 inner step
           (lr 0.01), second order
omniglot   Conv4-64 (strided, batch norm, MAML's Omniglot model) on 1x28x28, 5-way 1-shot,
           15 queries per class, meta-batch 32, 1 inner step (lr 0.4); second and first
           order
memory     Conv4-32 (max-pool, batch norm) on 3x84x84, 5-way 5-shot, 15 queries per class,
           meta-batch 4, second order (lr 0.01); 1, 5 and 10 inner steps: peak memory
protonet   Conv4-64 (max-pool, batch norm, no head) on 1x28x28, 60-way 5-shot 5-query, one
           episode per meta-batch
=========  ==================================================================================

The data-path workload ``sampler`` (episode batches/s of the Omniglot sampler, in-process
and with ``DataLoader`` workers) is not a meta-step and lives in ``metaloop.bench.sampler``.

Batch norm is the ``batch_episode`` policy (batch statistics, no running statistics, the
MAML convention), which ``vmap`` can vectorize.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from metaloop.tasks.base import TaskBatch


@dataclass(frozen=True)
class Case:
    """One measured configuration of a workload."""

    label: str
    kind: str  # "maml" or "protonet"
    make_model: Callable[[], nn.Module]
    make_batch: Callable[[torch.Generator], TaskBatch]
    meta_batch: int
    loss: str
    inner_lr: float = 0.0
    inner_steps: int = 0
    first_order: bool = False
    engines: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    cases: tuple[Case, ...]
    repeats: int
    warmup: int = 1


def classification_batch(
    tasks: int,
    ways: int,
    shots: int,
    queries: int,
    shape: tuple[int, ...],
    generator: torch.Generator,
) -> TaskBatch:
    """Random inputs ``[tasks, ways*shots, *shape]`` with labels ``0..ways-1`` per class."""
    sx = torch.randn(tasks, ways * shots, *shape, generator=generator)
    qx = torch.randn(tasks, ways * queries, *shape, generator=generator)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy, ways=ways)


def sinusoid_batch(tasks: int, shots: int, queries: int, generator: torch.Generator) -> TaskBatch:
    """``y = A sin(x - phi)``, ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]``, ``x ~ U[-5, 5]``."""
    amp = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=generator)
    phase = math.pi * torch.rand(tasks, 1, 1, generator=generator)
    x = -5.0 + 10.0 * torch.rand(tasks, shots + queries, 1, generator=generator)
    y = amp * torch.sin(x - phase)
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def _mlp() -> nn.Module:
    from metaloop.models import MLP

    return MLP(1, 1, hidden=(40, 40))


def _conv4(**kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from metaloop.models import Conv4

        return Conv4(**kwargs)

    return make


MAML_ENGINES = (
    "plain",
    "loop",
    "vmap",
    "vmap+checkpoint",
    "vmap+compile",
    "vmap+compile=max-autotune-no-cudagraphs",
)
# second-order vmap through batch norm runs eagerly (a PyTorch bug; see GradientMetaLearner),
# so compile goes with the loop here (one task's meta-gradient compiled, called per task);
# channels-last matters for the loop only
CONV_ENGINES = ("plain", "loop", "loop+channels_last", "loop+compile+channels_last", "vmap")
MEMORY_ENGINES = ("plain", "loop", "vmap", "vmap+checkpoint", "loop+checkpoint")
PROTONET_ENGINES = ("plain", "protonet", "protonet+channels_last", "protonet+channels_last+bf16")


def _sinusoid() -> Workload:
    case = Case(
        label="second_order",
        kind="maml",
        make_model=_mlp,
        make_batch=lambda g: sinusoid_batch(25, 10, 10, g),
        meta_batch=25,
        loss="mse",
        inner_lr=0.01,
        inner_steps=1,
        engines=MAML_ENGINES,
        settings={"model": "MLP 1-40-40-1", "support": 10, "query": 10},
    )
    return Workload(
        "sinusoid", "MAML sinusoid regression (Finn et al. 2017)", (case,), repeats=30, warmup=3
    )


def _omniglot() -> Workload:
    make_model = _conv4(
        in_channels=1, ways=5, hidden=64, image_size=28, norm="batch_episode", strided=True
    )
    cases = tuple(
        Case(
            label=order,
            kind="maml",
            make_model=make_model,
            make_batch=lambda g: classification_batch(32, 5, 1, 15, (1, 28, 28), g),
            meta_batch=32,
            loss="cross_entropy",
            inner_lr=0.4,
            inner_steps=1,
            first_order=order == "first_order",
            engines=CONV_ENGINES,
            settings={
                "model": "Conv4-64 strided, batch norm",
                "ways": 5,
                "shots": 1,
                "queries": 15,
                "image": "1x28x28",
            },
        )
        for order in ("second_order", "first_order")
    )
    return Workload("omniglot", "MAML Omniglot 5-way 1-shot", cases, repeats=3)


def _memory() -> Workload:
    make_model = _conv4(in_channels=3, ways=5, hidden=32, image_size=84, norm="batch_episode")
    cases = tuple(
        Case(
            label=f"steps={k}",
            kind="maml",
            make_model=make_model,
            make_batch=lambda g: classification_batch(4, 5, 5, 15, (3, 84, 84), g),
            meta_batch=4,
            loss="cross_entropy",
            inner_lr=0.01,
            inner_steps=k,
            engines=MEMORY_ENGINES,
            settings={
                "model": "Conv4-32 max-pool, batch norm",
                "ways": 5,
                "shots": 5,
                "queries": 15,
                "image": "3x84x84",
                "inner_steps": k,
            },
        )
        for k in (1, 5, 10)
    )
    return Workload("memory", "second-order MAML peak memory as inner steps grow", cases, repeats=2)


def _protonet() -> Workload:
    case = Case(
        label="60-way 5-shot",
        kind="protonet",
        make_model=_conv4(in_channels=1, ways=None, hidden=64, image_size=28, norm="batch_episode"),
        make_batch=lambda g: classification_batch(1, 60, 5, 5, (1, 28, 28), g),
        meta_batch=1,
        loss="cross_entropy",
        engines=PROTONET_ENGINES,
        settings={
            "model": "Conv4-64 max-pool, batch norm",
            "ways": 60,
            "shots": 5,
            "queries": 5,
            "image": "1x28x28",
        },
    )
    return Workload(
        "protonet", "Prototypical Networks, 60-way training episodes", (case,), repeats=5
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "sinusoid": _sinusoid,
    "omniglot": _omniglot,
    "memory": _memory,
    "protonet": _protonet,
}


def get_workload(name: str) -> Workload:
    if name == "sampler":
        raise ValueError(
            "'sampler' is the data-path workload: run it with "
            "metaloop.bench.sampler.run_sampler_benchmark (python -m metaloop.bench sampler)"
        )
    if name not in WORKLOADS:
        raise ValueError(
            f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)} "
            "(or sampler, the data path)"
        )
    return WORKLOADS[name]()
