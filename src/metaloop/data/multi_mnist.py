"""Double and Triple MNIST (split-safe variant): reading a built dataset back.

``load_multi_mnist_part``, ``multi_mnist_split`` and ``multi_mnist_family`` read what
``build_multi_mnist`` wrote; ``resize_dataset`` downsizes a part by area averaging.  The
variants, the composition and the file format are described in ``multi_mnist_build``,
which holds the builder; its public names are re-exported here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaloop.data.dataset import ClassDataset
from metaloop.data.episodes import EpisodicFamily, ImageTransform
from metaloop.data.folder import ImageDataError
from metaloop.data.multi_mnist_build import (
    DIGIT,
    FORMAT_VERSION,
    VARIANTS,
    MultiMnistSpec,
    area_resize,
    build_multi_mnist,
    compose,
    default_location,
    default_mnist_zip,
    read_mnist,
)
from metaloop.data.splits import PARTS, ClassSplit, check_disjoint

__all__ = [
    "DIGIT",
    "FORMAT_VERSION",
    "VARIANTS",
    "MultiMnistSpec",
    "area_resize",
    "build_multi_mnist",
    "compose",
    "default_location",
    "default_mnist_zip",
    "load_multi_mnist_part",
    "multi_mnist_family",
    "multi_mnist_split",
    "read_mnist",
    "resize_dataset",
]


def load_multi_mnist_part(root: str | os.PathLike[str], part: str) -> ClassDataset:
    """One part of a built dataset as a ``ClassDataset`` (class metadata: ``name`` = the
    digit string, ``digits`` = tuple of ints, ``mnist_part``)."""
    path = Path(root).expanduser() / f"{part}.npz"
    if not path.is_file():
        raise ImageDataError(
            f"{path} not found; build the dataset first (metaloop data build double-mnist, or "
            "metaloop.data.build_multi_mnist)"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
            classes = [str(c) for c in f["classes"]]
            mnist_part = str(f["mnist_part"])
    except Exception as err:
        raise ImageDataError(
            f"{path} is not a readable multi-MNIST part ({err}); rebuild it"
        ) from err
    info = [
        {"name": c, "digits": tuple(int(ch) for ch in c), "mnist_part": mnist_part} for c in classes
    ]
    return ClassDataset(
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64)),
        info,
        name=f"{Path(root).name}:{part}",
    )


def multi_mnist_split(
    root: str | os.PathLike[str] | None = None,
    variant: str = "double-mnist",
    *,
    seed: int = 0,
    images_per_class: int = 1000,
    image_size: int | None = None,
) -> ClassSplit:
    """The train / val / test parts of a built dataset (``root``, or the default location
    of ``variant``/``seed``/``images_per_class``), checked disjoint by class.

    ``image_size`` downsizes the images (area averaging) when smaller than the canvas."""
    folder = Path(root).expanduser() if root else default_location(variant, seed, images_per_class)
    if not (folder / "meta.json").is_file():
        raise ImageDataError(
            f"no multi-MNIST dataset in {folder}; build it with `metaloop data build {variant}` "
            "or metaloop.data.build_multi_mnist"
        )
    meta = json.loads((folder / "meta.json").read_text())
    parts: dict[str, Any] = {}
    for part in PARTS:
        parts[part] = (
            resize_dataset(load_multi_mnist_part(folder, part), image_size)
            if (folder / f"{part}.npz").is_file()
            else None
        )
    split = ClassSplit(
        parts["train"],
        parts["val"],
        parts["test"],
        meta["variant"],
        f"{meta['variant']} (split-safe variant: train/val digits from MNIST train images, "
        f"test digits from MNIST test images), seed {meta['seed']}, "
        f"{meta['images_per_class']} images per class, {meta['canvas']}px"
        + (f" stored at {meta['image_size']}px" if meta.get("image_size") else ""),
    )
    check_disjoint(split, "name")
    return split


def resize_dataset(dataset: ClassDataset, image_size: int | None) -> ClassDataset:
    """``dataset`` with its images resized to ``image_size`` (area averaging, uint8 kept);
    unchanged when ``None`` or already that size."""
    if image_size is None or image_size == dataset.image_shape[-1]:
        return dataset
    pieces = [
        area_resize(dataset.storage[start : start + 8192], image_size)  # bounded float memory
        for start in range(0, dataset.storage.shape[0], 8192)
    ]
    return ClassDataset(
        torch.cat(pieces),
        dataset.labels,
        dataset.class_info,
        rows=dataset.rows,
        name=f"{dataset.name}@{image_size}px",
    )


def multi_mnist_family(
    root: str | os.PathLike[str] | None = None,
    variant: str = "double-mnist",
    part: str = "train",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    *,
    image_size: int | None = None,
    transform: ImageTransform | None = None,
    normalize: tuple[float, float] | None = None,
    **split_kwargs: Any,
) -> EpisodicFamily:
    """An ``EpisodicFamily`` over one part of a built Double / Triple MNIST."""
    split = multi_mnist_split(root, variant, image_size=image_size, **split_kwargs)
    return EpisodicFamily(split[part], ways, shots, queries, transform, normalize=normalize)
