"""The standard few-shot evaluation protocol.

Draw ``episodes`` test tasks (600 by default, as in the literature) from a seeded
generator, adapt on each support set with every requested number of inner steps, and
report per step count the mean query metric with its 95% confidence interval
``1.96 * std / sqrt(episodes)`` (sample standard deviation over episodes), its median and
the number of divergent episodes (``metaloop.evaluation.tails``: query loss not finite or
above ``divergence_factor`` times the loss before adaptation), so that a mean carried by a
few blown-up episodes says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from metaloop.algorithms.base import MetaLearner
from metaloop.evaluation.tails import (
    DIVERGENCE_FACTOR,
    TailSummary,
    check_divergence_factor,
    tail_summary,
)
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
    """Per step count, an ``Estimate`` per metric (``loss``; ``accuracy`` for classification),
    and the loss's ``TailSummary`` (divergent episodes under ``divergence_factor``)."""

    metrics: dict[int, dict[str, Estimate]]
    episodes: int
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)
    tails: dict[int, TailSummary] = field(default_factory=dict)
    divergence_factor: float | None = None

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
            **(
                {
                    "tails": {str(s): asdict(t) for s, t in sorted(self.tails.items())},
                    "divergence": self.divergence_rule(),
                }
                if self.tails
                else {}
            ),
            **self.extra,
        }

    def divergence_rule(self) -> str:
        """What ``divergent`` means in this result, in words."""
        if any(t.factor is not None for t in self.tails.values()):
            return (
                "query loss not finite or above "
                f"{self.divergence_factor:g}x the loss before adaptation (0 steps)"
            )
        return "query loss not finite"

    def __str__(self) -> str:
        lines = [f"{self.episodes} episodes, mean +- 95% CI"]
        for s, m in sorted(self.metrics.items()):
            parts = []
            for k, e in m.items():
                if k == "accuracy":
                    parts.append(f"accuracy {100 * e.mean:.2f} +- {100 * e.ci95:.2f}%")
                else:
                    parts.append(f"{k} {e.mean:.4g} +- {e.ci95:.2g} (median {e.median:.3g})")
            if s in self.tails:
                parts.append(self.tails[s].describe())
            lines.append(f"  {s:>3} steps: " + ", ".join(parts))
        heavy = {s: t for s, t in sorted(self.tails.items()) if t.divergent}
        if self.tails:
            lines.append(f"  divergent: {self.divergence_rule()}")
        if heavy:
            counts = ", ".join(f"{t.divergent} at {s} steps" for s, t in heavy.items())
            lines.append(
                f"  heavy tail ({counts}): the mean and its CI there are carried by those "
                "episodes; the median is the typical episode"
            )
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
    batch checked against it (its ``check_batch``).  ``progress``
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
            if done == 0:
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
    divergence_factor: float = DIVERGENCE_FACTOR,
) -> EvalResult:
    """Evaluate ``learner`` on ``episodes`` tasks from ``family``.

    ``steps`` lists the inner step counts to report (gradient-based learners; metric
    learners ignore it and report under their own key).  Tasks come from
    ``torch.Generator().manual_seed(seed)`` (``evaluation_batches``), so two learners evaluated
    with the same seed see the same episodes.  ``progress`` shows a progress bar.

    Per step count the loss also gets a ``TailSummary`` (``result.tails``): an episode is
    divergent when its query loss is not finite or above ``divergence_factor`` times its
    query loss before adaptation (``metaloop.evaluation.tails``).  To know that loss the
    learner is also evaluated at 0 steps whenever a positive step count is asked for (one
    more query forward per episode; it is reported only if asked for).  The loss's median
    counts a non-finite (even NaN) episode as the worst one.
    """
    if isinstance(steps, int):
        steps = (steps,)
    factor = check_divergence_factor(divergence_factor)
    wanted = tuple(steps) if steps is not None else tuple(learner.default_eval_steps)
    with_initial = bool(wanted) and max(wanted) > 0 and 0 not in wanted
    asked = (0, *wanted) if with_initial else steps
    collected: dict[int, dict[str, list[torch.Tensor]]] = {}
    batches = evaluation_batches(learner, family, episodes, seed, batch_size, device, progress)
    for batch in batches:
        for s, metrics in learner.evaluate_batch(batch, asked).items():
            for k, v in metrics.items():
                collected.setdefault(s, {}).setdefault(k, []).append(v.detach().cpu())
    values = {s: {k: torch.cat(vs) for k, vs in m.items()} for s, m in collected.items()}
    initial = values.get(0, {}).get("loss")
    tails = {
        s: tail_summary(m["loss"], initial if s != 0 else None, factor)
        for s, m in values.items()
        if "loss" in m and not (with_initial and s == 0)
    }
    if with_initial:
        values.pop(0, None)
    result = {s: {k: estimate(v) for k, v in m.items()} for s, m in values.items()}
    for s, tail in tails.items():  # a NaN episode is the worst one, not a NaN median
        result[s]["loss"] = replace(result[s]["loss"], median=tail.median)
    return EvalResult(result, episodes, seed, tails=tails, divergence_factor=factor)
