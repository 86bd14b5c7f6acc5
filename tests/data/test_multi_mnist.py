"""Double / Triple MNIST (split-safe variant) built from an MNIST zip in the real layout."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaloop.data.folder import ImageDataError
from metaloop.data.multi_mnist import (
    build_multi_mnist,
    compose,
    multi_mnist_family,
    multi_mnist_split,
    read_mnist,
)


@pytest.fixture(scope="module")
def mnist_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/<digit>/<index>.png`` and ``test/<digit>/<index>.png`` like mnist_png.zip;
    every image is distinct (its pixels encode part, digit and index)."""
    path = tmp_path_factory.mktemp("mnist") / "mnist_png.zip"
    rng = np.random.default_rng(0)
    index = 0
    with zipfile.ZipFile(path, "w") as z:
        for part, per_digit in (("train", 6), ("test", 3)):
            for d in range(10):
                for _ in range(per_digit):
                    a = (rng.random((28, 28)) * 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(a).save(buf, format="PNG")
                    z.writestr(f"{part}/{d}/{index}.png", buf.getvalue())
                    index += 1
    return path


def build(mnist_zip: Path, out: Path, seed: int = 0, variant: str = "double-mnist") -> Path:
    counts = (6, 2, 3) if variant == "double-mnist" else (8, 3, 4)
    return build_multi_mnist(
        variant, out, mnist=mnist_zip, seed=seed, images_per_class=4, split_classes=counts
    )


def test_same_seed_same_images(mnist_zip: Path, tmp_path: Path) -> None:
    a = multi_mnist_split(build(mnist_zip, tmp_path / "a"))
    b = multi_mnist_split(build(mnist_zip, tmp_path / "b"))
    c = multi_mnist_split(build(mnist_zip, tmp_path / "c", seed=1))
    for part in ("train", "val", "test"):
        assert torch.equal(a[part].storage, b[part].storage)
        assert a[part].values("name") == b[part].values("name")
    assert a["train"].values("name") != c["train"].values("name")
    assert a["train"].image_shape == (1, 64, 64)
    assert [a[p].num_classes for p in ("train", "val", "test")] == [6, 2, 3]


def test_no_mnist_image_in_two_splits_and_labels_are_the_digits(
    mnist_zip: Path, tmp_path: Path
) -> None:
    for variant in ("double-mnist", "triple-mnist"):
        root = build(mnist_zip, tmp_path / variant, variant=variant)
        mnist = read_mnist(mnist_zip)
        names = json.loads((root / "mnist_names.json").read_text())
        used: dict[str, str] = {}
        k = 2 if variant == "double-mnist" else 3
        for part in ("train", "val", "test"):
            with np.load(root / f"{part}.npz") as f:
                images, labels, sources, offsets = (
                    f["images"],
                    f["labels"],
                    f["sources"],
                    f["offsets"],
                )
                classes, mnist_part = [str(c) for c in f["classes"]], str(f["mnist_part"])
            assert mnist_part == ("test" if part == "test" else "train")
            pool_images, pool_digits, _ = mnist[mnist_part]
            for s in np.unique(sources):
                member = names[mnist_part][s]
                assert used.setdefault(member, part) == part, f"{member} in two splits"
            # the digits drawn are the class's digits, and the image is their composition
            drawn = pool_digits[sources]
            want = np.asarray([[int(ch) for ch in classes[y]] for y in labels])
            assert drawn.shape == (len(labels), k) and np.array_equal(drawn, want)
            side = images.shape[-1]
            assert np.array_equal(images[:, 0], compose(pool_images[sources], offsets, side))
        family = multi_mnist_family(root, variant, "test", ways=3, shots=1, queries=2)
        batch = family.sample(2, torch.Generator().manual_seed(0))
        ds = family.dataset
        for t in range(2):
            for cls in batch.info["classes"][t].tolist():
                assert ds.class_info[cls]["digits"] == tuple(
                    int(c) for c in ds.class_info[cls]["name"]
                )
                assert len(ds.class_info[cls]["digits"]) == k


def test_compose_places_digits_by_maximum() -> None:
    digits = np.zeros((1, 2, 28, 28), dtype=np.uint8)
    digits[0, 0, 0, 0] = 100
    digits[0, 1, 0, 0] = 50
    digits[0, 1, 1, 1] = 7
    out = compose(digits, np.array([[[0, 0], [0, 0]]]), 30)
    assert out[0, 0, 0] == 100 and out[0, 1, 1] == 7 and out.sum() == 107
    out = compose(digits, np.array([[[0, 0], [2, 1]]]), 30)
    assert out[0, 2, 1] == 50 and out[0, 3, 2] == 7


def test_errors_and_resizing(mnist_zip: Path, tmp_path: Path) -> None:
    root = build(mnist_zip, tmp_path / "d")
    with pytest.raises(ImageDataError, match="holds a different build"):
        build(mnist_zip, tmp_path / "d", seed=5)
    with pytest.raises(ImageDataError, match="no multi-MNIST dataset"):
        multi_mnist_split(tmp_path / "nothing")
    with pytest.raises(ImageDataError, match="more than the 100 classes"):
        build_multi_mnist(
            "double-mnist", tmp_path / "e", mnist=mnist_zip, split_classes=(64, 30, 20)
        )
    small = multi_mnist_split(root, image_size=28)
    assert small["train"].image_shape == (1, 28, 28)


def test_downsized_build_stores_the_canvases_block_averaged(
    mnist_zip: Path, tmp_path: Path
) -> None:
    counts = (8, 3, 4)
    full = build(mnist_zip, tmp_path / "full", variant="triple-mnist")
    small = build_multi_mnist(
        "triple-mnist",
        tmp_path / "small",
        mnist=mnist_zip,
        images_per_class=4,
        split_classes=counts,
        image_size=28,
    )
    assert json.loads((small / "meta.json").read_text())["image_size"] == 28
    for part in ("train", "val", "test"):
        with np.load(full / f"{part}.npz") as f, np.load(small / f"{part}.npz") as g:
            assert np.array_equal(f["sources"], g["sources"])
            assert np.array_equal(f["offsets"], g["offsets"])
            # 84 -> 28 px: every stored pixel is the rounded mean of a 3x3 block
            blocks = f["images"].reshape(-1, 1, 28, 3, 28, 3).astype(np.float64).mean((3, 5))
            assert g["images"].shape[-2:] == (28, 28)
            assert np.array_equal(g["images"], np.round(blocks).astype(np.uint8))
    assert "stored at 28px" in multi_mnist_split(small).description
    with pytest.raises(ImageDataError, match="image_size must be an integer from 1 to"):
        build_multi_mnist("triple-mnist", tmp_path / "bad", mnist=mnist_zip, image_size=90)
