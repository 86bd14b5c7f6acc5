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

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.data.dataset import ClassDataset
from metaloop.tasks.base import TaskBatch, TaskError
from metaloop.validate import is_int

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
        if not is_int(max_shift) or max_shift < 0:
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
    if not is_int(max_shift) or max_shift < 0:
        raise TaskError(f"the test-time shift must be an integer >= 0, got {max_shift!r}")
    r = range(-max_shift, max_shift + 1)
    return [(0, 0)] + [(dx, dy) for dy in r for dx in r if (dx, dy) != (0, 0)]


def affine_warp(images: Tensor, matrix: Tensor, translation: Tensor, fill: float = 0.0) -> Tensor:
    """``out(u) = in(A^-1 (u - t))``: each image ``[B, C, H, W]`` moved by the affine map
    ``u -> A u + t`` of pixel coordinates ``u = (x, y)`` (x right, y down) centred on the
    image; ``matrix`` is ``A [B, 2, 2]``, ``translation`` is ``t [B, 2]`` in pixels.  Bilinear
    sampling, ``fill`` outside the image."""
    b, c, h, w = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    inverse = torch.linalg.inv(matrix.to(dtype))
    # grid_sample reads output -> input in normalized coordinates x_n = N u, N = diag(2/W, 2/H)
    norm = torch.tensor([2.0 / w, 2.0 / h], dtype=dtype, device=images.device)
    theta = torch.zeros(b, 2, 3, dtype=dtype, device=images.device)
    theta[:, :, :2] = norm[:, None] * inverse / norm[None, :]
    theta[:, :, 2:] = -(theta[:, :, :2] @ (translation.to(dtype) * norm).unsqueeze(-1))
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    out = F.grid_sample(
        images.to(dtype) - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return (out + fill).to(images.dtype)


class RandomAffine:
    """Random affine distortion of each image (Koch, Zemel and Salakhutdinov, 2015):
    rotation ``theta ~ U[-rotation, rotation]`` degrees, shear ``rho_x, rho_y ~
    U[-shear, shear]``, scale ``s_x, s_y ~ U[1 - scale, 1 + scale]`` and translation
    ``t_x, t_y ~ U[-translate, translate]`` pixels, each component applied with probability
    ``p`` (Koch: 0.5).  The map ``A = R(theta) Sh(rho) S(s)`` acts on pixel coordinates
    centred on the image; sampling is bilinear with ``fill`` outside the image (0 =
    background for inverted Omniglot strokes).  Defaults are Koch's ranges.
    """

    def __init__(
        self,
        rotation: float = 10.0,
        shear: float = 0.3,
        scale: float = 0.2,
        translate: float = 2.0,
        p: float = 0.5,
        fill: float = 0.0,
    ) -> None:
        for name, value in (
            ("rotation", rotation),
            ("shear", shear),
            ("scale", scale),
            ("translate", translate),
        ):
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise TaskError(f"RandomAffine {name} must be a finite number >= 0, got {value!r}")
        if scale >= 1:
            raise TaskError(f"RandomAffine scale must be < 1 (factors 1 +- scale), got {scale}")
        if not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise TaskError(f"RandomAffine p must be in [0, 1], got {p!r}")
        self.rotation, self.shear, self.scale = float(rotation), float(shear), float(scale)
        self.translate, self.p, self.fill = float(translate), float(p), float(fill)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b = images.shape[0]
        dtype = images.dtype if images.is_floating_point() else torch.float32

        def draw(bound: float, count: int = 1) -> Tensor:
            value = (2 * torch.rand(count, b, generator=generator, dtype=dtype) - 1) * bound
            keep = torch.rand(count, b, generator=generator, dtype=dtype) < self.p
            return value * keep

        theta = draw(self.rotation)[0] * (math.pi / 180)
        rho = draw(self.shear, 2)
        s = 1 + draw(self.scale, 2)
        t = draw(self.translate, 2)
        cos, sin = torch.cos(theta), torch.sin(theta)
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        one = torch.ones_like(theta)
        shear = torch.stack([torch.stack([one, rho[0]], -1), torch.stack([rho[1], one], -1)], -2)
        matrix = rotation @ shear @ torch.diag_embed(s.T)  # [B, 2, 2]
        return affine_warp(images, matrix, t.T, self.fill)

    def __repr__(self) -> str:
        return (
            f"RandomAffine(rotation={self.rotation}, shear={self.shear}, scale={self.scale}, "
            f"translate={self.translate}, p={self.p})"
        )


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
