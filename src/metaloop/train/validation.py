"""Meta-validation for ``Trainer.fit``: the fixed held-out batches, the per-step-count
metrics and the figure that selects the best checkpoint.

The validation tasks are drawn once, with a generator of their own seeded from the run's
seed, so every validation of a run (and of a resumed run) sees the same tasks.  The
learner adapts on each task's support set with every step count ``s`` asked for and
reports its mean query metrics; with several step counts each one's metrics are also
logged as ``name@s``.  The selecting figure is

    V = (1 / |S|) * sum_{s in S} mean_query_metric(s)

over the step counts ``S`` of ``select_on`` (``"loss@1,5,10"``; a bare ``"loss"``: the
largest step count evaluated); ``accuracy`` is maximised, every other metric minimised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from metaloop.algorithms.base import MetaLearner
from metaloop.tasks.base import TaskBatch, TaskFamily
from metaloop.train.checkpoint import BEST, atomic_save
from metaloop.validate import is_int

if TYPE_CHECKING:
    from metaloop.train.trainer import Trainer

#: the validation generator's seed is the run's seed plus this offset
VALIDATION_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Selection:
    """What validation runs and how it picks the best learner.

    ``steps``: the step counts validation adapts with (``None``: the learner's default);
    ``select_steps``: the step counts whose mean selects (``None``: the largest evaluated);
    ``metric``: the metric that selects (``"loss"``, ``"accuracy"``); ``name``: how the
    selecting figure is reported (``select_on`` as given, else ``metric``).
    """

    steps: tuple[int, ...] | None
    select_steps: tuple[int, ...] | None
    metric: str
    name: str

    @classmethod
    def parse(
        cls, steps: Sequence[int] | None, select_on: str | None, classification: bool
    ) -> Selection:
        """The selection from ``fit``'s ``validation_steps`` and ``select_on`` (``"loss@10"``,
        ``"loss@1,5,10"``, ``"accuracy"``; default: accuracy for classification, else loss)."""
        if steps is not None:
            steps = tuple(steps)
            if not steps or any(not is_int(s) or s < 0 for s in steps):
                raise ValueError(
                    f"validation_steps must be a non-empty list of integers >= 0, got {list(steps)}"
                )
        if select_on is None:
            metric = "accuracy" if classification else "loss"
            return cls(steps, None, metric, metric)
        metric, at, step_text = str(select_on).partition("@")
        counts = step_text.split(",")
        if not metric or (at and not all(c.strip().isdigit() for c in counts)):
            raise ValueError(
                f"select_on must be 'metric', 'metric@steps' or 'metric@steps,steps,...' (for "
                f"example 'loss@10', 'loss@1,5,10' or 'accuracy@1'), got {select_on!r}"
            )
        if not at:
            return cls(steps, None, metric, select_on)
        chosen = tuple(dict.fromkeys(int(c) for c in counts))
        if steps is None:
            steps = chosen
        for step in chosen:
            if step not in steps:
                raise ValueError(
                    f"select_on {select_on!r} names {step} steps, which validation_steps "
                    f"{list(steps)} does not include"
                )
        return cls(steps, chosen, metric, select_on)

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (a non-finite value never does)."""
        maximize = self.metric == "accuracy"
        return math.isfinite(value) and (
            best is None or (value > best if maximize else value < best)
        )

    def measure(
        self, learner: MetaLearner, batches: Sequence[TaskBatch], device: torch.device
    ) -> tuple[dict[str, float], float]:
        """``(validation metrics, selecting figure)`` of ``learner`` on ``batches``."""
        val = evaluate_tasks(learner, batches, device, self.steps, self.select_steps)
        if self.metric not in val:
            raise ValueError(
                f"select_on {self.name!r}: the learner's validation reports "
                f"{', '.join(k for k in val if '@' not in k)}"
            )
        return val, val[self.metric]


def validation_batches(
    family: TaskFamily | None, tasks: int, meta_batch_size: int, seed: int
) -> list[TaskBatch]:
    """``tasks`` tasks of ``family`` in batches of at most ``meta_batch_size``, drawn with
    their own generator (seed ``seed + VALIDATION_SEED_OFFSET``); none without a family."""
    if family is None:
        return []
    g = torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET)
    sizes = [min(meta_batch_size, tasks - i) for i in range(0, tasks, meta_batch_size)]
    return [family.sample(n, g) for n in sizes]


def evaluate_tasks(
    learner: MetaLearner,
    batches: Sequence[TaskBatch],
    device: torch.device,
    steps: Sequence[int] | None = None,
    select: int | Sequence[int] | None = None,
) -> dict[str, float]:
    """Mean query metrics of ``learner`` over fixed task batches.

    The metrics at step count ``select`` (default: the largest evaluated; several step
    counts: their mean) keep their plain names (``loss``, ``accuracy``); when several step
    counts are evaluated, each one's metrics are also given as ``name@steps`` (``loss@1``,
    ``loss@10``).  The learner is left in training mode.
    """
    learner.eval()
    sums: dict[int, dict[str, float]] = {}
    count = 0
    for batch in batches:
        result = learner.evaluate_batch(batch.to(device), steps)
        for s, metrics in result.items():
            for k, v in metrics.items():
                sums.setdefault(s, {})[k] = sums.get(s, {}).get(k, 0.0) + float(v.sum())
        count += len(batch)
    learner.train()
    if select is None:
        chosen: Sequence[int] = (max(sums),)
    else:
        chosen = (select,) if isinstance(select, int) else tuple(select)
    missing = [s for s in chosen if s not in sums]
    if missing:
        raise ValueError(
            f"validation at {missing} steps was asked for, but the learner reported step "
            f"counts {sorted(sums)}"
        )
    out = {k: sum(sums[s][k] for s in chosen) / (count * len(chosen)) for k in sums[chosen[0]]}
    if len(sums) > 1:
        for s in sorted(sums):
            out.update({f"{k}@{s}": v / count for k, v in sums[s].items()})
    return out


def validate_and_keep_best(
    trainer: Trainer,
    batches: Sequence[TaskBatch],
    selection: Selection,
    write_path: Path | None,
    config: dict[str, Any] | None,
) -> tuple[dict[str, Any], float]:
    """Validate ``trainer.learner`` on ``batches``; when the selecting figure improves, make
    it the trainer's best and save the learner to ``write_path/best.pt``, else count one
    more validation without improvement.  Returns ``(val record, selecting figure)``."""
    val, value = selection.measure(trainer.learner, batches, trainer.device)
    if selection.improves(value, trainer.best_metric):
        trainer.best_metric, trainer.best_iteration = value, trainer.iteration
        trainer.bad_validations = 0
        if write_path is not None:
            best = {
                "learner": trainer.learner.state_dict(),
                "iteration": trainer.iteration,
                "metric": {selection.name: value},
                "config": config,
            }
            atomic_save(best, write_path / BEST)
    else:
        trainer.bad_validations += 1
    record = {"iteration": trainer.iteration, "split": "val", **val, "best": trainer.best_metric}
    return record, value
