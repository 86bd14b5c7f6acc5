"""The outer loop for meta-RL learners (``RL2``, ``MAMLRL``).

A meta-RL learner has ``env`` (a ``metaloop.tasks.envs.MetaEnv``), ``set_env(env)`` (act
in another environment of the family, say a longer horizon), ``meta_loss(tasks, seed)``: a
scalar whose gradient is the meta-gradient for a batch of tasks, plus metrics, and the
class attribute ``learns_in_context``: ``True`` when it adapts within a trial without
gradient steps (RL²: evaluated by ``rollout(tasks, seed)``), ``False`` when it adapts by
gradient steps (MAML-RL: evaluated by ``adapt(tasks, steps, seed)``).
``fit_meta_rl`` samples ``meta_batch_size`` tasks per iteration from a seeded generator,
gives each iteration its own environment seed, and steps the optimiser; it logs one JSON
line per ``log_every`` iterations (the metrics averaged over them) to ``log`` (a path or
``None``) and returns the logged records.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch
from torch import nn

from metaloop.validate import is_int


def fit_meta_rl(
    learner: nn.Module,
    iterations: int,
    meta_batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    grad_clip: float | None = 1.0,
    log_every: int = 50,
    log: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Meta-train ``learner`` with Adam for ``iterations`` meta-updates."""
    for name, value in (("iterations", iterations), ("meta_batch_size", meta_batch_size)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=lr)
    records: list[dict[str, Any]] = []
    running: dict[str, float] = {}
    start = time.perf_counter()
    out = open(log, "a") if log is not None else None
    try:
        for it in range(1, iterations + 1):
            tasks = learner.env.sample_tasks(meta_batch_size, generator)
            learner.train()
            loss, metrics = learner.meta_loss(tasks, seed=1_000_003 * it + seed)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(f"non-finite meta-loss {float(loss)} at iteration {it}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(learner.parameters(), grad_clip)
            optimizer.step()
            for k, v in metrics.items():
                running[k] = running.get(k, 0.0) + v / log_every
            if it % log_every == 0 or it == iterations:
                record = {"iteration": it, "seconds": round(time.perf_counter() - start, 1)}
                record.update({k: round(v, 5) for k, v in running.items()})
                records.append(record)
                running = {}
                if out is not None:
                    out.write(json.dumps(record) + "\n")
                    out.flush()
    finally:
        if out is not None:
            out.close()
    return records


__all__ = ["fit_meta_rl"]
