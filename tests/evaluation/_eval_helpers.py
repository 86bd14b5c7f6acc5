"""Small learners and Gaussian-blob tasks shared by the evaluation tests."""

from __future__ import annotations

import torch

from metaloop.algorithms import MAML, ProtoNet
from metaloop.models import MLP
from metaloop.tasks import TaskBatch


def protonet(seed: int) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(MLP(2, 4, hidden=(8,)))


def maml(seed: int) -> MAML:
    torch.manual_seed(seed)
    return MAML(MLP(2, 3, hidden=(8,)), inner_lr=0.5, inner_steps=1, loss="cross_entropy")


class Blobs:
    """3-way tasks of 2-D Gaussian blobs of unit spread around random centres."""

    ways = 3

    def __init__(self, shots: int = 2, queries: int = 4, spread: float = 2.0) -> None:
        self.shots, self.queries, self.spread = shots, queries, spread

    def sample(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        centres = torch.randn(tasks, self.ways, 1, 2, generator=generator) * self.spread

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = centres + torch.randn(tasks, self.ways, n, 2, generator=generator)
            y = torch.arange(self.ways).repeat_interleave(n).expand(tasks, -1)
            return x.reshape(tasks, -1, 2), y.contiguous()

        return TaskBatch(*draw(self.shots), *draw(self.queries), ways=self.ways)
