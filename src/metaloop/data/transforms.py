"""Dataset and task transforms: rotations as new classes, label permutation, augmentation.

* ``augment_rotations``: every class, turned by 90/180/270 degrees, becomes a new class
  (Santoro et al. 2016, Vinyals et al. 2016).  The rotated classes share the image
  storage (rotation is applied on read) and keep the base class's metadata, so splits
  made by base character stay disjoint; ``rotation`` (degrees, counter-clockwise) and
  ``base_class`` are added.
* ``permute_labels``: an independent random relabelling of every task of a batch.
* Light augmentation hooks for ``EpisodicFamily(transform=...)``: callables
  ``(images [B, C, H, W] in [0, 1], generator) -> images`` that draw their randomness
  from the generator, so sampling stays reproducible.  ``RandomShift`` and ``Compose``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.data.dataset import ClassDataset
from metaloop.tasks.base import TaskBatch, TaskError

ROTATIONS = (0, 90, 180, 270)


def augment_rotations(dataset: ClassDataset, degrees: Sequence[int] = ROTATIONS) -> ClassDataset:
    """``dataset`` with each class turned by each angle in ``degrees`` as a new class.

    Class ``c * len(degrees) + j`` is base class ``c`` turned by ``degrees[j]``
    (counter-clockwise; angles add to an existing rotation).  Its metadata is the base
    class's plus ``rotation`` (total degrees) and ``base_class`` (id of ``c`` in
    ``dataset``).  No image is copied.
    """
    degrees = [int(d) for d in degrees]
    bad = [d for d in degrees if d not in ROTATIONS]
    if bad or not degrees or len(set(degrees)) != len(degrees):
        raise TaskError(f"degrees must be distinct values from {ROTATIONS}, got {list(degrees)}")
    r = len(degrees)
    turns = torch.tensor([d // 90 for d in degrees], dtype=torch.long)
    labels = torch.cat([dataset.labels * r + j for j in range(r)])
    rows = dataset.rows.repeat(r)
    rotations = ((dataset.rotations.unsqueeze(1) + turns.unsqueeze(0)) % 4).reshape(-1)
    info = []
    for c, base in enumerate(dataset.class_info):
        for d in degrees:
            total = (int(base.get("rotation", 0)) + d) % 360
            info.append({**base, "rotation": total, "base_class": base.get("base_class", c)})
    return ClassDataset(
        dataset.storage,
        labels,
        info,
        rows=rows,
        rotations=rotations,
        name=f"{dataset.name}+rot",
    )


def permute_labels(batch: TaskBatch, generator: torch.Generator | None = None) -> TaskBatch:
    """Relabel every task of a classification batch with its own random permutation of
    ``0 .. ways-1`` (support and query consistently)."""
    if batch.ways is None:
        raise TaskError("permute_labels needs a classification batch (batch.ways set)")
    tasks = len(batch)
    perms = torch.rand(tasks, batch.ways, generator=generator).argsort(dim=1)
    sy = perms.gather(1, batch.support_y)
    qy = perms.gather(1, batch.query_y)
    info = dict(batch.info)
    if "classes" in info:
        # keep info["classes"][t, label] = dataset class of that label
        classes = info["classes"]
        info["classes"] = torch.empty_like(classes).scatter_(1, perms, classes)
    return TaskBatch(batch.support_x, sy, batch.query_x, qy, batch.ways, info)


class RandomShift:
    """Translate each image by a random integer offset in ``[-max_shift, max_shift]`` per
    axis, filling with ``fill`` (0 = background for inverted Omniglot strokes)."""

    def __init__(self, max_shift: int = 2, fill: float = 0.0) -> None:
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
            raise TaskError(f"max_shift must be an integer >= 0, got {max_shift!r}")
        self.max_shift, self.fill = max_shift, fill

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        p = self.max_shift
        if p == 0:
            return images
        b, _, h, w = images.shape
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator)
        padded = F.pad(images, (p, p, p, p), value=self.fill)
        ys = offsets[0].unsqueeze(1) + torch.arange(h)  # [B, H]
        xs = offsets[1].unsqueeze(1) + torch.arange(w)  # [B, W]
        batch = torch.arange(b)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, ys[:, :, None], xs[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift})"


def translate(images: Tensor, dx: int, dy: int, fill: float = 0.0) -> Tensor:
    """``images [..., H, W]`` moved ``dx`` pixels right and ``dy`` down (integers, either
    sign), the uncovered border filled with ``fill``: ``out[..., i, j] = in[..., i-dy, j-dx]``."""
    if images.dim() < 3:
        raise TaskError(
            f"translation needs images [..., C, H, W], got inputs of shape {tuple(images.shape)}"
        )
    if dx == 0 and dy == 0:
        return images
    h, w = images.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        raise TaskError(f"a shift of ({dx}, {dy}) pixels leaves nothing of a {h}x{w} image")
    padded = F.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), value=fill)
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


def shift_views(max_shift: int) -> list[tuple[int, int]]:
    """Every integer offset ``(dx, dy)`` in ``[-max_shift, max_shift]^2`` (``(0, 0)`` first):
    the views of test-time augmentation by translation."""
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise TaskError(f"the test-time shift must be an integer >= 0, got {max_shift!r}")
    r = range(-max_shift, max_shift + 1)
    return [(0, 0)] + [(dx, dy) for dy in r for dx in r if (dx, dy) != (0, 0)]


class Compose:
    """Apply image transforms in order, passing the same generator to each."""

    def __init__(self, *transforms: Callable[[Tensor, torch.Generator | None], Tensor]) -> None:
        self.transforms = transforms

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for t in self.transforms:
            images = t(images, generator)
        return images

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.transforms))})"
