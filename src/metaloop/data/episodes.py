"""N-way K-shot episodes from a ``ClassDataset``.

An *episode* (a classification task) draws ``ways`` distinct classes and, from each,
``shots + queries`` distinct items: ``shots`` go to the support set, ``queries`` to the
query set.  Episode labels are positions in the drawn class list, and the class list is
drawn in random order, so which dataset class gets label ``0 .. ways-1`` is a fresh random
permutation in every episode (a learner cannot memorise a class-to-label mapping).
Support and query sets are laid out class-major: labels ``[0]*shots + [1]*shots + ...``.

Two front ends share one sampler core (``EpisodePlan``):

* ``EpisodicFamily``: the ``TaskFamily`` protocol, ``sample(batch_size, generator)`` ->
  ``TaskBatch`` in the calling process; what the trainer and evaluation use.
* ``EpisodeSampler``: a ``torch.utils.data.Sampler`` yielding item-index lists, plus a
  collate function (``EpisodeCollate``) that turns the loaded items into a ``TaskBatch``;
  for ``DataLoader`` with worker processes.  The sampler runs in the main process, so the
  batches do not depend on ``num_workers``.

``class_groups`` restricts every episode to classes of one group (e.g. one alphabet, for
Lake's within-alphabet protocol): the group is drawn uniformly among the groups that have
at least ``ways`` usable classes, then the classes within it.

All randomness comes from the ``torch.Generator`` passed in (or the sampler's seed): the
same generator state gives the same batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from metaloop.data.dataset import ClassDataset, to_float_images
from metaloop.tasks.base import TaskBatch, TaskError, check_positive
from metaloop.tasks.registry import TaskSpec

#: ``transform(images [B, C, H, W] float in [0, 1], generator) -> images``
ImageTransform = Callable[[Tensor, torch.Generator | None], Tensor]
#: a metadata field name, ``{group: [class ids]}`` or a list of class-id lists
ClassGroups = str | Mapping[Hashable, Sequence[int]] | Sequence[Sequence[int]] | None


def _resolve_groups(dataset: ClassDataset, class_groups: ClassGroups) -> dict[Hashable, list[int]]:
    if class_groups is None:
        return {"all": list(range(dataset.num_classes))}
    if isinstance(class_groups, str):
        return dataset.groups(class_groups)
    if isinstance(class_groups, Mapping):
        groups = {k: [int(c) for c in v] for k, v in class_groups.items()}
    else:
        groups = {i: [int(c) for c in v] for i, v in enumerate(class_groups)}
    for name, classes in groups.items():
        bad = [c for c in classes if not 0 <= c < dataset.num_classes]
        if bad:
            raise TaskError(
                f"class group {name!r} names classes {bad[:5]} outside 0..{dataset.num_classes - 1}"
            )
    return groups


class EpisodePlan:
    """Validated episode sizes over a dataset, and the vectorised episode sampler.

    Raises ``TaskError`` at construction when the dataset cannot supply the episodes:
    non-positive sizes, ``shots + queries`` above the images per class, ``ways`` above the
    number of (grouped) classes with enough images.
    """

    def __init__(
        self,
        dataset: ClassDataset,
        ways: int,
        shots: int,
        queries: int,
        class_groups: ClassGroups = None,
    ) -> None:
        if not isinstance(dataset, ClassDataset):
            raise TaskError(f"dataset must be a ClassDataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.ways = check_positive("ways", ways)
        self.shots = check_positive("shots", shots)
        self.queries = check_positive("queries", queries)
        self.per_class = self.shots + self.queries
        sizes = dataset.class_sizes
        largest = int(sizes.max()) if sizes.numel() else 0
        if largest < self.per_class:
            raise TaskError(
                f"shots + queries = {self.shots} + {self.queries} = {self.per_class} exceeds the "
                f"images per class in {dataset.name!r} (at most {largest}); choose "
                f"shots + queries <= {largest}"
            )
        usable = sizes >= self.per_class
        groups = _resolve_groups(dataset, class_groups)
        pools: list[list[int]] = []
        names: list[Hashable] = []
        excluded: list[Hashable] = []
        best = 0
        for name, classes in groups.items():
            ok = [c for c in classes if bool(usable[c])]
            best = max(best, len(ok))
            if len(ok) >= self.ways:
                pools.append(ok)
                names.append(name)
            else:
                excluded.append(name)
        if not pools:
            where = (
                f"the {best} classes of {dataset.name!r} that have at least {self.per_class} images"
                if class_groups is None
                else f"every class group (the largest has {best} classes with at least "
                f"{self.per_class} images)"
            )
            raise TaskError(f"ways = {self.ways} exceeds {where}; choose ways <= {best}")
        self.group_names = names
        #: groups left out because they have fewer than ``ways`` usable classes
        self.excluded_groups = excluded
        width = max(len(p) for p in pools)
        self.pools = torch.full((len(pools), width), -1, dtype=torch.long)
        for i, p in enumerate(pools):
            self.pools[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        self.pool_pad = self.pools < 0
        self.num_usable_classes = len({c for p in pools for c in p})

    def sample(self, tasks: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``tasks`` episodes: ``(classes [T, ways], items [T, ways, shots+queries])``.

        ``classes[t, j]`` is the dataset class that gets label ``j`` in episode ``t``;
        ``items[t, j, :shots]`` are its support items, the rest its query items.
        """
        check_positive("batch_size", tasks)
        g = generator
        if len(self.pools) > 1:
            group = torch.randint(len(self.pools), (tasks,), generator=g)
        else:
            group = torch.zeros(tasks, dtype=torch.long)
        # Random keys, padding pushed last, then the `ways` smallest of each row in order:
        # one uniformly random subset in random order per task, fully vectorised.  (``topk``
        # picks what a full sort would, as float64 keys do not tie, at a fraction of the cost:
        # sorting 4,400 keys per task was 80% of the sampler's time.)
        keys = torch.rand(tasks, self.pools.shape[1], generator=g, dtype=torch.float64)
        keys = keys.masked_fill(self.pool_pad[group], 2.0)
        pick = keys.topk(self.ways, dim=1, largest=False, sorted=True).indices
        classes = self.pools[group].gather(1, pick)
        table, sizes = self.dataset.class_items, self.dataset.class_sizes
        keys = torch.rand(tasks, self.ways, table.shape[1], generator=g, dtype=torch.float64)
        position = torch.arange(table.shape[1])
        keys = keys.masked_fill(position >= sizes[classes].unsqueeze(-1), 2.0)
        chosen = keys.topk(self.per_class, dim=-1, largest=False, sorted=True).indices
        items = table[classes.unsqueeze(-1), chosen]
        return classes, items


def episodes_to_batch(
    images: Tensor,
    classes: Tensor,
    shots: int,
    normalize: tuple[float, float] | None = None,
    transform: ImageTransform | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> TaskBatch:
    """``TaskBatch`` from episode images ``[T, ways, shots+queries, C, H, W]``.

    Images are converted with ``to_float_images`` (``uint8`` -> ``[0, 1]``), then
    ``transform`` (on ``[B, C, H, W]``), then ``normalize``.  Labels are
    ``0 .. ways-1`` in class-major order; ``info["classes"]`` holds ``classes``.
    """
    T, ways, per_class = images.shape[:3]
    feature = images.shape[3:]
    x = to_float_images(images, dtype=dtype)
    if transform is not None:
        x = transform(x.reshape(-1, *feature), generator).reshape(T, ways, per_class, *feature)
    if normalize is not None:
        x = to_float_images(x, normalize, dtype)
    queries = per_class - shots
    labels = torch.arange(ways)
    sy = labels.repeat_interleave(shots).expand(T, -1).contiguous()
    qy = labels.repeat_interleave(queries).expand(T, -1).contiguous()
    return TaskBatch(
        x[:, :, :shots].reshape(T, ways * shots, *feature),
        sy,
        x[:, :, shots:].reshape(T, ways * queries, *feature),
        qy,
        ways,
        info={"classes": classes},
    )


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
