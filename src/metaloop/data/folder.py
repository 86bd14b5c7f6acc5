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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metaloop.data.dataset import ClassDataset
from metaloop.data.episodes import EpisodicFamily, ImageTransform
from metaloop.data.omniglot import default_cache_dir
from metaloop.data.splits import PARTS, ClassSplit, check_disjoint
from metaloop.validate import is_int, is_number

log = logging.getLogger(__name__)

#: bump when decoding or the cache format changes: older caches are then rebuilt
CACHE_VERSION = 1
RESAMPLE = "lanczos"
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "/._")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
#: below this many images a worker pool costs more than it saves
_PARALLEL_MIN = 2000

Size = int | tuple[int, int] | None
Rows = Sequence[tuple[str, str]]


class ImageDataError(ValueError):
    """Image files or split files are missing, corrupt or not as expected."""


def image_extensions() -> set[str]:
    """File extensions (lower case, with the dot) of every format Pillow can open."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _is_junk(name: str) -> bool:
    return any(j in f"/{name}" for j in _JUNK) or PurePosixPath(name).name.startswith(".")


# -- sources --------------------------------------------------------------------------------
class ImageSource:
    """Uniform read access to a directory, a zip or a tar archive of images.

    Member names are POSIX paths relative to the directory (or the archive root).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise ImageDataError(
                f"image source {self.path} not found; expected a directory of class folders, "
                "a zip or a tar archive"
            )
        name = self.path.name.lower()
        self.kind = (
            "dir" if self.path.is_dir() else "tar" if name.endswith(_TAR_SUFFIXES) else "zip"
        )
        self._zip: zipfile.ZipFile | None = None
        self._names: list[str] | None = None

    def __repr__(self) -> str:
        return f"ImageSource({str(self.path)!r}, kind={self.kind!r})"

    def _archive_error(self, err: BaseException) -> ImageDataError:
        return ImageDataError(
            f"{self.path} is not a readable {self.kind} archive ({err}): the file is corrupt or "
            "truncated; fetch it again"
        )

    def _open_zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                raise self._archive_error(err) from err
        return self._zip

    def names(self) -> list[str]:
        """Every file member (sorted)."""
        if self._names is None:
            if self.kind == "dir":
                found = [
                    p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()
                ]
            elif self.kind == "zip":
                found = [n for n in self._open_zip().namelist() if not n.endswith("/")]
            else:
                try:
                    with tarfile.open(self.path) as t:
                        found = [m.name for m in t.getmembers() if m.isfile()]
                except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
                    raise self._archive_error(err) from err
            self._names = sorted(n for n in found if not _is_junk(n))
        return self._names

    def read(self, name: str) -> bytes:
        """Bytes of one member (zip or directory; tar archives are read with ``read_all``)."""
        try:
            if self.kind == "dir":
                return (self.path / name).read_bytes()
            if self.kind == "zip":
                return self._open_zip().read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
            raise ImageDataError(
                f"cannot read {name} from {self.path} ({err}): the file is corrupt or truncated"
            ) from err
        return self.read_all([name])[name]

    def read_all(self, names: Iterable[str]) -> dict[str, bytes]:
        """Bytes of several members, in one pass over a tar archive."""
        wanted = set(names)
        if self.kind != "tar":
            return {n: self.read(n) for n in wanted}
        out: dict[str, bytes] = {}
        try:
            with tarfile.open(self.path) as t:
                for member in t:
                    if member.name in wanted and member.isfile():
                        f = t.extractfile(member)
                        assert f is not None
                        out[member.name] = f.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise self._archive_error(err) from err
        missing = wanted - set(out)
        if missing:
            raise ImageDataError(
                f"{self.path} lacks {len(missing)} listed member(s), e.g. {sorted(missing)[0]}"
            )
        return out

    def fingerprint(self, names: Sequence[str] | None = None) -> str:
        """A string that changes when the (listed) content changes."""
        h = hashlib.sha256()
        if self.kind == "dir":
            for n in sorted(self.names() if names is None else names):
                try:
                    st = (self.path / n).stat()
                except OSError as err:
                    raise ImageDataError(f"cannot read {self.path / n} ({err})") from err
                h.update(f"{n}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            return f"dir:{h.hexdigest()}"
        if self.kind == "zip":
            try:
                infos = self._open_zip().infolist()
            except (zipfile.BadZipFile, OSError) as err:
                raise self._archive_error(err) from err
            for i in sorted(infos, key=lambda i: i.filename):
                h.update(f"{i.filename}|{i.CRC}|{i.file_size}\n".encode())
            return f"zip:{self.path.stat().st_size}:{h.hexdigest()}"
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return f"tar:{self.path.stat().st_size}:{h.hexdigest()}"

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


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


# -- listing images -------------------------------------------------------------------------
def scan_class_folders(
    source: ImageSource, subdir: str | None = None, extensions: set[str] | None = None
) -> list[tuple[str, str]]:
    """``(member, class)`` rows of every image under ``subdir`` (default: the whole
    source), the class being the image's folder relative to ``subdir``.  A single top
    folder holding everything (as most archives have) is not part of the class name."""
    exts = image_extensions() if extensions is None else extensions
    prefix = "" if not subdir else subdir.strip("/") + "/"
    images = [
        n
        for n in source.names()
        if n.startswith(prefix) and PurePosixPath(n).suffix.lower() in exts
    ]
    if not images:
        where = f"{source.path}" + (f" under {prefix}" if prefix else "")
        raise ImageDataError(
            f"no images found in {where}; expected <class>/<image> files in a format Pillow "
            "reads (png, jpg, pgm, ...)"
        )
    parents = [str(PurePosixPath(n[len(prefix) :]).parent) for n in images]
    loose = [n for n, p in zip(images, parents) if p == "."]
    if loose:
        raise ImageDataError(
            f"{source.path}: image {loose[0]} is not inside a class folder; expected "
            f"{prefix}<class>/<image>"
        )
    # strip folders shared by every image (e.g. the archive's single top folder)
    parts = [p.split("/") for p in parents]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [(n, "/".join(p[common:])) for n, p in zip(images, parts)]


def read_split_file(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(path, class)`` rows of a CSV or JSON split file.

    CSV: two columns, path then class, with or without a header (Ravi and Larochelle's
    ``filename,label``).  JSON: a list of ``[path, class]`` pairs, or an object with
    ``image_names`` and ``image_labels`` (indices into ``label_names`` when present).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImageDataError(
            f"split file {path} not found; expected a CSV of (path, class) rows (header "
            "filename,label) or a JSON list of [path, class] pairs"
        )
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ImageDataError(f"split file {path} is not valid JSON ({err})") from err
        if isinstance(data, Mapping) and "image_names" in data and "image_labels" in data:
            names, labels = list(data["image_names"]), list(data["image_labels"])
            if len(names) != len(labels):
                raise ImageDataError(
                    f"split file {path}: {len(names)} image_names but {len(labels)} image_labels"
                )
            label_names = data.get("label_names")
            if label_names is not None:
                try:
                    labels = [label_names[int(i)] for i in labels]
                except (IndexError, ValueError, TypeError) as err:
                    raise ImageDataError(
                        f"split file {path}: an image_labels entry is not an index into "
                        f"label_names ({err})"
                    ) from err
            return [(str(n), str(c)) for n, c in zip(names, labels)]
        if isinstance(data, list) and all(
            isinstance(r, (list, tuple)) and len(r) == 2 for r in data
        ):
            return [(str(p), str(c)) for p, c in data]
        raise ImageDataError(
            f"split file {path}: expected a list of [path, class] pairs or an object with "
            "image_names and image_labels"
        )
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] in (
        ["filename", "label"],
        ["path", "class"],
        ["path", "label"],
        ["image", "label"],
        ["filename", "class"],
    ):
        rows = rows[1:]
    bad = next((i for i, r in enumerate(rows) if len(r) < 2 or not r[0].strip()), None)
    if bad is not None:
        raise ImageDataError(
            f"split file {path}: row {bad + 1} ({rows[bad]!r}) is not a (path, class) pair"
        )
    if not rows:
        raise ImageDataError(f"split file {path} lists no images")
    return [(r[0].strip(), r[1].strip()) for r in rows]


def resolve_rows(source: ImageSource, rows: Rows, image_dir: str = "") -> list[tuple[str, str]]:
    """Map split-file paths to members of ``source``: ``image_dir/path``, else the last two
    path components (``class/file``), else the file name (each must be unique)."""
    members = set(source.names())
    prefix = image_dir.strip("/") + "/" if image_dir.strip("/") else ""
    by_tail: dict[str, list[str]] = {}
    by_name: dict[str, list[str]] = {}
    for m in members:
        if m.startswith(prefix):
            p = PurePosixPath(m)
            by_name.setdefault(p.name, []).append(m)
            by_tail.setdefault("/".join(p.parts[-2:]), []).append(m)
    out = []
    for path, cls in rows:
        posix = path.replace("\\", "/")
        candidate = prefix + posix.lstrip("/")
        if candidate in members:
            out.append((candidate, cls))
            continue
        p = PurePosixPath(posix)
        for table, key in ((by_tail, "/".join(p.parts[-2:])), (by_name, p.name)):
            hits = table.get(key, [])
            if len(hits) == 1:
                out.append((hits[0], cls))
                break
        else:
            raise ImageDataError(
                f"{source.path}: listed image {path!r} not found (looked for {candidate!r} and "
                f"by its file name under {prefix or 'the root'})"
            )
    return out


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
