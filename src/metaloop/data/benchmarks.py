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

This module holds the loaders, the download and ``load_benchmark``; what each benchmark
is (names, class counts, image sizes, class splits, normalization) lives in
``benchmarks_registry``, the safe readers of the pickle formats (tiered-ImageNet,
CIFAR-100) in ``benchmarks_pickles`` (every public name of both is importable from here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metaloop.data.benchmarks_pickles import (
    _DataUnpickler,  # noqa: F401 (named in docs/reliability.md)
    _safe_unpickle,  # noqa: F401 (re-exported)
    _tiered_part,
    _unpickle,  # noqa: F401 (tests import it from here)
    load_cifar100,
)
from metaloop.data.benchmarks_registry import (
    BENCHMARK_NORMALIZATION,  # noqa: F401 (re-exported)
    BENCHMARKS,
    CIFAR_FS_TEST,
    CIFAR_FS_VAL,
    FC100_SUPERCLASSES,
    IMAGE_SIZE,  # noqa: F401 (re-exported)
    NORMALIZATION,
    SPLIT_CLASSES,  # noqa: F401 (re-exported)
    ChannelNormalize,
    _check_counts,
    _check_name,
    benchmark_normalize,
)
from metaloop.data.dataset import ClassDataset
from metaloop.data.folder import (
    ImageDataError,
    ImageSource,
    folder_split,
    load_image_classes,
)
from metaloop.data.splits import PARTS, ClassSplit, check_disjoint


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


# -- CIFAR-FS and FC100 ---------------------------------------------------------------------
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
