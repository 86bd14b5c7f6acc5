"""Task-diversity sweep: interval scaling, and a case whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from metaloop.algorithms import MetaSGD
from metaloop.diagnostics import diversity
from metaloop.models import MLP
from metaloop.tasks import GaussianMean, Sinusoid

torch.set_num_threads(1)


def test_scaled_family_widens_and_shifts_intervals():
    family = Sinusoid(amplitude=(1.0, 3.0), phase=(0.0, math.pi))
    narrow = diversity.scaled_family(family, ["amplitude", "phase"], width=0.5)
    assert narrow.amplitude == (1.5, 2.5) and narrow.phase == pytest.approx(
        (math.pi / 4, 3 * math.pi / 4)
    )
    shifted = diversity.scaled_family(family, ["amplitude"], shift=1.0)
    assert shifted.amplitude == (3.0, 5.0) and shifted.phase == family.phase
    assert family.amplitude == (1.0, 3.0)  # the original is untouched
    amp = shifted.sample(200, torch.Generator().manual_seed(0)).info["amplitude"]
    assert float(amp.min()) >= 3.0 and float(amp.max()) <= 5.0
    with pytest.raises(ValueError, match="not an interval"):
        diversity.scaled_family(family, ["shots"])


def test_diverse_training_transfers_to_shifted_tasks_when_the_rate_is_learned():
    """Gaussian means with a learned inner rate (Meta-SGD): trained on nearly identical
    tasks (prior std 0.05) the learner trusts its prior and barely moves (rate ~ 0), so on
    tasks whose mean is shifted to 3 its loss stays near 9; trained on diverse tasks (prior
    std 2) it learns to follow the data and the shifted tasks cost little more."""
    train = {
        0.05: GaussianMean(shots=5, queries=20, prior_std=0.05),
        2.0: GaussianMean(shots=5, queries=20, prior_std=2.0),
    }
    test = {
        "in-range": GaussianMean(shots=5, queries=20, prior_std=0.05),
        "shifted": GaussianMean(shots=5, queries=20, prior_mean=3.0, prior_std=0.5),
    }

    def make():
        return MetaSGD(MLP(1, 1, hidden=(), bias=False), inner_lr=0.2)

    narrow, wide = diversity.diversity_sweep(
        make, train, test, iterations=60, meta_batch_size=30, outer_lr=0.05, episodes=300
    )
    assert wide.scores["shifted"].mean < 0.3 * narrow.scores["shifted"].mean
    assert narrow.scores["in-range"].mean < wide.scores["in-range"].mean  # the price
    assert narrow.scores["shifted"].half_width > 0
