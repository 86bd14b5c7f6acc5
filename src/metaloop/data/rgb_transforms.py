"""Training augmentation for RGB (or grey) images, written on tensors.

The augmentation of the mini-ImageNet / CUB literature (e.g. Chen et al. 2019), without
torchvision: callables ``(images [B, C, H, W] float in [0, 1], generator) -> images``
that draw every random number from ``generator``, so episodes stay reproducible, and
plug into ``EpisodicFamily(transform=...)`` and ``Compose`` like ``RandomShift``.

* ``RandomResizedCrop(scale, ratio)``: per image, a crop of area ``s * H * W`` with
  ``s ~ U[scale]`` and aspect ratio ``r`` with ``log r ~ U[log ratio]`` (width
  ``sqrt(s H W r)``, height ``sqrt(s H W / r)``, clipped to the image), at a uniform
  position, resized back to ``H x W`` by bilinear sampling (``affine_grid`` /
  ``grid_sample``: the crop box maps onto the output grid).
* ``RandomHorizontalFlip(p)``: ``x[..., ::-1]`` with probability ``p``.
* ``ColorJitter(brightness, contrast, saturation)``: factors ``b, c, s ~ U[1 - v,
  1 + v]`` applied in that order: ``x <- b x``; ``x <- c x + (1 - c) mean(gray(x))``;
  ``x <- s x + (1 - s) gray(x)``, with ``gray = 0.299 R + 0.587 G + 0.114 B`` (ITU-R
  601), then clipped to ``[0, 1]``.  Saturation is skipped for one-channel images.
* ``rgb_train_transform``: the three composed (crop, flip, jitter 0.4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.data.transforms import Compose
from metaloop.tasks.base import TaskError

_LUMA = (0.299, 0.587, 0.114)


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise TaskError(
            f"image transforms take float images [B, C, H, W], got {images.dtype} "
            f"{tuple(images.shape)}"
        )


def _uniform(low: float, high: float, count: int, generator, dtype) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=dtype)


class RandomResizedCrop:
    """A random crop of random area and aspect ratio, resized back to the image size."""

    def __init__(
        self,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        lo, hi = scale
        if not 0 < lo <= hi <= 1:
            raise TaskError(f"scale must satisfy 0 < low <= high <= 1, got {scale!r}")
        if not 0 < ratio[0] <= ratio[1]:
            raise TaskError(f"ratio must satisfy 0 < low <= high, got {ratio!r}")
        self.scale = (float(lo), float(hi))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def boxes(self, b: int, h: int, w: int, generator=None, dtype=torch.float32) -> Tensor:
        """``[B, 4]`` crop boxes ``(x0, y0, width, height)`` in pixels."""
        area = _uniform(*self.scale, b, generator, dtype) * h * w
        log_r = _uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), b, generator, dtype)
        r = torch.exp(log_r)
        cw = torch.sqrt(area * r).clamp(1, w)
        ch = torch.sqrt(area / r).clamp(1, h)
        x0 = torch.rand(b, generator=generator, dtype=dtype) * (w - cw)
        y0 = torch.rand(b, generator=generator, dtype=dtype) * (h - ch)
        return torch.stack([x0, y0, cw, ch], 1)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(images)
        b, c, h, w = images.shape
        box = self.boxes(b, h, w, generator, images.dtype)
        x0, y0, cw, ch = box.unbind(1)
        # output pixel centre u in [-1, 1] (align_corners=False) reads input coordinate
        # (x0 + (u + 1) / 2 * cw) in pixels -> normalized: 2 * that / w - 1
        theta = torch.zeros(b, 2, 3, dtype=images.dtype)
        theta[:, 0, 0] = cw / w
        theta[:, 0, 2] = (2 * x0 + cw) / w - 1
        theta[:, 1, 1] = ch / h
        theta[:, 1, 2] = (2 * y0 + ch) / h - 1
        grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )

    def __repr__(self) -> str:
        return f"RandomResizedCrop(scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise TaskError(f"flip probability must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(images)
        flip = torch.rand(images.shape[0], generator=generator) < self.p
        return torch.where(flip[:, None, None, None], images.flip(-1), images)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def grayscale(images: Tensor) -> Tensor:
    """``[B, 1, H, W]`` luma of RGB images (ITU-R 601); one-channel images unchanged."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] != 3:
        raise TaskError(f"grayscale needs 1 or 3 channels, got {images.shape[1]}")
    weights = torch.tensor(_LUMA, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


class ColorJitter:
    """Random brightness, contrast and saturation (factors ``U[1 - v, 1 + v]``)."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        for name, v in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise TaskError(f"ColorJitter {name} must be in [0, 1], got {v!r}")
        self.brightness, self.contrast, self.saturation = (
            float(brightness),
            float(contrast),
            float(saturation),
        )

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(images)
        b = images.shape[0]
        shape = (b, 1, 1, 1)
        x = images
        v = self.brightness
        x = x * _uniform(1 - v, 1 + v, b, generator, x.dtype).view(shape)
        v = self.contrast
        c = _uniform(1 - v, 1 + v, b, generator, x.dtype).view(shape)
        x = c * x + (1 - c) * grayscale(x).mean((1, 2, 3), keepdim=True)
        v = self.saturation
        s = _uniform(1 - v, 1 + v, b, generator, x.dtype).view(shape)
        if x.shape[1] == 3:
            x = s * x + (1 - s) * grayscale(x)
        return x.clamp(0, 1)

    def __repr__(self) -> str:
        return (
            f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation})"
        )


def rgb_train_transform(
    scale: tuple[float, float] = (0.08, 1.0), jitter: float = 0.4, flip: float = 0.5
) -> Compose:
    """Random resized crop, horizontal flip and colour jitter, in that order."""
    return Compose(
        RandomResizedCrop(scale), RandomHorizontalFlip(flip), ColorJitter(jitter, jitter, jitter)
    )
