"""The standard few-shot evaluation protocol.

Draw ``episodes`` test tasks (600 by default, as in the literature) from a seeded
generator, adapt on each support set with every requested number of inner steps, and
report per step count the mean query metric with its 95% confidence interval
``1.96 * std / sqrt(episodes)`` (sample standard deviation over episodes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from metaloop.algorithms.base import MetaLearner
from metaloop.tasks.base import TaskBatch, TaskFamily, check_positive


@dataclass(frozen=True)
class Estimate:
    """A mean over episodes with its 95% confidence half-width."""

    mean: float
    ci95: float
    std: float
    episodes: int
    median: float = float("nan")

    def __str__(self) -> str:
        return f"{self.mean:.4g} +- {self.ci95:.2g}"


def estimate(values: torch.Tensor) -> Estimate:
    """Mean and ``1.96 * std / sqrt(n)`` of per-episode values."""
    v = values.detach().double().flatten()
    n = v.numel()
    if n == 0:
        raise ValueError("cannot estimate a mean from zero episodes")
    std = float(v.std(unbiased=True)) if n > 1 else 0.0
    return Estimate(float(v.mean()), 1.96 * std / math.sqrt(n), std, n, float(v.median()))


@dataclass
class EvalResult:
    """Per step count, an ``Estimate`` per metric (``loss``; ``accuracy`` for classification)."""

    metrics: dict[int, dict[str, Estimate]]
    episodes: int
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, steps: int) -> dict[str, Estimate]:
        return self.metrics[steps]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"episodes", "seed", "steps": {"1": {"loss": {...}}}, ...}``."""
        return {
            "episodes": self.episodes,
            "seed": self.seed,
            "steps": {
                str(s): {k: asdict(e) for k, e in m.items()}
                for s, m in sorted(self.metrics.items())
            },
            **self.extra,
        }

    def __str__(self) -> str:
        lines = [f"{self.episodes} episodes, mean +- 95% CI"]
        for s, m in sorted(self.metrics.items()):
            parts = []
            for k, e in m.items():
                if k == "accuracy":
                    parts.append(f"accuracy {100 * e.mean:.2f} +- {100 * e.ci95:.2f}%")
                else:
                    parts.append(f"{k} {e.mean:.4g} +- {e.ci95:.2g} (median {e.median:.3g})")
            lines.append(f"  {s:>3} steps: " + ", ".join(parts))
        return "\n".join(lines)


def evaluation_batches(
    learner: MetaLearner,
    family: TaskFamily,
    episodes: int,
    seed: int,
    batch_size: int = 25,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Iterator[TaskBatch]:
    """The evaluation batches: ``episodes`` tasks from ``family`` in batches of
    ``batch_size``, drawn from ``torch.Generator().manual_seed(seed)``, with ``learner`` in
    ``eval()`` mode while they are consumed (its mode is restored afterwards) and the first
    batch checked against it (``check_batch``, when the learner has one).  ``progress``
    shows a progress bar (stderr) counting the episodes consumed."""
    check_positive("episodes", episodes)
    check_positive("batch_size", batch_size)
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    was_training = learner.training
    learner.eval()
    done = 0
    bar = tqdm(
        total=episodes, disable=not progress, dynamic_ncols=True, unit="episode", desc="evaluate"
    )
    try:
        while done < episodes:
            n = min(batch_size, episodes - done)
            batch = family.sample(n, g).to(device)
            if done == 0 and hasattr(learner, "check_batch"):
                learner.check_batch(batch)  # model output vs the episode's ways/targets
            yield batch
            done += n
            bar.update(n)
    finally:
        bar.close()
        learner.train(was_training)


def evaluate(
    learner: MetaLearner,
    family: TaskFamily,
    episodes: int = 600,
    steps: Sequence[int] | int | None = None,
    seed: int = 12345,
    batch_size: int = 25,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Evaluate ``learner`` on ``episodes`` tasks from ``family``.

    ``steps`` lists the inner step counts to report (gradient-based learners; metric
    learners ignore it and report under their own key).  Tasks come from
    ``torch.Generator().manual_seed(seed)`` (``evaluation_batches``), so two learners evaluated
    with the same seed see the same episodes.  ``progress`` shows a progress bar.
    """
    if isinstance(steps, int):
        steps = (steps,)
    collected: dict[int, dict[str, list[torch.Tensor]]] = {}
    batches = evaluation_batches(learner, family, episodes, seed, batch_size, device, progress)
    for batch in batches:
        for s, metrics in learner.evaluate_batch(batch, steps).items():
            for k, v in metrics.items():
                collected.setdefault(s, {}).setdefault(k, []).append(v.detach().cpu())
    result = {s: {k: estimate(torch.cat(vs)) for k, vs in m.items()} for s, m in collected.items()}
    return EvalResult(result, episodes, seed)
