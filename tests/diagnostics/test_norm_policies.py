"""Normalization policies side by side: same seed, same episodes, and what each policy can
see, on constructed image tasks whose answers are known."""

from __future__ import annotations

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.data.dataset import ClassDataset
from metaloop.data.episodes import EpisodicFamily
from metaloop.diagnostics import norm_policies
from metaloop.models import Conv4

torch.set_num_threads(1)


def _brightness_family(seed: int, classes: int = 10, per_class: int = 6) -> EpisodicFamily:
    """Class ``c``: constant 8x8 images of brightness ``(c + 1) / (classes + 1)`` (times a
    per-image factor in [0.97, 1.03]): the class is in the image's scale and nothing else."""
    gen = torch.Generator().manual_seed(seed)
    level = (torch.arange(classes).repeat_interleave(per_class) + 1.0) / (classes + 1)
    jitter = 0.97 + 0.06 * torch.rand(classes * per_class, generator=gen)
    images = (level * jitter).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    labels = torch.arange(classes).repeat_interleave(per_class)
    return EpisodicFamily(ClassDataset(images, labels), ways=5, shots=1, queries=3)


def _make_learner(policy: str) -> MAML:
    model = Conv4(1, ways=5, hidden=8, image_size=8, norm=policy, strided=True)
    return MAML(
        model, inner_lr=0.4, inner_steps=1, first_order=True, loss="cross_entropy", vectorize="loop"
    )


def _sweep(policies, iterations=3, episodes=20, small=None):
    family = _brightness_family(0)
    return norm_policies.norm_policy_sweep(
        _make_learner,
        policies,
        family,
        _brightness_family(1),
        iterations=iterations,
        meta_batch_size=2,
        outer_lr=1e-2,
        episodes=episodes,
        small_family=small,
    )


def test_running_statistics_with_episode_statistics_equal_per_episode_batch_norm():
    """Both policies normalise with batch statistics while training, so with the same seed
    and episodes they train to the same weights: the running-statistics learner evaluated
    with each batch's own statistics must score exactly what the per-episode one does
    (a sweep that reseeded, reshuffled episodes or kept the running buffers would not)."""
    small = _brightness_family(1).with_shape(queries=1)
    episode, running = _sweep(["batch_episode", "batch_running"], small=small)
    assert running.episode_statistics_accuracy is not None
    assert episode.episode_statistics_accuracy is None  # no running statistics to drop
    assert running.episode_statistics_accuracy.mean == episode.accuracy.mean
    assert running.train_loss == episode.train_loss
    assert running.accuracy.mean != episode.accuracy.mean  # the running averages do differ
    assert episode.small_query_accuracy is not None and episode.accuracy.episodes == 20
    assert episode.train_seconds > 0 and episode.iterations == 3


def test_instance_norm_cannot_see_a_class_carried_by_brightness():
    """Instance norm divides every channel of every image by its own spread, so constant
    images of any brightness become the same input: 5-way accuracy at chance (each query
    gets the same prediction: one class in five right).  Per-episode batch norm keeps the
    differences between the images of a task, and the classes separate."""
    episode, instance = _sweep(["batch_episode", "instance"], iterations=10, episodes=30)
    assert instance.accuracy.mean == pytest.approx(0.2, abs=0.02)  # measured: 0.2, std 0
    assert episode.accuracy.mean > 0.3  # measured: 0.42 +- 0.05 after 10 iterations


def test_without_running_statistics_normalises_with_batch_statistics_in_eval_mode():
    model = Conv4(1, ways=5, hidden=4, image_size=8, norm="batch_running", strided=True)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model.train()
    model(x + 1.0)  # running statistics now differ from those of x
    stripped = norm_policies.without_running_statistics(model).eval()
    probe = norm_policies.without_running_statistics(model).train()  # train mode: batch stats
    torch.testing.assert_close(stripped(x), probe(x))
    assert not torch.allclose(model.eval()(x), stripped(x))
    assert norm_policies.has_running_statistics(model)
    assert not norm_policies.has_running_statistics(stripped)


def test_sweep_refuses_bad_arguments():
    with pytest.raises(ValueError, match="distinct"):
        _sweep(["layer", "layer"])
    with pytest.raises(ValueError, match="at least one policy"):
        _sweep([])
