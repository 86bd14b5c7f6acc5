"""The few-shot image benchmarks of the literature, read from their public formats.

None of these can be downloaded here; each loader reads the files as their public
sources ship them (documented per function, tested on small archives generated in
exactly that format) and returns a ``ClassSplit`` with the literature's class split.
Images are decoded once and cached (``metaloop.data.folder``).

* mini-ImageNet (Vinyals et al. 2016; Ravi and Larochelle 2017's split): ``images/`` +
  ``train.csv``, ``val.csv``, ``test.csv`` (``filename,label``), or ``train/``, ``val/``,
  ``test/`` class folders; 64/16/20 classes; 84 px.
* tiered-ImageNet (Ren et al. 2018): ``{part}_images_png.pkl`` + ``{part}_labels.pkl``, or
  class folders per part; 351/97/160 classes (20/6/8 categories); 84 px.
* CIFAR-FS (Bertinetto et al. 2019): ``cifar-100-python.tar.gz`` (or its folder);
  64/16/20 classes; 32 px.
* FC100 (Oreshkin et al. 2018): ``cifar-100-python.tar.gz``; 60/20/20 classes from
  12/4/4 superclasses; 32 px.
* CUB-200-2011 (Chen et al. 2019's split): ``CUB_200_2011.tgz`` or
  ``CUB_200_2011/images/<NNN.Name>/*.jpg``; 100/50/50 classes; 84 px.

``NORMALIZATION`` holds the per-channel mean and standard deviation the papers'
pipelines use (ImageNet statistics for the ImageNet-derived sets and CUB, CIFAR-100's
own for CIFAR-FS and FC100); ``ChannelNormalize`` applies them.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metaloop.data.dataset import ClassDataset
from metaloop.data.folder import (
    ImageDataError,
    ImageSource,
    decode_image,
    folder_split,
    load_image_classes,
)
from metaloop.data.splits import PARTS, ClassSplit, check_disjoint

BENCHMARKS = ("mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub")

#: per-channel (mean, std) of the papers' pipelines
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
}
BENCHMARK_NORMALIZATION = {
    "mini-imagenet": "imagenet",
    "tiered-imagenet": "imagenet",
    "cub": "imagenet",
    "cifar-fs": "cifar100",
    "fc100": "cifar100",
}
IMAGE_SIZE = {"mini-imagenet": 84, "tiered-imagenet": 84, "cub": 84, "cifar-fs": 32, "fc100": 32}
SPLIT_CLASSES = {
    "mini-imagenet": (64, 16, 20),
    "tiered-imagenet": (351, 97, 160),
    "cifar-fs": (64, 16, 20),
    "fc100": (60, 20, 20),
    "cub": (100, 50, 50),
}

# CIFAR-FS (Bertinetto et al. 2019): the validation and test classes of the authors'
# split; the other 64 CIFAR-100 classes are the training classes.
CIFAR_FS_VAL = (
    "beaver otter flatfish shark lamp television beetle butterfly sea camel cattle crab "
    "crocodile maple_tree motorcycle tractor"
).split()
CIFAR_FS_TEST = (
    "whale poppy rose sweet_pepper telephone bed table wardrobe leopard plain chimpanzee fox "
    "snail worm baby man woman bicycle pickup_truck rocket"
).split()
# FC100 (Oreshkin et al. 2018): superclasses per part (12/4/4)
FC100_SUPERCLASSES = {
    "train": (
        "fish flowers food_containers fruit_and_vegetables household_electrical_devices "
        "household_furniture large_man-made_outdoor_things large_natural_outdoor_scenes "
        "reptiles trees vehicles_1 vehicles_2"
    ).split(),
    "val": (
        "large_carnivores large_omnivores_and_herbivores non-insect_invertebrates small_mammals"
    ).split(),
    "test": "aquatic_mammals insects medium_mammals people".split(),
}


class ChannelNormalize:
    """``(x - mean_c) / std_c`` per channel: an image transform (``EpisodicFamily``'s
    ``transform``, after any augmentation)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ImageDataError(f"need one positive std per mean, got mean={mean}, std={std}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.shape[1] != len(self.mean):
            raise ImageDataError(
                f"ChannelNormalize has {len(self.mean)} channels, images have {images.shape[1]}"
            )
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=images.dtype).view(shape)
        std = torch.tensor(self.std, dtype=images.dtype).view(shape)
        return (images - mean) / std

    def __repr__(self) -> str:
        return f"ChannelNormalize(mean={self.mean}, std={self.std})"


def benchmark_normalize(name: str) -> ChannelNormalize:
    mean, std = NORMALIZATION[BENCHMARK_NORMALIZATION[_check_name(name)]]
    return ChannelNormalize(mean, std)


def _check_name(name: str) -> str:
    if name not in BENCHMARKS:
        raise ImageDataError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return name


def _check_counts(split: ClassSplit, name: str, strict: bool) -> ClassSplit:
    if strict:
        val = 0 if split.val is None else split.val.num_classes
        found = (split.train.num_classes, val, split.test.num_classes)
        if found != SPLIT_CLASSES[name]:
            raise ImageDataError(
                f"{name}: found {found[0]}/{found[1]}/{found[2]} train/val/test classes, the "
                f"benchmark has {'/'.join(map(str, SPLIT_CLASSES[name]))}; the files are "
                "incomplete or not the benchmark's (strict=False loads them as they are)"
            )
    return split


# -- mini-ImageNet --------------------------------------------------------------------------
def mini_imagenet(
    root: str | os.PathLike[str], *, image_size: int = 84, strict: bool = True, **load: Any
) -> ClassSplit:
    """mini-ImageNet with Ravi and Larochelle's split.

    ``root`` holds either ``images/`` (the 60,000 ``<wnid><index>.jpg`` files) and the split
    files ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``), or class
    folders ``train/<wnid>/``, ``val/<wnid>/``, ``test/<wnid>/``.
    """
    root = Path(root).expanduser()
    if all((root / f"{p}.csv").is_file() for p in PARTS):
        split = folder_split(
            root,
            split_files={p: f"{p}.csv" for p in PARTS},
            image_dir="images" if (root / "images").is_dir() else "",
            image_size=image_size,
            channels=3,
            name="mini-imagenet",
            protocol="mini-imagenet",
            **load,
        )
    else:
        split = _part_folders(root, "mini-imagenet", image_size, **load)
    return _check_counts(split, "mini-imagenet", strict)


def _part_folders(root: Path, name: str, image_size: int, **load: Any) -> ClassSplit:
    if not all((root / p).is_dir() for p in PARTS):
        raise ImageDataError(
            f"{name}: {root} holds neither train.csv/val.csv/test.csv with images/ nor "
            "train/, val/, test/ class folders"
        )
    parts = {
        p: load_image_classes(
            root, None, subdir=p, image_size=image_size, channels=3, name=f"{name}-{p}", **load
        )
        for p in PARTS
    }
    split = ClassSplit(parts["train"], parts["val"], parts["test"], name, f"{name} from {root}")
    check_disjoint(split, "name")
    return split


# -- tiered-ImageNet ------------------------------------------------------------------------
def tiered_imagenet(
    root: str | os.PathLike[str], *, image_size: int = 84, strict: bool = True, **load: Any
) -> ClassSplit:
    """tiered-ImageNet (Ren et al. 2018) from the authors' pickles or class folders.

    Pickles: ``{part}_images_png.pkl`` (a list of PNG-encoded images, each a ``uint8``
    array or ``bytes``) and ``{part}_labels.pkl`` (a dict with ``label_specific``
    (class index per image), ``label_general`` (category index), ``label_specific_str``
    and ``label_general_str`` (their names)).  The split is by category: 20/6/8.
    Folders: ``train/<class>/``, ``val/<class>/``, ``test/<class>/``.
    """
    root = Path(root).expanduser()
    if not all((root / f"{p}_images_png.pkl").is_file() for p in PARTS):
        split = _part_folders(root, "tiered-imagenet", image_size, **load)
        return _check_counts(split, "tiered-imagenet", strict)
    parts = {p: _tiered_part(root, p, image_size) for p in PARTS}
    split = ClassSplit(
        parts["train"], parts["val"], parts["test"], "tiered-imagenet", f"tiered-ImageNet {root}"
    )
    check_disjoint(split, "name")
    return _check_counts(split, "tiered-imagenet", strict)


class _DataUnpickler(pickle.Unpickler):
    """Unpickles data only: containers, numbers, strings, bytes and NumPy arrays.  Any other
    import a pickle asks for (``os.system`` in a planted file, any class) is refused, so a
    dataset file cannot run code (the benchmark archives are pickles of arrays and dicts)."""

    ALLOWED = (
        {
            (module, name)
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name in ("_reconstruct", "scalar")
        }
        | {
            (f"{package}.numeric", "_frombuffer")  # arrays in protocol-5 pickles
            for package in ("numpy.core", "numpy._core")
        }
        | {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("collections", "OrderedDict"),
            ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
            ("builtins", "bytearray"),
            ("builtins", "set"),
            ("builtins", "frozenset"),
            ("builtins", "complex"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to import {module}.{name}: a dataset pickle may hold only arrays, "
            "numbers, strings and containers"
        )


def _safe_unpickle(data: Any, encoding: str) -> Any:
    """``pickle.load`` of a file object (or ``bytes``) through ``_DataUnpickler``."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    return _DataUnpickler(f, encoding=encoding).load()


def _unpickle(path: Path) -> Any:
    if not path.is_file():
        raise ImageDataError(f"{path} not found")
    try:
        with open(path, "rb") as f:
            return _safe_unpickle(f, "latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
        raise ImageDataError(
            f"{path} is not a readable pickle ({err}): corrupt or truncated"
        ) from err


def _tiered_part(root: Path, part: str, image_size: int) -> ClassDataset:
    images_path = root / f"{part}_images_png.pkl"
    labels_path = root / f"{part}_labels.pkl"
    encoded = _unpickle(images_path)
    labels = _unpickle(labels_path)
    need = ("label_specific", "label_general", "label_specific_str", "label_general_str")
    if not isinstance(labels, Mapping) or any(k not in labels for k in need):
        raise ImageDataError(f"{labels_path}: expected a dict with keys {', '.join(need)}")
    specific = np.asarray(labels["label_specific"], dtype=np.int64)
    if len(encoded) != len(specific):
        raise ImageDataError(
            f"{images_path} holds {len(encoded)} images but {labels_path} labels {len(specific)}"
        )
    general = np.asarray(labels["label_general"], dtype=np.int64)
    names = [str(s) for s in labels["label_specific_str"]]
    categories = [str(s) for s in labels["label_general_str"]]
    arrays = [
        decode_image(
            bytes(np.asarray(e, dtype=np.uint8).tobytes()), image_size, 3, f"{images_path}[{i}]"
        )
        for i, e in enumerate(encoded)
    ]
    category_of = {int(c): int(g) for c, g in zip(specific, general)}
    info = [
        {"name": names[c], "category": categories[category_of[c]] if c in category_of else ""}
        for c in range(len(names))
    ]
    return ClassDataset(
        torch.from_numpy(np.stack(arrays)), torch.from_numpy(specific), info, name=f"tiered-{part}"
    )


# -- CIFAR-FS and FC100 ---------------------------------------------------------------------
def _cifar_source(root: Path) -> tuple[ImageSource, str]:
    for candidate in (root / "cifar-100-python.tar.gz", root):
        if candidate.is_file() or (
            candidate.is_dir() and (candidate / "cifar-100-python").is_dir()
        ):
            return ImageSource(candidate), "cifar-100-python/"
    if root.is_dir() and (root / "meta").is_file():
        return ImageSource(root), ""
    raise ImageDataError(
        f"{root}: expected cifar-100-python.tar.gz (from https://www.cs.toronto.edu/~kriz/) or "
        "the cifar-100-python/ folder it extracts to (files train, test, meta)"
    )


def load_cifar100(root: str | os.PathLike[str]) -> ClassDataset:
    """All 60,000 CIFAR-100 images (train and test pooled, as CIFAR-FS and FC100 do),
    ``uint8 [N, 3, 32, 32]``, classes = the 100 fine labels with their ``superclass``.

    Reads the ``cifar-100-python`` pickles: ``train`` and ``test`` (keys ``data`` ``[N,
    3072]`` uint8 in R, G, B planes, ``fine_labels``, ``coarse_labels``) and ``meta``
    (``fine_label_names``, ``coarse_label_names``)."""
    source, prefix = _cifar_source(Path(root).expanduser())
    wanted = [f"{prefix}{n}" for n in ("meta", "train", "test")]
    blobs = source.read_all(wanted)
    try:
        meta, train, test = (_safe_unpickle(blobs[n], "bytes") for n in wanted)
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ImageDataError(f"{source.path}: unreadable cifar-100-python pickle ({err})") from err

    def field(d: Mapping[Any, Any], key: str) -> Any:
        if key.encode() in d:
            return d[key.encode()]
        if key in d:
            return d[key]
        raise ImageDataError(f"{source.path}: a cifar-100-python pickle lacks the key {key!r}")

    fine_names = [
        n.decode() if isinstance(n, bytes) else n for n in field(meta, "fine_label_names")
    ]
    coarse_names = [
        n.decode() if isinstance(n, bytes) else n for n in field(meta, "coarse_label_names")
    ]
    data = np.concatenate([np.asarray(field(d, "data"), dtype=np.uint8) for d in (train, test)])
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ImageDataError(f"{source.path}: CIFAR data must be [N, 3072], got {data.shape}")
    fine = np.concatenate([np.asarray(field(d, "fine_labels")) for d in (train, test)])
    coarse = np.concatenate([np.asarray(field(d, "coarse_labels")) for d in (train, test)])
    superclass = {int(f): coarse_names[int(c)] for f, c in zip(fine, coarse)}
    info = [{"name": n, "superclass": superclass.get(i, "")} for i, n in enumerate(fine_names)]
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ClassDataset(images, torch.from_numpy(fine.astype(np.int64)), info, name="cifar100")


def _split_by_names(
    dataset: ClassDataset, parts: Mapping[str, Sequence[str]], protocol: str
) -> ClassSplit:
    index = {n: i for i, n in enumerate(dataset.values("name"))}
    missing = sorted({n for v in parts.values() for n in v} - set(index))
    if missing:
        raise ImageDataError(f"{protocol}: classes {missing[:5]} are not CIFAR-100 class names")
    subsets = {
        p: dataset.subset([index[n] for n in v], name=f"{protocol}-{p}") for p, v in parts.items()
    }
    split = ClassSplit(subsets["train"], subsets["val"], subsets["test"], protocol, protocol)
    check_disjoint(split, "name")
    return split


def cifar_fs(root: str | os.PathLike[str], *, strict: bool = True) -> ClassSplit:
    """CIFAR-FS (Bertinetto et al. 2019): CIFAR-100's 100 classes split 64/16/20."""
    ds = load_cifar100(root)
    held = set(CIFAR_FS_VAL) | set(CIFAR_FS_TEST)
    train = [n for n in ds.values("name") if n not in held]
    split = _split_by_names(
        ds, {"train": train, "val": CIFAR_FS_VAL, "test": CIFAR_FS_TEST}, "cifar-fs"
    )
    return _check_counts(split, "cifar-fs", strict)


def fc100(root: str | os.PathLike[str], *, strict: bool = True) -> ClassSplit:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 12/4/4 superclasses
    (60/20/20 classes)."""
    ds = load_cifar100(root)
    parts = {
        p: [n for n, s in zip(ds.values("name"), ds.values("superclass")) if s in supers]
        for p, supers in FC100_SUPERCLASSES.items()
    }
    split = _split_by_names(ds, parts, "fc100")
    return _check_counts(split, "fc100", strict)


# -- CUB-200-2011 ---------------------------------------------------------------------------
def cub_chen_split(classes: Sequence[str]) -> dict[str, list[str]]:
    """Chen et al. (2019)'s CUB split of the class folders sorted by name: class ``i``
    (0-based) is a training class if ``i % 2 == 0``, validation if ``i % 4 == 1``, test
    if ``i % 4 == 3`` (100/50/50 of the 200)."""
    ordered = sorted(classes)
    return {
        "train": [c for i, c in enumerate(ordered) if i % 2 == 0],
        "val": [c for i, c in enumerate(ordered) if i % 4 == 1],
        "test": [c for i, c in enumerate(ordered) if i % 4 == 3],
    }


def cub(
    root: str | os.PathLike[str], *, image_size: int = 84, strict: bool = True, **load: Any
) -> ClassSplit:
    """CUB-200-2011 with Chen et al. (2019)'s split, from ``CUB_200_2011.tgz`` (in
    ``root``, or ``root`` itself) or the extracted ``CUB_200_2011/images/<NNN.Name>/``."""
    root = Path(root).expanduser()
    if root.is_file():
        source = root
    elif (root / "CUB_200_2011.tgz").is_file():
        source = root / "CUB_200_2011.tgz"
    else:
        source = root
    src = ImageSource(source)
    subdir = next(
        (
            p
            for p in ("CUB_200_2011/images", "images")
            if any(n.startswith(p + "/") for n in src.names())
        ),
        None,
    )
    if subdir is None:
        raise ImageDataError(
            f"{source}: expected CUB_200_2011/images/<NNN.Name>/<image>.jpg (CUB_200_2011.tgz "
            "or its extracted folder)"
        )
    classes = sorted(
        {n[len(subdir) + 1 :].split("/")[0] for n in src.names() if n.startswith(subdir + "/")}
    )
    split = folder_split(
        source,
        class_lists=cub_chen_split(classes),
        subdir=subdir,
        image_size=image_size,
        channels=3,
        name="cub",
        protocol="cub-chen2019",
        **load,
    )
    return _check_counts(split, "cub", strict)


#: benchmark -> (public URL, file name, hash algorithm, digest) of the archives that have one
DOWNLOADS: dict[str, tuple[str, str, str, str]] = {
    "cifar-fs": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "cifar-100-python.tar.gz",
        "md5",
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
    "cub": (
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
        "CUB_200_2011.tgz",
        "md5",
        "97eceeb196236b17998738112f37df78",
    ),
}
DOWNLOADS["fc100"] = DOWNLOADS["cifar-fs"]


def download_benchmark(
    name: str, root: str | os.PathLike[str], *, progress: bool = True, timeout: float = 60.0
) -> Path:
    """Fetch the public archive of ``name`` into ``root`` (kept only if its checksum
    matches; written to ``<file>.part`` and renamed); return its path.  mini-ImageNet and
    tiered-ImageNet have no public URL with a published checksum: an error says so."""
    import hashlib
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    if _check_name(name) not in DOWNLOADS:
        raise ImageDataError(
            f"{name} has no public download with a published checksum; obtain it from its "
            f"authors and set data.root to the folder holding it"
        )
    url, filename, algorithm, expected = DOWNLOADS[name]
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    dest, part = root / filename, root / f"{filename}.part"
    digest = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=filename, disable=not progress)
            with bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        part.unlink(missing_ok=True)
        raise ImageDataError(
            f"could not download {url} ({err}); put {filename} into {root} yourself"
        ) from err
    if digest.hexdigest() != expected:
        part.unlink(missing_ok=True)
        raise ImageDataError(
            f"downloaded {filename} has {algorithm} {digest.hexdigest()}, expected {expected}: "
            f"the download is corrupt or the file at {url} changed"
        )
    os.replace(part, dest)
    return dest


def load_benchmark(
    name: str, root: str | os.PathLike[str], *, download: bool = False, **kwargs: Any
) -> ClassSplit:
    """The ``ClassSplit`` of benchmark ``name`` (one of ``BENCHMARKS``) from ``root``;
    ``download=True`` first fetches a missing public archive (``download_benchmark``)."""
    if download and _check_name(name) in DOWNLOADS:
        _, filename, _, _ = DOWNLOADS[name]
        folder = Path(root).expanduser()
        extracted = folder / ("cifar-100-python" if name != "cub" else "CUB_200_2011")
        if not (folder / filename).is_file() and not extracted.is_dir():
            download_benchmark(name, folder)
    loaders = {
        "mini-imagenet": mini_imagenet,
        "tiered-imagenet": tiered_imagenet,
        "cifar-fs": cifar_fs,
        "fc100": fc100,
        "cub": cub,
    }
    return loaders[_check_name(name)](root, **kwargs)


__all__ = [
    "BENCHMARKS",
    "DOWNLOADS",
    "NORMALIZATION",
    "ChannelNormalize",
    "benchmark_normalize",
    "cifar_fs",
    "cub",
    "cub_chen_split",
    "download_benchmark",
    "fc100",
    "load_benchmark",
    "load_cifar100",
    "mini_imagenet",
    "tiered_imagenet",
]
