"""ClassDataset: indexing by class, cheap subsets, metadata, pickling."""

from __future__ import annotations

import pickle

import pytest
import torch

from metaloop.data import ClassDataset, to_float_images
from metaloop.tasks import TaskError


def test_class_index_and_sizes(tagged) -> None:
    ds = tagged([3, 5, 2])
    assert ds.num_classes == 3 and len(ds) == 10
    assert ds.class_sizes.tolist() == [3, 5, 2]
    assert ds.classes_with_at_least(3) == [0, 1]
    assert ds.classes_with_at_least(6) == []
    for c in range(3):
        images = ds.images_of(c)
        assert (images[:, 0, 0, 0] == c).all()
        assert sorted(images[:, 0, 0, 1].tolist()) == list(range(ds.class_sizes[c].item()))
    image, label = ds[4]
    assert label == 1 and image.shape == (1, 4, 4)


def test_subset_relabels_and_shares_storage(tagged) -> None:
    ds = tagged([3, 5, 2, 4])
    sub = ds.subset([3, 1])
    assert sub.num_classes == 2 and len(sub) == 9
    assert sub.storage.data_ptr() == ds.storage.data_ptr()  # no copy
    assert (sub.images_of(0)[:, 0, 0, 0] == 3).all()
    assert (sub.images_of(1)[:, 0, 0, 0] == 1).all()
    assert sub.info(0)["character_id"] == ds.info(3)["character_id"]
    with pytest.raises(TaskError, match="distinct"):
        ds.subset([1, 1])
    with pytest.raises(TaskError, match=r"0\.\.3"):
        ds.subset([7])


def test_groups_select_and_concat(tagged) -> None:
    ds = tagged([2, 2, 2], groups=["X", "Y", "X"])
    assert ds.groups("alphabet") == {"X": [0, 2], "Y": [1]}
    assert ds.select("alphabet", ["Y"]) == [1]
    with pytest.raises(TaskError, match="no metadata field 'script'"):
        ds.groups("script")
    both = ClassDataset.concat([ds, ds.subset([1])])
    assert both.num_classes == 4 and len(both) == 8
    assert (both.images_of(3)[:, 0, 0, 0] == 1).all()


def test_constructor_errors() -> None:
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(TaskError, match="4 images but 3 labels"):
        ClassDataset(images, [0, 0, 1])
    with pytest.raises(TaskError, match=r"0\.\.0"):
        ClassDataset(images, [0, 0, 1, 1], [{"name": "a"}])
    with pytest.raises(TaskError, match=r"\[N, C, H, W\]"):
        ClassDataset(torch.zeros(4, 2, 2), [0, 0, 1, 1])
    with pytest.raises(TaskError, match="uint8 or floating"):
        ClassDataset(images.long(), [0, 0, 1, 1])
    with pytest.raises(TaskError, match="square"):
        ClassDataset(torch.zeros(2, 1, 2, 3), [0, 1], rotations=[1, 0])


def test_pickle_roundtrip_keeps_metadata(tagged) -> None:
    ds = tagged([2, 3])
    back = pickle.loads(pickle.dumps(ds))
    assert back.class_info[1]["character_id"] == ds.class_info[1]["character_id"]
    assert torch.equal(back.gather([0, 4]), ds.gather([0, 4]))
    with pytest.raises(TypeError):
        back.class_info[0]["alphabet"] = "changed"  # metadata is read-only


def test_to_float_images() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(to_float_images(x), torch.tensor([0.0, 0.2, 1.0]))
    assert torch.allclose(to_float_images(x, (0.5, 0.5)), torch.tensor([-1.0, -0.6, 1.0]))
    with pytest.raises(TaskError, match="std > 0"):
        to_float_images(x, (0.0, 0.0))
