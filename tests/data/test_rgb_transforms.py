"""Tensor RGB augmentation, and the backbones on 3-channel images of any size."""

from __future__ import annotations

import pytest
import torch

from metaloop.data.rgb_transforms import (
    ColorJitter,
    RandomHorizontalFlip,
    RandomResizedCrop,
    grayscale,
    rgb_train_transform,
)
from metaloop.models.conv import Conv4
from metaloop.models.resnet import ResNet12
from metaloop.tasks.base import TaskError


def images(b: int = 4, c: int = 3, h: int = 10, w: int = 12) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_full_crop_is_identity_and_a_quarter_crop_reads_that_quarter() -> None:
    x = images()
    full = RandomResizedCrop(scale=(1.0, 1.0), ratio=(12 / 10, 12 / 10))
    assert torch.allclose(full(x, torch.Generator().manual_seed(1)), x, atol=1e-12)
    # a crop of the top-left 5x6 quarter (the box sampler replaced) equals the bilinear
    # 2x upsampling of that quarter
    crop = RandomResizedCrop()
    crop.boxes = lambda b, h, w, g=None, dtype=None: torch.tensor(
        [[0.0, 0.0, 6.0, 5.0]] * b, dtype=dtype
    )
    out = crop(x)
    quarter = x[:, :, :5, :6]
    want = torch.nn.functional.interpolate(
        quarter, size=(10, 12), mode="bilinear", align_corners=False
    )
    # (the last row and column read one pixel beyond the quarter, inside the image)
    assert torch.allclose(out[..., :-1, :-1], want[..., :-1, :-1], atol=1e-12)


def test_crop_boxes_respect_scale_and_ratio() -> None:
    crop = RandomResizedCrop(scale=(0.25, 0.5), ratio=(0.5, 2.0))
    box = crop.boxes(2000, 100, 100, torch.Generator().manual_seed(0), torch.float64)
    area = box[:, 2] * box[:, 3] / 1e4
    assert float(area.min()) >= 0.25 - 1e-9 and float(area.max()) <= 0.5 + 1e-9
    r = box[:, 2] / box[:, 3]
    assert float(r.min()) >= 0.5 - 1e-9 and float(r.max()) <= 2.0 + 1e-9
    assert float((box[:, 0] + box[:, 2]).max()) <= 100 and float(box[:, 0].min()) >= 0


def test_flip_and_reproducibility() -> None:
    x = images(b=200)
    out = RandomHorizontalFlip(0.5)(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 60 < int(flipped.sum()) < 140
    t = rgb_train_transform()
    a = t(x, torch.Generator().manual_seed(3))
    b = t(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_color_jitter_closed_forms() -> None:
    x = images()
    assert torch.allclose(ColorJitter(0, 0, 0)(x), x)
    grey = grayscale(x)
    assert torch.allclose(grey[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    # brightness only: every pixel of an image scaled by one factor in [0.6, 1.4]
    y = ColorJitter(0.4, 0, 0)(x * 0.5, torch.Generator().manual_seed(0))
    factor = y / (x * 0.5)
    per_image = factor.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image))
    assert float(per_image.min()) >= 0.6 and float(per_image.max()) <= 1.4
    with pytest.raises(TaskError, match="brightness must be in"):
        ColorJitter(brightness=2)


@pytest.mark.parametrize("size", [32, 84])
def test_backbones_take_three_channels_of_any_size(size: int) -> None:
    x = torch.rand(2, 3, size, size)
    conv = Conv4(in_channels=3, ways=5, image_size=size)
    assert conv(x).shape == (2, 5)
    net = ResNet12(in_channels=3, ways=None, image_size=size, widths=(8, 8, 8, 8))
    z = net(x)
    assert z.shape[0] == 2 and z.dim() == 2
