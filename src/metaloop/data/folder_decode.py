"""Decoding images (``metaloop.data.folder``): ``decode_image`` (one image to ``uint8
[C, H, W]``, grey or RGB, Lanczos-resized), ``decode_all`` (many, a process pool for large
directories and zips), and the fingerprinted cache of decoded arrays that
``load_image_classes`` reads and writes.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from metaloop.data.folder_sources import ImageDataError, ImageSource
from metaloop.validate import is_int

#: the logger of ``metaloop.data.folder``, whose cache this is
log = logging.getLogger("metaloop.data.folder")

#: bump when decoding or the cache format changes: older caches are then rebuilt
CACHE_VERSION = 1
RESAMPLE = "lanczos"
#: below this many images a worker pool costs more than it saves
_PARALLEL_MIN = 2000

Size = int | tuple[int, int] | None


# -- decoding -------------------------------------------------------------------------------
def _size_pair(image_size: Size) -> tuple[int, int] | None:
    """``(height, width)`` or ``None`` (keep)."""
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or any(not is_int(v) or v < 1 for v in pair):
        raise ImageDataError(
            f"image_size must be a positive integer, a (height, width) pair or None, "
            f"got {image_size!r}"
        )
    return pair  # type: ignore[return-value]


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise ImageDataError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return channels


def decode_image(
    data: bytes, image_size: Size = None, channels: int = 3, source: str = "image"
) -> np.ndarray:
    """One encoded image -> ``uint8 [channels, H, W]``: grey (``"L"``) or RGB, resized
    (Lanczos, antialiased) to ``image_size`` (an int for square, ``(H, W)``, or ``None``
    to keep).  ``source`` names the file in error messages."""
    size = _size_pair(image_size)
    mode = "L" if _check_channels(channels) == 1 else "RGB"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            out = img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDataError(f"{source}: not a decodable image ({err})") from err
    if size is not None and out.size != (size[1], size[0]):
        out = out.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    array = np.asarray(out, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _decode_chunk(args: tuple[str, list[str], Size, int]) -> np.ndarray:
    path, names, image_size, channels = args
    source = ImageSource(path)
    try:
        return _stack(source, names, [source.read(n) for n in names], image_size, channels)
    finally:
        source.close()


def _stack(
    source: ImageSource, names: list[str], blobs: list[bytes], image_size: Size, channels: int
) -> np.ndarray:
    arrays = [
        decode_image(b, image_size, channels, f"{source.path}::{n}") for n, b in zip(names, blobs)
    ]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(n for n, a in zip(names, arrays) if a.shape != first)
        raise ImageDataError(
            f"{source.path}::{odd} has size {arrays[names.index(odd)].shape[1:]} but "
            f"{names[0]} has {first[1:]}; pass image_size to resize every image to one size"
        )
    if not arrays:
        return np.zeros((0, channels, 1, 1), dtype=np.uint8)
    return np.stack(arrays)


def decode_all(
    source: ImageSource, names: list[str], image_size: Size, channels: int, workers: int = 1
) -> np.ndarray:
    """Decode ``names`` of ``source`` to ``uint8 [N, C, H, W]`` (a process pool for many
    images from a directory or zip)."""
    if source.kind == "tar":
        blobs = source.read_all(names)
        return _stack(source, names, [blobs[n] for n in names], image_size, channels)
    if workers <= 1 or len(names) < _PARALLEL_MIN:
        return _stack(source, names, [source.read(n) for n in names], image_size, channels)
    step = -(-len(names) // (workers * 4))
    chunks = [
        (str(source.path), names[i : i + step], image_size, channels)
        for i in range(0, len(names), step)
    ]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        pieces = pool.map(_decode_chunk, chunks)
    shapes = {p.shape[1:] for p in pieces}
    if len(shapes) > 1:
        raise ImageDataError(
            f"{source.path}: images of different sizes {sorted(shapes)}; pass image_size"
        )
    return np.concatenate(pieces)


# -- cache ----------------------------------------------------------------------------------
def _cache_file(cache_dir: Path, name: str, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "images"
    return cache_dir / "folder" / f"{safe}-{key[:20]}.npz"


def _read_cache(path: Path, want: dict[str, Any], count: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            images = f["images"]
    except Exception as err:  # any unreadable cache is rebuilt
        log.warning("image cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    if diff:
        log.warning("image cache %s does not match (found, wanted: %s); rebuilding it", path, diff)
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != count:
        log.warning("image cache %s is inconsistent; rebuilding it", path)
        return None
    return images


def _write_cache(path: Path, meta: dict[str, Any], images: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not write the image cache %s (%s); continuing without it", path, err)
