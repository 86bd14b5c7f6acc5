"""Reading the benchmarks' pickle formats (``metaloop.data.benchmarks``) without running
code: ``_DataUnpickler`` admits only arrays, numbers, strings and containers; the
tiered-ImageNet pickles (one part's PNG images and labels) and CIFAR-100's
``cifar-100-python`` archive (``load_cifar100``) are read through it.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaloop.data.dataset import ClassDataset
from metaloop.data.folder import ImageDataError, ImageSource, decode_image


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
