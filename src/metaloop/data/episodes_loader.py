"""The ``DataLoader`` front end of the episode sampler (``metaloop.data.episodes``):
``EpisodeSampler`` (a batch sampler of the item indices of whole episodes, seeded by ``(seed,
epoch)``) and ``EpisodeCollate`` (the loaded items -> ``TaskBatch``, picklable for workers).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from metaloop.data.dataset import ClassDataset
from metaloop.data.episodes_plan import ClassGroups, EpisodePlan, episodes_to_batch
from metaloop.tasks.base import TaskBatch, TaskError, check_positive


class EpisodeCollate:
    """``DataLoader`` collate function: items of whole episodes -> ``TaskBatch``.

    Takes the list of ``(image, class id)`` pairs a ``DataLoader`` fetches for one index list
    of ``EpisodeSampler`` (``T`` episodes, class-major) and returns the ``TaskBatch``.
    Picklable, so it works with any worker start method.
    """

    def __init__(
        self,
        ways: int,
        shots: int,
        queries: int,
        normalize: tuple[float, float] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.ways, self.shots, self.queries = ways, shots, queries
        self.normalize, self.dtype = normalize, dtype

    def __call__(self, samples: Sequence[tuple[Tensor, int]]) -> TaskBatch:
        per_episode = self.ways * (self.shots + self.queries)
        if not samples or len(samples) % per_episode:
            raise TaskError(
                f"got {len(samples)} items; a batch must hold whole episodes of "
                f"ways * (shots + queries) = {per_episode} items"
            )
        tasks = len(samples) // per_episode
        images = torch.stack([s[0] for s in samples])
        labels = torch.as_tensor([int(s[1]) for s in samples], dtype=torch.long)
        shape = (tasks, self.ways, self.shots + self.queries)
        images = images.reshape(*shape, *images.shape[1:])
        classes = labels.reshape(shape)[:, :, 0]
        return episodes_to_batch(images, classes, self.shots, self.normalize, dtype=self.dtype)


def _mix_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9) % (2**63 - 1)


class EpisodeSampler(Sampler[list[int]]):
    """Batch sampler of episodes for ``torch.utils.data.DataLoader``.

    Each yielded element is the flat list of item indices of ``tasks_per_batch`` episodes
    (class-major: episode, class, then ``shots + queries`` items).  Use it as
    ``DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.collate,
    num_workers=...)`` (or ``sampler.loader(num_workers=...)``): each loaded batch is a
    ``TaskBatch`` of ``tasks_per_batch`` tasks.

    The episodes depend only on ``(seed, epoch)``: iterating twice gives the same
    episodes; call ``set_epoch`` for fresh ones.  ``num_batches=None`` iterates forever.
    """

    def __init__(
        self,
        dataset: ClassDataset,
        ways: int,
        shots: int,
        queries: int,
        seed: int = 0,
        class_groups: ClassGroups = None,
        tasks_per_batch: int = 1,
        num_batches: int | None = None,
        normalize: tuple[float, float] | None = None,
    ) -> None:
        self.plan = EpisodePlan(dataset, ways, shots, queries, class_groups)
        self.dataset = dataset
        self.ways, self.shots, self.queries = ways, shots, queries
        self.seed = int(seed)
        self.tasks_per_batch = check_positive("tasks_per_batch", tasks_per_batch)
        if num_batches is not None:
            check_positive("num_batches", num_batches)
        self.num_batches = num_batches
        self.normalize = normalize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
        counter = range(self.num_batches) if self.num_batches is not None else itertools.count()
        for _ in counter:
            _, items = self.plan.sample(self.tasks_per_batch, g)
            yield items.reshape(-1).tolist()

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this EpisodeSampler is infinite (num_batches=None) and has no length")
        return self.num_batches

    @property
    def collate(self) -> EpisodeCollate:
        return EpisodeCollate(self.ways, self.shots, self.queries, self.normalize)

    def loader(self, num_workers: int = 0, **kwargs: Any) -> DataLoader:
        """``DataLoader`` over this sampler's dataset yielding ``TaskBatch`` objects."""
        return DataLoader(
            self.dataset,
            batch_sampler=self,
            collate_fn=self.collate,
            num_workers=num_workers,
            **kwargs,
        )


__all__ = ["EpisodeCollate", "EpisodeSampler"]
