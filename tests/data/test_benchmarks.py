"""Benchmark loaders on tiny archives generated in exactly the public formats."""

from __future__ import annotations

import io
import pickle
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaloop.data.benchmarks import (
    CIFAR_FS_TEST,
    CIFAR_FS_VAL,
    ChannelNormalize,
    benchmark_normalize,
    cifar_fs,
    cub,
    cub_chen_split,
    fc100,
    load_benchmark,
    mini_imagenet,
    tiered_imagenet,
)
from metaloop.data.folder import ImageDataError

CIFAR100 = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}


def jpeg(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def png_array(value: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def write_cifar_archive(path: Path) -> Path:
    """cifar-100-python.tar.gz: cifar-100-python/{train,test,meta}, bytes keys (Python 2);
    2 train and 1 test image per class, every pixel = class index (+100 for test)."""
    fine_names = sorted(n for v in CIFAR100.values() for n in v.split())
    coarse_names = sorted(CIFAR100)
    coarse_of = {n: coarse_names.index(s) for s, v in CIFAR100.items() for n in v.split()}

    def part(per_class: int, offset: int) -> bytes:
        fine = np.repeat(np.arange(100), per_class)
        data = (np.repeat(fine, 3072).reshape(-1, 3072) + offset).astype(np.uint8)
        d = {
            b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))],
            b"batch_label": b"training batch 1 of 1",
            b"fine_labels": fine.tolist(),
            b"coarse_labels": [coarse_of[fine_names[f]] for f in fine],
            b"data": data,
        }
        return pickle.dumps(d, protocol=2)

    meta = {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    }
    with tarfile.open(path, "w:gz") as t:
        for name, blob in (
            ("meta", pickle.dumps(meta, protocol=2)),
            ("train", part(2, 0)),
            ("test", part(1, 100)),
        ):
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    return path


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar_archive(tmp_path_factory.mktemp("cifar") / "cifar-100-python.tar.gz")


def test_cifar_fs_and_fc100(cifar_archive: Path) -> None:
    split = cifar_fs(cifar_archive.parent)
    assert [split[p].num_classes for p in ("train", "val", "test")] == [64, 16, 20]
    assert split["test"].values("name") == CIFAR_FS_TEST
    assert split["val"].values("name") == CIFAR_FS_VAL
    assert split["train"].image_shape == (3, 32, 32)
    assert len(split["train"]) == 64 * 3  # train and test images pooled
    # the label of every image is its fine class: pixel value = class index (+100 for test)
    apple = split["train"].images_of(split["train"].values("name").index("apple"))
    assert sorted({int(v) for v in apple.flatten().tolist()}) == [0, 100]
    f = fc100(cifar_archive)
    assert [f[p].num_classes for p in ("train", "val", "test")] == [60, 20, 20]
    assert set(f["test"].values("superclass")) == {
        "aquatic_mammals",
        "insects",
        "medium_mammals",
        "people",
    }
    assert not set(f["train"].values("superclass")) & set(f["val"].values("superclass"))


def test_cifar_errors(tmp_path: Path, cifar_archive: Path) -> None:
    with pytest.raises(ImageDataError, match=r"expected cifar-100-python\.tar\.gz"):
        cifar_fs(tmp_path)
    broken = tmp_path / "cifar-100-python.tar.gz"
    broken.write_bytes(cifar_archive.read_bytes()[:300])
    with pytest.raises(ImageDataError, match="not a readable tar archive"):
        fc100(tmp_path)


def test_mini_imagenet_csv_and_folders(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    counts = {"train": 4, "val": 2, "test": 3}
    c = 0
    for part, n in counts.items():
        lines = ["filename,label"]
        for _ in range(n):
            wnid = f"n{c:08d}"
            for i in range(2):
                name = f"{wnid}{i + 1:08d}.jpg"
                (root / "images" / name).write_bytes(jpeg(10 * c))
                lines.append(f"{name},{wnid}")
            c += 1
        (root / f"{part}.csv").write_text("\n".join(lines) + "\n")
    kw = dict(image_size=6, cache_dir=tmp_path / "cache")
    split = mini_imagenet(root, strict=False, **kw)
    assert [split[p].num_classes for p in counts] == [4, 2, 3]
    assert split["test"].image_shape == (3, 6, 6)
    assert split["val"].values("name") == ["n00000004", "n00000005"]
    with pytest.raises(ImageDataError, match=r"found 4/2/3 train/val/test classes.*64/16/20"):
        mini_imagenet(root, **kw)
    (root / "val.csv").unlink()
    with pytest.raises(ImageDataError, match=r"neither train\.csv"):
        mini_imagenet(root, **kw)


def test_tiered_imagenet_pickles(tmp_path: Path) -> None:
    sizes = {"train": (3, 2), "val": (2, 1), "test": (2, 1)}  # (classes, categories)
    offset = 0
    for part, (classes, categories) in sizes.items():
        specific = np.repeat(np.arange(classes), 2)
        general = specific % categories
        images = [png_array(10 * (offset + int(s))) for s in specific]
        labels = {
            "label_specific": specific,
            "label_general": general,
            "label_specific_str": [f"n{offset + i:08d}" for i in range(classes)],
            "label_general_str": [f"{part}_cat{g}" for g in range(categories)],
        }
        with open(tmp_path / f"{part}_images_png.pkl", "wb") as f:
            pickle.dump(images, f)
        with open(tmp_path / f"{part}_labels.pkl", "wb") as f:
            pickle.dump(labels, f)
        offset += classes
    split = tiered_imagenet(tmp_path, image_size=4, strict=False)
    assert [split[p].num_classes for p in sizes] == [3, 2, 2]
    assert split["train"].values("category") == ["train_cat0", "train_cat1", "train_cat0"]
    assert int(split["test"].images_of(1)[0, 0, 0, 0]) == 60
    (tmp_path / "val_labels.pkl").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ImageDataError, match=r"val_labels\.pkl is not a readable pickle"):
        tiered_imagenet(tmp_path, image_size=4, strict=False)


def test_cub_chen_split_from_the_tgz(tmp_path: Path) -> None:
    path = tmp_path / "CUB_200_2011.tgz"
    names = [f"{i:03d}.Bird_{i}" for i in range(1, 201)]
    with tarfile.open(path, "w:gz") as t:
        for i, cls in enumerate(names):
            blob = jpeg(i % 250, 4)
            info = tarfile.TarInfo(f"CUB_200_2011/images/{cls}/{cls}_{i:04d}.jpg")
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
        text = "\n".join(f"{i + 1} {c}" for i, c in enumerate(names)).encode()
        info = tarfile.TarInfo("CUB_200_2011/classes.txt")
        info.size = len(text)
        t.addfile(info, io.BytesIO(text))
    split = cub(tmp_path, image_size=4, use_cache=False)
    assert [split[p].num_classes for p in ("train", "val", "test")] == [100, 50, 50]
    assert split["train"].values("name")[:2] == ["001.Bird_1", "003.Bird_3"]
    assert split["val"].values("name")[:2] == ["002.Bird_2", "006.Bird_6"]
    assert split["test"].values("name")[:2] == ["004.Bird_4", "008.Bird_8"]
    assert cub_chen_split(["b", "a", "c", "d"]) == {
        "train": ["a", "c"],
        "val": ["b"],
        "test": ["d"],
    }
    with pytest.raises(ImageDataError, match="unknown benchmark 'imagenet'"):
        load_benchmark("imagenet", tmp_path)


def test_channel_normalize() -> None:
    x = torch.rand(2, 3, 4, 4)
    out = benchmark_normalize("mini-imagenet")(x)
    assert torch.allclose(out[:, 1], (x[:, 1] - 0.456) / 0.224)
    with pytest.raises(ImageDataError, match="3 channels, images have 1"):
        ChannelNormalize((0.1, 0.2, 0.3), (1, 1, 1))(torch.rand(1, 1, 2, 2))


def test_download_checks_the_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import urllib.request

    import metaloop.data.benchmarks as bm

    archive = write_cifar_archive(tmp_path / "served.tar.gz").read_bytes()

    class Response(io.BytesIO):
        headers = types.MappingProxyType({})

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(archive))
    url, name, algorithm, _ = bm.DOWNLOADS["cifar-fs"]
    monkeypatch.setitem(bm.DOWNLOADS, "cifar-fs", (url, name, algorithm, "0" * 32))
    with pytest.raises(ImageDataError, match="expected 0000"):
        load_benchmark("cifar-fs", tmp_path / "a", download=True)
    assert not list((tmp_path / "a").iterdir())  # nothing half-written is left
    good = hashlib.md5(archive).hexdigest()
    monkeypatch.setitem(bm.DOWNLOADS, "cifar-fs", (url, name, algorithm, good))
    split = load_benchmark("cifar-fs", tmp_path / "a", download=True, strict=True)
    assert split["test"].num_classes == 20 and (tmp_path / "a" / name).is_file()
    with pytest.raises(ImageDataError, match="no public download"):
        bm.download_benchmark("mini-imagenet", tmp_path)
