"""N-way K-shot episodes from a ``ClassDataset``.

An *episode* (a classification task) draws ``ways`` distinct classes and, from each,
``shots + queries`` distinct items: ``shots`` go to the support set, ``queries`` to the
query set.  Episode labels are positions in the drawn class list, and the class list is
drawn in random order, so which dataset class gets label ``0 .. ways-1`` is a fresh random
permutation in every episode (a learner cannot memorise a class-to-label mapping).
Support and query sets are laid out class-major: labels ``[0]*shots + [1]*shots + ...``.

Two front ends share one sampler core (``EpisodePlan``, in ``episodes_plan``):

* ``EpisodicFamily``: the ``TaskFamily`` protocol, ``sample(batch_size, generator)`` ->
  ``TaskBatch`` in the calling process; what the trainer and evaluation use.
* ``EpisodeSampler``: a ``torch.utils.data.Sampler`` yielding item-index lists, plus a
  collate function (``EpisodeCollate``) that turns the loaded items into a ``TaskBatch``;
  for ``DataLoader`` with worker processes (in ``episodes_loader``).  The sampler runs in
  the main process, so the batches do not depend on ``num_workers``.

``class_groups`` restricts every episode to classes of one group (e.g. one alphabet, for
Lake's within-alphabet protocol): the group is drawn uniformly among the groups that have
at least ``ways`` usable classes, then the classes within it.

All randomness comes from the ``torch.Generator`` passed in (or the sampler's seed): the
same generator state gives the same batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metaloop.data.dataset import ClassDataset
from metaloop.data.episodes_loader import EpisodeCollate, EpisodeSampler
from metaloop.data.episodes_plan import ClassGroups, EpisodePlan, ImageTransform, episodes_to_batch
from metaloop.tasks.base import TaskBatch
from metaloop.tasks.registry import TaskSpec


class EpisodicFamily:
    """N-way K-shot Q-query classification tasks over a ``ClassDataset`` (a ``TaskFamily``).

    ``sample(T, generator)`` returns a ``TaskBatch`` with ``support_x [T, ways*shots, C, H,
    W]`` (float32 in ``[0, 1]``, or normalised), ``support_y [T, ways*shots]`` (long),
    ``query_x [T, ways*queries, C, H, W]``, ``query_y [T, ways*queries]`` and ``ways`` set.

    Args:
        dataset: the classes to draw from (already split and, if wanted, rotated).
        ways, shots, queries: classes per episode, support and query images per class.
        transform: optional augmentation ``(images [B, C, H, W] in [0, 1], generator) ->
            images`` applied to support and query images before normalisation (see
            ``metaloop.data.transforms``); it must draw its randomness from ``generator``.
        class_groups: ``None``, a metadata field (``"alphabet"``), ``{name: [class ids]}``
            or a list of class-id lists: every episode draws its classes from one group.
        normalize: optional ``(mean, std)`` applied after scaling to ``[0, 1]``.

    Errors (``TaskError``, a ``ValueError``) are raised here, at construction.
    """

    loss = "cross_entropy"

    def __init__(
        self,
        dataset: ClassDataset,
        ways: int,
        shots: int,
        queries: int,
        transform: ImageTransform | None = None,
        *,
        class_groups: ClassGroups = None,
        normalize: tuple[float, float] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.plan = EpisodePlan(dataset, ways, shots, queries, class_groups)
        self.dataset = dataset
        self.ways, self.shots, self.queries = ways, shots, queries
        self.transform = transform
        self.class_groups = class_groups
        self.normalize = normalize
        self.dtype = dtype

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.dataset.image_shape

    @property
    def num_classes(self) -> int:
        """Number of dataset classes: ``info["classes"]`` ids lie in ``0 .. num_classes-1``
        (what a global classifier over the training classes needs)."""
        return self.dataset.num_classes

    @property
    def spec(self) -> TaskSpec:
        """Images ``[C, H, W]`` in, ``ways`` class scores out, ``num_classes`` classes."""
        return TaskSpec(
            input_shape=self.image_shape,
            y_dim=self.ways,
            classification=True,
            ways=self.ways,
            num_classes=self.num_classes,
        )

    @property
    def usable_classes(self) -> int:
        """Number of classes episodes actually draw from (enough images, in a usable group)."""
        return self.plan.num_usable_classes

    def sample_indices(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(classes [T, ways], items [T, ways, shots+queries])`` without loading images."""
        return self.plan.sample(batch_size, generator)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        """``batch_size`` episodes as one ``TaskBatch`` (same generator state, same batch)."""
        classes, items = self.plan.sample(batch_size, generator)
        images = self.dataset.gather(items)
        return episodes_to_batch(
            images, classes, self.shots, self.normalize, self.transform, generator, self.dtype
        )

    def with_shape(
        self,
        ways: int | None = None,
        shots: int | None = None,
        queries: int | None = None,
        **overrides: Any,
    ) -> EpisodicFamily:
        """A family over the same classes with other episode sizes (unchanged where
        ``None``); ``overrides`` may replace ``transform``, ``class_groups``, ``normalize``
        or ``dtype`` (e.g. ``transform=None`` for evaluation)."""
        kwargs: dict[str, Any] = {
            "transform": self.transform,
            "class_groups": self.class_groups,
            "normalize": self.normalize,
            "dtype": self.dtype,
        }
        unknown = set(overrides) - set(kwargs)
        if unknown:
            raise TypeError(
                f"with_shape got unknown overrides {sorted(unknown)}; allowed: {sorted(kwargs)}"
            )
        kwargs.update(overrides)
        transform = kwargs.pop("transform")
        return EpisodicFamily(
            self.dataset,
            self.ways if ways is None else ways,
            self.shots if shots is None else shots,
            self.queries if queries is None else queries,
            transform,
            **kwargs,
        )

    def __repr__(self) -> str:
        groups = "" if self.class_groups is None else f", groups={len(self.plan.group_names)}"
        return (
            f"EpisodicFamily({self.dataset.name!r}, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, classes={self.usable_classes}{groups})"
        )


def within_alphabet_family(
    dataset: ClassDataset,
    ways: int = 20,
    shots: int = 1,
    queries: int = 1,
    key: str = "alphabet",
    **kwargs: Any,
) -> EpisodicFamily:
    """Lake et al.'s within-alphabet episodes: all ``ways`` classes of an episode come from
    one alphabet (default 20-way 1-shot, 1 query per class, as in the 20-run benchmark).

    Use it on the evaluation alphabets; alphabets with fewer than ``ways`` characters are
    skipped (``family.plan.excluded_groups`` lists them).
    """
    return EpisodicFamily(dataset, ways, shots, queries, class_groups=key, **kwargs)


__all__ = [
    "ClassGroups",
    "EpisodeCollate",
    "EpisodePlan",
    "EpisodeSampler",
    "EpisodicFamily",
    "ImageTransform",
    "episodes_to_batch",
    "within_alphabet_family",
]
