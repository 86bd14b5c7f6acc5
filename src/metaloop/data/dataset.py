"""Labelled image datasets indexed by class.

A ``ClassDataset`` is the input of every episodic sampler: images grouped by class, with
metadata per class (for Omniglot: alphabet, character, rotation).  It is built for cheap
episode sampling and cheap re-slicing:

* ``storage``: one image tensor ``[N, C, H, W]`` (``uint8`` in ``0..255`` or floating point),
  shared, never copied by ``subset`` or by rotation augmentation;
* *items*: the dataset's examples.  Item ``i`` is storage row ``rows[i]`` with class
  ``labels[i]``; an item of a class with ``rotation k`` is that row turned by ``k`` quarter
  turns counter-clockwise (``torch.rot90``), applied when the item is read.  So
  ``augment_rotations`` (in ``metaloop.data.transforms``) makes 4x the classes from the same
  storage, and ``subset`` only re-indexes.

Class ids are dense, ``0 .. num_classes-1``; ``class_info[c]`` is a read-only mapping of
metadata for class ``c``.  ``ClassDataset`` also follows the map-style
``torch.utils.data.Dataset`` protocol (``len``, ``ds[i] -> (image, class id)``), so it works
with a ``DataLoader`` and ``EpisodeSampler``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from metaloop.tasks.base import TaskError


def to_float_images(
    images: Tensor,
    normalize: tuple[float, float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Images as floats: ``uint8`` is scaled to ``[0, 1]`` (``x / 255``), floats are kept.

    With ``normalize=(mean, std)`` the result is ``(x - mean) / std`` afterwards.  Every
    path that turns stored images into model inputs (episodes, Lake's runs) goes through
    this function, so training and evaluation see identical preprocessing.
    """
    if images.dtype == torch.uint8:
        out = images.to(dtype) / 255.0
    elif images.is_floating_point():
        out = images.to(dtype)
    else:
        raise TaskError(f"images must be uint8 or floating point, got dtype {images.dtype}")
    if normalize is not None:
        mean, std = normalize
        if not std > 0:
            raise TaskError(f"normalize=(mean, std) needs std > 0, got std={std}")
        out = (out - mean) / std
    return out


def _freeze(info: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(info))


class ClassDataset:
    """Images grouped by class, with metadata per class.

    Args:
        images: storage tensor ``[N, C, H, W]``, ``uint8`` or floating point.
        labels: class id of every item, integers in ``0 .. num_classes-1``, shape ``[M]``.
        class_info: one metadata mapping per class (default: ``{"name": str(c)}``); its
            length fixes ``num_classes`` (classes without items are allowed).
        rows: storage row of every item, shape ``[M]`` (default: ``arange(N)``, needing
            ``M == N``).
        rotations: quarter turns (``0..3``, counter-clockwise) per class, applied when
            items are read (default: none).
        name: a label for messages and ``repr``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | Sequence[int],
        class_info: Sequence[Mapping[str, Any]] | None = None,
        *,
        rows: Tensor | None = None,
        rotations: Tensor | Sequence[int] | None = None,
        name: str = "dataset",
    ) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise TaskError(f"images must be a tensor of shape [N, C, H, W], got {shape}")
        if not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise TaskError(f"images must be uint8 or floating point, got dtype {images.dtype}")
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if rows is None:
            if labels.numel() != images.shape[0]:
                raise TaskError(
                    f"got {images.shape[0]} images but {labels.numel()} labels; "
                    "pass one label per image (or explicit rows)"
                )
            rows = torch.arange(images.shape[0])
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        if rows.numel() != labels.numel():
            raise TaskError(f"rows ({rows.numel()}) and labels ({labels.numel()}) differ in length")
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= images.shape[0]):
            raise TaskError(f"rows must index the {images.shape[0]} stored images")
        if labels.numel() and int(labels.min()) < 0:
            raise TaskError(f"class labels must be >= 0, got {int(labels.min())}")
        if class_info is None:
            n = int(labels.max()) + 1 if labels.numel() else 0
            class_info = [{"name": str(c)} for c in range(n)]
        num_classes = len(class_info)
        if labels.numel() and int(labels.max()) >= num_classes:
            raise TaskError(
                f"class labels must lie in 0..{num_classes - 1} (one class_info entry per "
                f"class), found label {int(labels.max())}"
            )
        if rotations is None:
            rotations = torch.zeros(num_classes, dtype=torch.long)
        rotations = torch.as_tensor(rotations, dtype=torch.long).reshape(-1)
        if rotations.numel() != num_classes:
            raise TaskError(
                f"rotations needs one entry per class ({num_classes}), got {rotations.numel()}"
            )
        if rotations.numel() and (int(rotations.min()) < 0 or int(rotations.max()) > 3):
            raise TaskError("rotations are quarter turns and must lie in 0..3")
        if bool((rotations % 2 == 1).any()) and images.shape[-1] != images.shape[-2]:
            raise TaskError(
                f"rotations by 90/270 degrees need square images, got {tuple(images.shape[-2:])}"
            )
        self.storage = images
        self.labels = labels
        self.rows = rows
        self.rotations = rotations
        self.class_info: tuple[Mapping[str, Any], ...] = tuple(_freeze(i) for i in class_info)
        self.name = name
        # Items of each class, as a padded [num_classes, max_count] matrix (-1 = padding):
        # the samplers index it in one vectorised gather.
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=num_classes)
        self.class_sizes: Tensor = counts
        width = int(counts.max()) if num_classes and labels.numel() else 0
        table = torch.full((num_classes, width), -1, dtype=torch.long)
        if labels.numel():
            starts = torch.cumsum(counts, 0) - counts
            position = torch.arange(labels.numel()) - starts[labels[order]]
            table[labels[order], position] = order
        self.class_items: Tensor = table

    def __getstate__(self) -> dict[str, Any]:
        # mappingproxy does not pickle; DataLoader workers started with "spawn" need to.
        state = self.__dict__.copy()
        state["class_info"] = tuple(dict(i) for i in self.class_info)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["class_info"] = tuple(_freeze(i) for i in state["class_info"])
        self.__dict__.update(state)

    # -- sizes -----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_info)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one item (rotations keep it: they need square images)."""
        return tuple(self.storage.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.labels.numel()

    def __repr__(self) -> str:
        return (
            f"ClassDataset({self.name!r}, classes={self.num_classes}, items={len(self)}, "
            f"image_shape={self.image_shape}, dtype={self.storage.dtype})"
        )

    # -- reading ---------------------------------------------------------------------------
    def gather(self, items: Tensor | Sequence[int]) -> Tensor:
        """Images of the given items, ``[len(items), C, H, W]``, rotations applied.

        ``items`` may have any shape; the result has shape ``[*items.shape, C, H, W]``.
        """
        items = torch.as_tensor(items, dtype=torch.long)
        flat = items.reshape(-1)
        out = self.storage[self.rows[flat]]
        turns = self.rotations[self.labels[flat]]
        for k in (1, 2, 3):
            mask = turns == k
            if bool(mask.any()):
                out[mask] = torch.rot90(out[mask], k, dims=(-2, -1))
        return out.reshape(*items.shape, *out.shape[1:])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """``(image [C, H, W], class id)`` of item ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        return self.gather([index])[0], int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int]]:
        """Batched ``__getitem__`` (used by ``DataLoader`` when present): one gather."""
        images = self.gather(list(indices))
        return list(zip(images.unbind(0), self.labels[list(indices)].tolist()))

    def items_of(self, cls: int) -> Tensor:
        """Item indices of class ``cls``."""
        self._check_class(cls)
        return self.class_items[cls, : int(self.class_sizes[cls])]

    def images_of(self, cls: int) -> Tensor:
        """All images of class ``cls``, ``[count, C, H, W]``."""
        return self.gather(self.items_of(cls))

    def info(self, cls: int) -> Mapping[str, Any]:
        self._check_class(cls)
        return self.class_info[cls]

    def _check_class(self, cls: int) -> None:
        if not 0 <= cls < self.num_classes:
            raise TaskError(
                f"class {cls} out of range: this dataset has classes 0..{self.num_classes - 1}"
            )

    # -- selecting classes -----------------------------------------------------------------
    def classes_with_at_least(self, n: int) -> list[int]:
        """Ids of the classes that have at least ``n`` items."""
        return torch.nonzero(self.class_sizes >= n).reshape(-1).tolist()

    def groups(self, key: str) -> dict[Hashable, list[int]]:
        """Class ids grouped by the metadata field ``key`` (e.g. ``"alphabet"``), in order of
        first appearance."""
        out: dict[Hashable, list[int]] = {}
        for c, info in enumerate(self.class_info):
            if key not in info:
                raise TaskError(
                    f"class {c} has no metadata field {key!r}; fields are: {', '.join(info)}"
                )
            out.setdefault(info[key], []).append(c)
        return out

    def values(self, key: str) -> list[Any]:
        """The metadata field ``key`` of every class, in class order."""
        return [info.get(key) for info in self.class_info]

    def select(self, key: str, values: Iterable[Any]) -> list[int]:
        """Ids of the classes whose metadata field ``key`` is one of ``values``."""
        wanted = set(values)
        return [c for c, info in enumerate(self.class_info) if info.get(key) in wanted]

    def subset(self, classes: Sequence[int], name: str | None = None) -> ClassDataset:
        """The dataset restricted to ``classes``, relabelled ``0 .. len(classes)-1`` in the
        given order.  Shares the image storage (no copy); metadata and rotations follow."""
        classes = [int(c) for c in classes]
        for c in classes:
            self._check_class(c)
        if len(set(classes)) != len(classes):
            raise TaskError("subset classes must be distinct")
        sel = torch.tensor(classes, dtype=torch.long)
        mapping = torch.full((self.num_classes,), -1, dtype=torch.long)
        mapping[sel] = torch.arange(len(classes))
        keep = mapping[self.labels] >= 0 if len(self) else torch.zeros(0, dtype=torch.bool)
        return ClassDataset(
            self.storage,
            mapping[self.labels[keep]],
            [self.class_info[c] for c in classes],
            rows=self.rows[keep],
            rotations=self.rotations[sel],
            name=name or self.name,
        )

    def with_class_info(self, class_info: Sequence[Mapping[str, Any]]) -> ClassDataset:
        """The same items with replaced metadata (one mapping per class)."""
        if len(class_info) != self.num_classes:
            raise TaskError(f"need {self.num_classes} class_info entries, got {len(class_info)}")
        return ClassDataset(
            self.storage,
            self.labels,
            class_info,
            rows=self.rows,
            rotations=self.rotations,
            name=self.name,
        )

    @staticmethod
    def concat(datasets: Sequence[ClassDataset], name: str | None = None) -> ClassDataset:
        """Classes of all ``datasets`` in order (class ids offset), storage concatenated."""
        if not datasets:
            raise TaskError("concat needs at least one dataset")
        shapes = {d.image_shape for d in datasets}
        dtypes = {d.storage.dtype for d in datasets}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise TaskError(
                f"cannot concatenate datasets with image shapes {shapes} and dtypes {dtypes}"
            )
        if len(datasets) == 1:
            return datasets[0]
        labels, rows, info, rot = [], [], [], []
        class_offset = row_offset = 0
        for d in datasets:
            labels.append(d.labels + class_offset)
            rows.append(d.rows + row_offset)
            info.extend(d.class_info)
            rot.append(d.rotations)
            class_offset += d.num_classes
            row_offset += d.storage.shape[0]
        return ClassDataset(
            torch.cat([d.storage for d in datasets]),
            torch.cat(labels),
            info,
            rows=torch.cat(rows),
            rotations=torch.cat(rot),
            name=name or "+".join(d.name for d in datasets),
        )
