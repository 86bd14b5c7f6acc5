"""The registered families image_folder, multi_mnist and benchmark, built through the
task-family registry as the CLI builds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_folder import make_tree

import metaloop.data.image_families  # noqa: F401  (registers the families)
from metaloop.data.benchmarks import ChannelNormalize
from metaloop.tasks.registry import FamilyContext, get_family


def build(name: str, data: dict, part: str = "train", cache: dict | None = None, **task):
    entry = get_family(name)
    context = FamilyContext(part=part, data=data, cache=cache)
    options = {"ways": 3, "shots": 1, "queries": 2, **task}
    return entry.call(entry.spec, options, context), entry.call(entry.build, options, context)


def test_image_folder_by_class_split_and_by_files(tmp_path: Path) -> None:
    top = make_tree(tmp_path / "src", classes=9, per_class=4)
    data = {
        "root": str(top),
        "image_size": 8,
        "class_split": [5, 1, 3],
        "cache_dir": str(tmp_path / "c"),
        "augment": "rgb",
        "normalize": "imagenet",
    }
    cache: dict = {}
    spec, train = build("image_folder", data, "train", cache)
    assert spec.input_shape == (3, 8, 8) and spec.ways == 3
    assert train.dataset.num_classes == 5 and train.transform is not None
    _, test = build("image_folder", data, "test", cache)
    assert test.dataset.num_classes == 3
    assert isinstance(test.transform, ChannelNormalize)  # no augmentation outside training
    assert len(cache) == 1  # one decode for every part
    assert not set(train.dataset.values("name")) & set(test.dataset.values("name"))
    batch = train.sample(2, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (2, 3, 3, 8, 8)
    (tmp_path / "train.csv").write_text(
        "".join(f"class0{c}/{i}.png,class0{c}\n" for c in (0, 1, 2) for i in range(4))
    )
    (tmp_path / "test.csv").write_text(
        "".join(f"class0{c}/{i}.png,class0{c}\n" for c in (3, 4, 5) for i in range(4))
    )
    files = {
        "root": str(tmp_path),
        "image_dir": "src/top",
        "train_file": "train.csv",
        "test_file": "test.csv",
        "channels": 1,
        "image_size": 6,
        "cache_dir": str(tmp_path / "c"),
    }
    spec, fam = build("image_folder", files, "test")
    assert spec.input_shape == (1, 6, 6)
    assert fam.dataset.values("name") == ["class03", "class04", "class05"]


def test_image_folder_errors(tmp_path: Path) -> None:
    top = make_tree(tmp_path / "src", classes=4, per_class=2)
    with pytest.raises(ValueError, match="needs train_file/test_file"):
        build("image_folder", {"root": str(top)})
    with pytest.raises(ValueError, match="augment must be one of none, rgb"):
        build("image_folder", {"root": str(top), "class_split": [2, 0, 2], "augment": "heavy"})
    with pytest.raises(ValueError, match=r"fewer than shots \+ queries = 1 \+ 2 = 3"):
        build(
            "image_folder",
            {"root": str(top), "class_split": [2, 0, 2], "cache_dir": str(tmp_path / "c")},
            ways=2,
        )
