"""The generic class-folder / split-file image family (``metaloop.data.folder``)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaloop.data.folder import (
    ImageDataError,
    ImageSource,
    check_class_sizes,
    decode_image,
    folder_family,
    folder_split,
    load_image_classes,
    read_split_file,
)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def colour(c: int, i: int, size: int = 12) -> np.ndarray:
    """A flat RGB image whose red channel codes the class and green the image index."""
    a = np.zeros((size, size, 3), dtype=np.uint8)
    a[..., 0] = 20 * c + 10
    a[..., 1] = 10 * i + 5
    a[..., 2] = 200
    return a


def make_tree(root: Path, classes: int = 6, per_class: int = 4, fmt: str = "PNG") -> Path:
    ext = {"PNG": "png", "JPEG": "jpg", "PPM": "pgm"}[fmt]
    for c in range(classes):
        d = root / "top" / f"class{c:02d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{i}.{ext}").write_bytes(encode(colour(c, i), fmt))
    (root / "top" / "README.txt").write_text("not an image")
    return root / "top"


def test_class_folders_labels_and_shapes(tmp_path: Path) -> None:
    top = make_tree(tmp_path / "src")
    ds = load_image_classes(top, image_size=8, channels=3, cache_dir=tmp_path / "c")
    assert ds.num_classes == 6 and len(ds) == 24
    assert ds.image_shape == (3, 8, 8)
    assert ds.values("name") == [f"class{c:02d}" for c in range(6)]
    for c in range(6):
        red = ds.images_of(c)[:, 0].float().mean().item()
        assert abs(red - (20 * c + 10)) < 1.5  # the image in class c's folder, resized
    grey = load_image_classes(top, image_size=(6, 10), channels=1, use_cache=False)
    assert grey.image_shape == (1, 6, 10)


def test_zip_and_tar_sources_match_the_directory(tmp_path: Path) -> None:
    top = make_tree(tmp_path / "src", classes=3, per_class=3)
    zpath, tpath = tmp_path / "data.zip", tmp_path / "data.tar.gz"
    with zipfile.ZipFile(zpath, "w") as z, tarfile.open(tpath, "w:gz") as t:
        for p in sorted(top.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(tmp_path / "src").as_posix())
                t.add(p, p.relative_to(tmp_path / "src").as_posix())
    kw = dict(image_size=8, use_cache=False)
    d = load_image_classes(top, **kw)
    for path in (zpath, tpath):
        other = load_image_classes(path, **kw)
        assert other.values("name") == d.values("name")  # the single top folder is dropped
        assert torch.equal(other.storage, d.storage)


def test_split_files_csv_and_json(tmp_path: Path) -> None:
    # mini-ImageNet's layout: images/<file> and train.csv with header filename,label
    images = tmp_path / "mini" / "images"
    images.mkdir(parents=True)
    rows = {"train": [], "val": [], "test": []}
    for c, part in enumerate(["train", "train", "val", "test", "test"]):
        for i in range(3):
            name = f"n{c:08d}{i:08d}.jpg"
            (images / name).write_bytes(encode(colour(c, i), "JPEG"))
            rows[part].append((name, f"n{c:08d}"))
    for part, r in rows.items():
        text = "filename,label\n" + "".join(f"{a},{b}\n" for a, b in r)
        (tmp_path / "mini" / f"{part}.csv").write_text(text)
    split = folder_split(
        tmp_path / "mini",
        split_files={p: f"{p}.csv" for p in rows},
        image_dir="images",
        image_size=8,
        cache_dir=tmp_path / "c",
    )
    assert [split[p].num_classes for p in ("train", "val", "test")] == [2, 1, 2]
    assert split["test"].values("name") == ["n00000003", "n00000004"]
    # Chen et al.'s JSON form, absolute paths from another machine
    data = {
        "label_names": ["n00000000", "n00000001"],
        "image_names": [f"/elsewhere/images/{a}" for a, _ in rows["train"]],
        "image_labels": [0, 0, 0, 1, 1, 1],
    }
    (tmp_path / "base.json").write_text(json.dumps(data))
    assert read_split_file(tmp_path / "base.json")[3] == (
        "/elsewhere/images/" + rows["train"][3][0],
        "n00000001",
    )
    ds = load_image_classes(
        tmp_path / "mini",
        read_split_file(tmp_path / "base.json"),
        image_dir="images",
        image_size=8,
        use_cache=False,
    )
    assert ds.num_classes == 2 and len(ds) == 6


def test_splits_by_folder_list_and_proportion_are_disjoint_and_seeded(tmp_path: Path) -> None:
    top = make_tree(tmp_path / "src", classes=10, per_class=2)
    kw = dict(image_size=4, cache_dir=tmp_path / "c")
    a = folder_split(top, proportions=(0.6, 0.2, 0.2), seed=3, **kw)
    b = folder_split(top, proportions=(6, 2, 2), seed=3, **kw)
    c = folder_split(top, proportions=(0.6, 0.2, 0.2), seed=4, **kw)
    names = {p: set(a[p].values("name")) for p in ("train", "val", "test")}
    assert [len(v) for v in names.values()] == [6, 2, 2]
    assert not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    assert {p: set(b[p].values("name")) for p in names} == names
    assert {p: set(c[p].values("name")) for p in names} != names
    lists = folder_split(
        top, class_lists={"train": ["class00", "class01"], "test": ["class05"]}, **kw
    )
    assert lists.val is None and lists["test"].values("name") == ["class05"]
    with pytest.raises(ImageDataError, match="'class01' is in both"):
        folder_split(top, class_lists={"train": ["class01"], "test": ["class01"]}, **kw)
    with pytest.raises(ImageDataError, match="no folder"):
        folder_split(top, class_lists={"train": ["class01"], "test": ["nope"]}, **kw)


def test_one_line_errors(tmp_path: Path) -> None:
    top = make_tree(tmp_path / "src", classes=3, per_class=3)
    with pytest.raises(ImageDataError, match=r"split file .*missing.csv not found") as err:
        folder_split(top, split_files={"train": "missing.csv", "test": "t.csv"})
    assert "\n" not in str(err.value)
    split = folder_split(top, proportions=(1, 0, 2), image_size=4, use_cache=False)
    with pytest.raises(
        ImageDataError, match=r"'class\d\d' \(3 images\).*shots \+ queries = 1 \+ 5"
    ):
        folder_family(split, "test", ways=2, shots=1, queries=5)
    fam = folder_family(split, "test", ways=2, shots=1, queries=2)
    batch = fam.sample(2, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (2, 2, 3, 4, 4) and batch.query_y.shape == (2, 4)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(ImageDataError, match=r"bad\.zip is not a readable zip"):
        load_image_classes(bad)
    with pytest.raises(ImageDataError, match="not a decodable image"):
        decode_image(b"\x89PNG\r\n\x1a\nbroken", 8, 3, "x.png")
    with pytest.raises(ImageDataError, match="channels must be 1"):
        load_image_classes(top, channels=2)
    with pytest.raises(ImageDataError, match="pass image_size"):
        (top / "class00" / "big.png").write_bytes(encode(colour(0, 0, size=20)))
        load_image_classes(top, image_size=None, use_cache=False)


def test_cache_hit_and_a_failed_read_keeps_the_cache(tmp_path: Path) -> None:
    top = make_tree(tmp_path / "src", classes=2, per_class=3)
    cache = tmp_path / "cache"
    first = load_image_classes(top, image_size=8, cache_dir=cache)
    files = list((cache / "folder").glob("*.npz"))
    assert len(files) == 1
    before = files[0].read_bytes()
    again = load_image_classes(top, image_size=8, cache_dir=cache, workers=1)
    assert torch.equal(again.storage, first.storage)
    # truncate one image: the fingerprint changes, the rebuild fails, the cache survives
    victim = top / "class01" / "2.png"
    victim.write_bytes(victim.read_bytes()[:20])
    with pytest.raises(ImageDataError, match=r"class01/2.png: not a decodable image"):
        load_image_classes(top, image_size=8, cache_dir=cache)
    assert files[0].read_bytes() == before
    # a changed image is seen through the fingerprint and rebuilt
    victim.write_bytes(encode(colour(9, 9)))
    rebuilt = load_image_classes(top, image_size=8, cache_dir=cache)
    assert not torch.equal(rebuilt.storage, first.storage)


def test_truncated_zip_names_the_file(tmp_path: Path) -> None:
    top = make_tree(tmp_path / "src", classes=2, per_class=2)
    zpath = tmp_path / "d.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in sorted(top.rglob("*.png")):
            z.write(p, p.relative_to(top).as_posix())
    data = zpath.read_bytes()
    zpath.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDataError, match=r"d\.zip is not a readable zip archive"):
        load_image_classes(ImageSource(zpath), use_cache=False)


def test_check_class_sizes_passes_when_enough(tmp_path: Path) -> None:
    top = make_tree(tmp_path / "src", classes=2, per_class=3)
    ds = load_image_classes(top, image_size=4, use_cache=False)
    check_class_sizes(ds, 1, 2)
    with pytest.raises(ImageDataError):
        check_class_sizes(ds, 2, 2)
