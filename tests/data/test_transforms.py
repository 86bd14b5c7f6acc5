"""Rotations as new classes, label permutation, augmentation hooks."""

from __future__ import annotations

import re

import pytest
import torch

from metaloop.data import (
    ClassDataset,
    Compose,
    EpisodicFamily,
    RandomShift,
    augment_rotations,
    permute_labels,
)
from metaloop.tasks import TaskError


def asymmetric_dataset() -> ClassDataset:
    images = torch.arange(2 * 3 * 9, dtype=torch.uint8).reshape(6, 1, 3, 3)
    info = [{"character_id": f"a/{c}", "alphabet": "a"} for c in range(3)]
    return ClassDataset(images, [0, 0, 1, 1, 2, 2], info, name="asym")


def test_rotations_are_new_classes_sharing_storage() -> None:
    ds = asymmetric_dataset()
    rot = augment_rotations(ds)
    assert rot.num_classes == 12 and len(rot) == 24
    assert rot.storage.data_ptr() == ds.storage.data_ptr()
    for c in range(3):
        for j, degrees in enumerate((0, 90, 180, 270)):
            cls = c * 4 + j
            info = rot.info(cls)
            assert info["rotation"] == degrees and info["base_class"] == c
            assert info["character_id"] == ds.info(c)["character_id"]
            expected = torch.rot90(ds.images_of(c), degrees // 90, dims=(-2, -1))
            assert torch.equal(rot.images_of(cls), expected)
    assert len({rot.images_of(c).sum().item() for c in range(4)}) == 1  # same pixels
    assert not torch.equal(rot.images_of(0), rot.images_of(1))


def test_rotations_compose_and_survive_subsets() -> None:
    ds = asymmetric_dataset()
    twice = augment_rotations(augment_rotations(ds, (90,)), (180,))
    assert twice.info(0)["rotation"] == 270
    assert torch.equal(twice.images_of(0), torch.rot90(ds.images_of(0), 3, dims=(-2, -1)))
    sub = augment_rotations(ds).subset([5, 2])  # class 1 at 90, class 0 at 180
    assert torch.equal(sub.images_of(0), torch.rot90(ds.images_of(1), 1, dims=(-2, -1)))
    assert torch.equal(sub.images_of(1), torch.rot90(ds.images_of(0), 2, dims=(-2, -1)))
    # rotated classes reach episodes rotated
    family = EpisodicFamily(sub, 2, 1, 1)
    batch = family.sample(3, torch.Generator().manual_seed(0))
    for t in range(3):
        for label in range(2):
            cls = int(batch.info["classes"][t, label])
            images = sub.images_of(cls).float() / 255
            x = batch.support_x[t][batch.support_y[t] == label][0]
            assert any(torch.allclose(x, im) for im in images)


def test_rotation_errors() -> None:
    with pytest.raises(TaskError, match=r"distinct values from \(0, 90, 180, 270\)"):
        augment_rotations(asymmetric_dataset(), (0, 45))
    wide = ClassDataset(torch.zeros(2, 1, 2, 3, dtype=torch.uint8), [0, 1])
    with pytest.raises(TaskError, match="square"):
        augment_rotations(wide)


def test_permute_labels_is_consistent(tagged) -> None:
    family = EpisodicFamily(tagged([4] * 6), 4, 1, 2)
    batch = family.sample(6, torch.Generator().manual_seed(0))
    out = permute_labels(batch, torch.Generator().manual_seed(1))
    assert not torch.equal(out.support_y, batch.support_y)
    for t in range(6):
        mapping = {}
        for old, new in zip(batch.support_y[t].tolist(), out.support_y[t].tolist()):
            assert mapping.setdefault(old, new) == new
        assert sorted(mapping.values()) == [0, 1, 2, 3]
        assert [mapping[y] for y in batch.query_y[t].tolist()] == out.query_y[t].tolist()
        # info["classes"] still maps labels to dataset classes
        for old, new in mapping.items():
            assert out.info["classes"][t, new] == batch.info["classes"][t, old]


def test_random_shift_moves_content_reproducibly() -> None:
    images = torch.zeros(16, 1, 12, 12)
    images[:, :, 5:7, 5:7] = 1.0
    shift = RandomShift(2)
    a = shift(images, torch.Generator().manual_seed(0))
    b = shift(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert torch.allclose(a.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))  # nothing cut off
    assert not torch.equal(a, images)
    rows = torch.nonzero(a[:, 0].amax(dim=2))[:, 1]
    assert rows.min() >= 3 and rows.max() <= 8
    both = Compose(RandomShift(0), lambda x, g: x * 2)
    assert torch.equal(both(images, None), images * 2)
    with pytest.raises(TaskError, match="max_shift"):
        RandomShift(-1)


def test_translate_moves_pixels_and_fills_the_border() -> None:
    from metaloop.data.transforms import shift_views, translate

    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    right_down = translate(x, 1, 2, fill=-1.0)
    # out[i, j] = in[i - dy, j - dx]
    assert torch.equal(right_down[0, 0, 2:, 1:], x[0, 0, :2, :3])
    assert (right_down[0, 0, :2] == -1).all() and (right_down[0, 0, :, 0] == -1).all()
    left_up = translate(x, -1, -1)
    assert torch.equal(left_up[0, 0, :3, :3], x[0, 0, 1:, 1:])
    assert translate(x, 0, 0) is x
    five_d = torch.randn(2, 3, 1, 4, 4)
    assert torch.equal(translate(five_d, 1, 0)[1, 2], translate(five_d[1, 2], 1, 0))
    views = shift_views(1)
    assert views[0] == (0, 0) and len(views) == len(set(views)) == 9
    assert shift_views(0) == [(0, 0)]
    with pytest.raises(TaskError, match="integer >= 0"):
        shift_views(-1)
    with pytest.raises(TaskError, match="leaves nothing"):
        translate(x, 4, 0)
    with pytest.raises(TaskError, match="needs images"):
        translate(torch.randn(5, 3), 1, 0)


def test_affine_warp_matches_exact_translations_and_rotations() -> None:
    from metaloop.data.transforms import affine_warp, translate

    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    eye = torch.eye(2).expand(3, 2, 2)
    torch.testing.assert_close(affine_warp(x, eye, torch.zeros(3, 2)), x)
    shift = torch.tensor([[1.0, 0.0]] * 3)
    torch.testing.assert_close(affine_warp(x, eye, shift), translate(x, 1, 0))
    torch.testing.assert_close(affine_warp(x, eye, -2 * shift.flip(-1)), translate(x, 0, -2))
    # u -> R u with R = [[0, -1], [1, 0]]: x-axis onto y (down), a clockwise quarter turn
    quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]]).expand(3, 2, 2)
    torch.testing.assert_close(
        affine_warp(x, quarter, torch.zeros(3, 2)), torch.rot90(x, -1, (-2, -1))
    )
    # scaling by 2 about the centre: the centre pixels spread, the border fills
    doubled = affine_warp(x, 2 * eye, torch.zeros(3, 2), fill=0.5)
    assert doubled.shape == x.shape and torch.isfinite(doubled).all()


def test_random_affine_is_seeded_bounded_and_validated() -> None:
    from metaloop.data import RandomAffine

    x = torch.zeros(8, 1, 12, 12)
    x[:, :, 4:8, 4:8] = 1.0
    aug = RandomAffine()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1  # bilinear: a convex combination of 0s and 1s
    # mass is roughly kept (scale within 0.8..1.2 per axis, the square stays inside)
    assert ((a.sum((1, 2, 3)) / 16) - 1).abs().max() < 0.6
    identity = RandomAffine(rotation=0, shear=0, scale=0, translate=0)
    torch.testing.assert_close(identity(x, torch.Generator().manual_seed(0)), x)
    never = RandomAffine(p=0.0)
    torch.testing.assert_close(never(x, torch.Generator().manual_seed(0)), x)
    for kwargs, fragment in (
        ({"rotation": -1}, "rotation must be a finite number >= 0"),
        ({"scale": 1.0}, "scale must be < 1"),
        ({"p": 2}, "p must be in [0, 1]"),
    ):
        with pytest.raises(TaskError, match=re.escape(fragment)):
            RandomAffine(**kwargs)
