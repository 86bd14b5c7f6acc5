"""Any labelled image collection as a ``ClassDataset``: class folders or split files.

Sources (``ImageSource``): a directory, a zip archive or a tar archive (``.tar``,
``.tar.gz``, ``.tgz``) holding images in any format Pillow reads.  What the images are
labelled with comes from one of two places:

* **class folders**: the class of an image is the folder it sits in, written as its path
  relative to the scanned folder (``subdir``), e.g. ``n01532829`` or ``train/3``;
* **split files**: CSV or JSON lists of ``(path, class)`` rows as the literature ships
  them: Ravi and Larochelle's ``train.csv`` (header ``filename,label``), a JSON list of
  ``[path, class]`` pairs, or Chen et al. (2019)'s ``{"label_names", "image_names",
  "image_labels"}`` files.  Paths are looked up relative to ``image_dir``; a path not
  found there is tried by its last two components (``class/file``) and then by its file
  name, so files written on another machine (absolute paths) still resolve.

Every image is decoded once (``decode_image``): converted to grey (``channels=1``) or RGB
(``channels=3``), resized to ``image_size`` with Pillow's antialiasing Lanczos filter, and
stored as ``uint8 [N, C, H, W]``.  The decoded arrays are cached (compressed ``.npz``
under ``<cache_dir>/folder/``), keyed by the list of images and the decoding settings,
and checked against a fingerprint of the source (the member CRCs of a zip, a listing of
sizes and modification times of a directory, the SHA-256 of a tar); a cache that
disagrees is rebuilt with a logged warning, never used.  The cache is written atomically
(temporary file + rename) and only after every image decoded, so a failed read never
overwrites a good cache.

Class splits (``folder_split``): by split files (one per part), by folder lists (class
names per part) or by a seeded proportion of the classes; every split is checked
disjoint by class name.  ``folder_family`` wraps one part in an ``EpisodicFamily`` and
refuses classes with fewer images than ``shots + queries``, naming them.

Errors (``ImageDataError``, a ``ValueError``) are one line naming the file and what was
expected.

This module holds the loader, the splits and the family; reading sources and split files
lives in ``folder_sources``, decoding and the cache in ``folder_decode`` (every public
name of both is importable from here).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaloop.data.dataset import ClassDataset
from metaloop.data.episodes import EpisodicFamily, ImageTransform
from metaloop.data.folder_decode import (
    CACHE_VERSION,
    RESAMPLE,
    Size,
    _cache_file,
    _check_channels,
    _read_cache,
    _size_pair,
    _write_cache,
    decode_all,
    decode_image,
)
from metaloop.data.folder_sources import (
    ImageDataError,
    ImageSource,
    Rows,
    image_extensions,
    read_split_file,
    resolve_rows,
    scan_class_folders,
)
from metaloop.data.omniglot import default_cache_dir
from metaloop.data.splits import PARTS, ClassSplit, check_disjoint
from metaloop.validate import is_number

__all__ = [
    "CACHE_VERSION",
    "RESAMPLE",
    "ImageDataError",
    "ImageSource",
    "Rows",
    "Size",
    "check_class_sizes",
    "decode_all",
    "decode_image",
    "folder_family",
    "folder_split",
    "image_extensions",
    "load_image_classes",
    "read_split_file",
    "resolve_rows",
    "scan_class_folders",
]


# -- public loaders -------------------------------------------------------------------------
def load_image_classes(
    source: str | os.PathLike[str] | ImageSource,
    rows: Rows | None = None,
    *,
    image_size: Size = 84,
    channels: int = 3,
    subdir: str | None = None,
    image_dir: str = "",
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    workers: int = 2,
    name: str | None = None,
    class_order: Sequence[str] | None = None,
    extra_info: Mapping[str, Any] | None = None,
) -> ClassDataset:
    """Images of ``source`` as a ``ClassDataset`` (``uint8 [N, channels, H, W]``).

    Args:
        source: a directory, zip or tar archive (or an ``ImageSource``).
        rows: ``(path, class)`` rows (e.g. from ``read_split_file``), resolved against
            ``image_dir`` with ``resolve_rows``; ``None`` scans class folders under
            ``subdir`` (``scan_class_folders``).
        image_size: side, ``(height, width)`` or ``None`` (keep; every image must then
            have one size).
        channels: 1 (grey) or 3 (RGB; grey images are replicated).
        cache_dir: where the decoded arrays are cached (default ``default_cache_dir()``).
        use_cache: read and write the cache.
        workers: decoding processes.
        name: the dataset's name (messages, the cache file name).
        class_order: class names in the order of the class ids (default: sorted); every
            class of ``rows`` must be in it, and each listed class must have images.
        extra_info: metadata added to every class (e.g. ``{"domain": "faces"}``).

    Class metadata: ``name`` (the class name), ``images`` (its image count) and
    ``extra_info``.
    """
    own = not isinstance(source, ImageSource)
    src = ImageSource(source) if own else source
    assert isinstance(src, ImageSource)
    try:
        listed = (
            scan_class_folders(src, subdir) if rows is None else resolve_rows(src, rows, image_dir)
        )
        seen: dict[str, str] = {}
        for member, cls in listed:
            if seen.setdefault(member, cls) != cls:
                raise ImageDataError(
                    f"{src.path}: image {member} is listed under two classes, "
                    f"{seen[member]!r} and {cls!r}"
                )
        names_found = sorted({c for _, c in listed})
        if class_order is None:
            order = names_found
        else:
            order = list(class_order)
            missing = sorted(set(order) - set(names_found))
            if missing:
                raise ImageDataError(
                    f"{src.path}: no images of class(es) {missing[:5]} (of {len(order)} named)"
                )
            extra = sorted(set(names_found) - set(order))
            if extra:
                raise ImageDataError(
                    f"{src.path}: images of class(es) {extra[:5]} that class_order does not name"
                )
        index = {c: i for i, c in enumerate(order)}
        listed = sorted(listed, key=lambda r: (index[r[1]], r[0]))
        members = [m for m, _ in listed]
        labels = np.asarray([index[c] for _, c in listed], dtype=np.int64)
        size = _size_pair(image_size)
        _check_channels(channels)
        label = name or src.path.name
        key = hashlib.sha256(
            json.dumps([str(src.path.resolve()), size, channels, listed]).encode()
        ).hexdigest()
        want = {
            "version": CACHE_VERSION,
            "key": key,
            "source": src.fingerprint(members),
            "resample": RESAMPLE,
        }
        cache = _cache_file(
            Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), label, key
        )
        images = _read_cache(cache, want, len(members)) if use_cache else None
        if images is None:
            images = decode_all(src, members, image_size, channels, workers)
            if use_cache:
                _write_cache(cache, want, images)
    finally:
        if own:
            src.close()
    counts = np.bincount(labels, minlength=len(order))
    info = [
        {"name": c, "images": int(counts[i]), **(extra_info or {})} for i, c in enumerate(order)
    ]
    return ClassDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        info,
        name=label,
    )


def _split_by_proportion(
    classes: Sequence[str], proportions: Sequence[float], seed: int
) -> dict[str, list[str]]:
    if len(proportions) != 3 or any(not is_number(p) or p < 0 for p in proportions):
        raise ImageDataError(
            f"proportions must be three numbers >= 0 (train, val, test), got {proportions!r}"
        )
    if all(isinstance(p, int) for p in proportions):  # class counts
        counts = [int(p) for p in proportions]
        if sum(counts) > len(classes):
            raise ImageDataError(
                f"proportions ask for {sum(counts)} classes but the source has {len(classes)}"
            )
    else:
        total = float(sum(proportions))
        if abs(total - 1.0) > 1e-6:
            raise ImageDataError(f"proportions must sum to 1, got {total}")
        n = len(classes)
        counts = [round(proportions[0] * n), round(proportions[1] * n)]
        counts.append(n - sum(counts))
    if counts[0] < 1 or counts[2] < 1:
        raise ImageDataError(
            f"proportions leave {counts[0]} train and {counts[2]} test classes of "
            f"{len(classes)}; each needs at least one"
        )
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(int(seed)))
    shuffled = [classes[i] for i in order.tolist()]
    a, b = counts[0], counts[0] + counts[1]
    return {
        "train": sorted(shuffled[:a]),
        "val": sorted(shuffled[a:b]),
        "test": sorted(shuffled[b : b + counts[2]]),
    }


def folder_split(
    root: str | os.PathLike[str],
    *,
    split_files: Mapping[str, str | os.PathLike[str]] | None = None,
    class_lists: Mapping[str, Sequence[str]] | None = None,
    proportions: Sequence[float] | None = None,
    seed: int = 0,
    source: str | os.PathLike[str] | None = None,
    protocol: str = "folder",
    **load_kwargs: Any,
) -> ClassSplit:
    """Train / val / test class sets of an image collection, decoded once (one cache).

    Exactly one way to split:

    * ``split_files={"train": "train.csv", "val": ..., "test": ...}``: one CSV/JSON file
      of ``(path, class)`` rows per part (relative paths resolve against ``root``);
      images are looked up in ``source`` (default ``root``) under ``image_dir``;
    * ``class_lists={"train": [class names], ...}``: folder names per part;
    * ``proportions=(0.64, 0.16, 0.20)`` (fractions) or ``(64, 16, 20)`` (class counts):
      a ``seed``-ed shuffle of the sorted class folders.

    ``val`` may be absent or empty.  ``load_kwargs`` go to ``load_image_classes``
    (``image_size``, ``channels``, ``subdir``, ``image_dir``, ``cache_dir``, ...).  The
    parts are checked disjoint by class name.
    """
    given = [x is not None for x in (split_files, class_lists, proportions)]
    if sum(given) != 1:
        raise ImageDataError(
            "folder_split needs exactly one of split_files, class_lists or proportions, "
            f"got {sum(given)}"
        )
    root = Path(root).expanduser()
    src_path = Path(source).expanduser() if source is not None else root
    parts_of: dict[str, list[str]]
    if split_files is not None:
        _check_parts(split_files, "split_files")
        rows: list[tuple[str, str]] = []
        parts_of = {}
        for part, file in split_files.items():
            file = Path(file)
            part_rows = read_split_file(file if file.is_absolute() else root / file)
            parts_of[part] = sorted({c for _, c in part_rows})
            rows.extend(part_rows)
        _check_lists_disjoint(parts_of, "split files")
        dataset = load_image_classes(src_path, rows, **load_kwargs)
    else:
        dataset = load_image_classes(src_path, None, **load_kwargs)
        names = dataset.values("name")
        if class_lists is not None:
            _check_parts(class_lists, "class_lists")
            parts_of = {p: list(v) for p, v in class_lists.items()}
            _check_lists_disjoint(parts_of, "class_lists")
            unknown = sorted({c for v in parts_of.values() for c in v} - set(names))
            if unknown:
                raise ImageDataError(
                    f"class_lists name class(es) {unknown[:5]} that have no folder in {src_path}"
                )
        else:
            assert proportions is not None
            parts_of = _split_by_proportion(names, proportions, seed)
    index = {c: i for i, c in enumerate(dataset.values("name"))}
    parts: dict[str, ClassDataset | None] = {}
    for part in PARTS:
        classes = parts_of.get(part) or []
        parts[part] = (
            dataset.subset([index[c] for c in classes], name=f"{dataset.name}:{part}")
            if classes
            else None
        )
    if parts["train"] is None or parts["test"] is None:
        raise ImageDataError("a split needs train and test classes; one of them is empty")
    how = (
        "split files"
        if split_files is not None
        else "class lists"
        if class_lists is not None
        else f"proportions {tuple(proportions or ())} (seed {seed})"
    )
    split = ClassSplit(
        parts["train"],  # type: ignore[arg-type]
        parts["val"],
        parts["test"],  # type: ignore[arg-type]
        protocol,
        f"{dataset.name} split by {how}: "
        + ", ".join(f"{p}: {len(parts_of.get(p) or [])} classes" for p in PARTS),
    )
    check_disjoint(split, "name")
    return split


def _check_parts(mapping: Mapping[str, Any], what: str) -> None:
    unknown = sorted(set(mapping) - set(PARTS))
    if unknown:
        raise ImageDataError(f"{what} names unknown part(s) {unknown}; choose from {PARTS}")


def _check_lists_disjoint(parts_of: Mapping[str, Sequence[str]], what: str) -> None:
    seen: dict[str, str] = {}
    for part, classes in parts_of.items():
        for c in classes:
            if seen.setdefault(c, part) != part:
                raise ImageDataError(f"{what}: class {c!r} is in both {seen[c]!r} and {part!r}")


def check_class_sizes(dataset: ClassDataset, shots: int, queries: int) -> None:
    """Raise ``ImageDataError`` naming the classes with fewer than ``shots + queries``
    images (an episode could never use them)."""
    need = shots + queries
    small = [
        (dataset.class_info[c].get("name", str(c)), int(n))
        for c, n in enumerate(dataset.class_sizes.tolist())
        if n < need
    ]
    if small:
        listed = ", ".join(f"{n!r} ({k} images)" for n, k in small[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        raise ImageDataError(
            f"{dataset.name}: class(es) {listed}{more} have fewer than shots + queries = "
            f"{shots} + {queries} = {need} images; lower shots or queries, or drop those classes"
        )


def folder_family(
    split: ClassSplit,
    part: str = "train",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    *,
    transform: ImageTransform | None = None,
    normalize: tuple[float, float] | None = None,
    class_groups: Any = None,
) -> EpisodicFamily:
    """An ``EpisodicFamily`` over one part of ``split``; every class must hold at least
    ``shots + queries`` images (else an error naming them)."""
    dataset = split[part]
    check_class_sizes(dataset, shots, queries)
    return EpisodicFamily(
        dataset,
        ways,
        shots,
        queries,
        transform,
        normalize=normalize,
        class_groups=class_groups,
    )
