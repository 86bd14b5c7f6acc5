"""Task diversity: does meta-training on a wider task distribution give an initialisation
that adapts better to tasks outside it?

* ``scaled_family``: a copy of a family whose interval parameters (``Sinusoid``'s
  ``amplitude`` and ``phase``, say) are widened or narrowed about their centre by
  ``width`` (1 = as configured) and moved by ``shift`` times their configured width.
* ``diversity_sweep``: for each training width, meta-train a fresh learner on the scaled
  family and score it (post-adaptation query loss, mean and 95% interval) on test families
  (in-range and shifted); the same test tasks for every width.

The claim under test is a common one; the sweep reports what the numbers say, either way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from metaloop.algorithms.base import MetaLearner
from metaloop.diagnostics.core import adam_meta_train
from metaloop.tasks.base import TaskFamily


def scaled_family(
    family: TaskFamily, attrs: Sequence[str], width: float = 1.0, shift: float = 0.0
) -> TaskFamily:
    """``family`` with each interval ``(low, high)`` named in ``attrs`` replaced by
    ``centre + shift * (high - low) +- width * (high - low) / 2``."""
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    out = copy.copy(family)
    for name in attrs:
        value = getattr(family, name, None)
        if not (isinstance(value, tuple) and len(value) == 2):
            raise ValueError(
                f"{type(family).__name__}.{name} is not an interval (low, high): {value!r}"
            )
        low, high = value
        centre, span = (low + high) / 2 + shift * (high - low), high - low
        setattr(out, name, (centre - width * span / 2, centre + width * span / 2))
    return out


@dataclass
class Score:
    mean: float
    half_width: float  # 1.96 * std / sqrt(n)


@dataclass
class DiversityPoint:
    width: float
    iterations: int
    scores: dict[str, Score] = field(default_factory=dict)  # test family label -> score


def _score(learner: MetaLearner, family: TaskFamily, episodes: int, steps, seed: int) -> Score:
    batch = family.sample(episodes, torch.Generator().manual_seed(seed))
    result = learner.evaluate_batch(batch, None if steps is None else (steps,))
    losses = result[max(result)]["loss"].double()
    return Score(float(losses.mean()), 1.96 * float(losses.std()) / math.sqrt(len(losses)))


def diversity_sweep(
    make_learner: Callable[[], MetaLearner],
    train_families: Mapping[float, TaskFamily],
    test_families: Mapping[str, TaskFamily],
    iterations: int = 500,
    meta_batch_size: int = 10,
    outer_lr: float = 1e-3,
    episodes: int = 200,
    steps: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[DiversityPoint]:
    """Meta-train ``make_learner()`` (Adam, ``iterations`` steps) on each training family
    (keyed by its width) and score it on every test family."""
    if not train_families or not test_families:
        raise ValueError("diversity_sweep needs at least one training and one test family")
    points = []
    for width, family in train_families.items():
        torch.manual_seed(seed)
        learner = make_learner()
        gen = torch.Generator().manual_seed(seed + 1)
        sample = lambda f=family, g=gen: f.sample(meta_batch_size, g)  # noqa: E731
        adam_meta_train(learner, sample, iterations, outer_lr)
        point = DiversityPoint(width, iterations)
        for j, (label, test) in enumerate(test_families.items()):
            point.scores[label] = _score(learner, test, episodes, steps, seed + 100 + j)
        points.append(point)
        if log is not None:
            log(
                f"width {width:g}: "
                + ", ".join(
                    f"{k} {v.mean:.4g} +- {v.half_width:.2g}" for k, v in point.scores.items()
                )
            )
    return points
