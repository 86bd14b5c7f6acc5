"""Gaussian class-cluster episodes shared by the metric-learner tests."""

from __future__ import annotations

import torch

from metaloop.tasks import TaskBatch


def gaussian_episodes(
    tasks, ways, shots, queries, dim=8, informative=2, seed=0, dtype=torch.float32, ways_attr=True
):
    """Class clusters in the first ``informative`` dims, large noise in the others."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.zeros(tasks, ways, dim, dtype=dtype)
    centers[..., :informative] = 3.0 * torch.randn(
        tasks, ways, informative, generator=g, dtype=dtype
    )
    scale = torch.full((dim,), 3.0, dtype=dtype)
    scale[:informative] = 0.5

    def draw(n):
        y = torch.arange(ways).repeat_interleave(n).expand(tasks, -1)
        noise = torch.randn(tasks, ways * n, dim, generator=g, dtype=dtype) * scale
        return torch.gather(centers, 1, y.unsqueeze(-1).expand(-1, -1, dim)) + noise, y

    sx, sy = draw(shots)
    qx, qy = draw(queries)
    return TaskBatch(sx, sy.clone(), qx, qy.clone(), ways=ways if ways_attr else None)
