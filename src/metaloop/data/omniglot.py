"""Omniglot (Lake, Salakhutdinov and Tenenbaum, Science 2015) from the official archives.

Reads ``images_background.zip``, ``images_evaluation.zip``,
``images_background_small1.zip`` and ``images_background_small2.zip`` (or the folders
they extract to) from one directory, decodes every 105x105 one-bit PNG once and caches
the result.  Preprocessing (``preprocess_png``, shared with Lake's 20-run benchmark in
``metaloop.data.lake``):

1. check the image is 105x105;
2. grey levels 0/255, resize to ``image_size`` with Pillow's Lanczos filter, which
   antialiases when downsampling (``image_size=None`` or 105 keeps the original);
3. invert, so strokes are bright (255 -> 1.0) on a dark background (0), the convention
   of the meta-learning literature.

Images are stored as ``uint8 [N, 1, S, S]``; ``EpisodicFamily`` scales them to ``[0, 1]``.

Cache: one compressed ``.npz`` per archive and size, in ``cache_dir``, else
``$METALOOP_CACHE``, else ``~/.cache/metaloop``, under ``omniglot/``.  It records a format
version, the image size, the preprocessing and a fingerprint of the source (size and
SHA-256 of the zip, or a listing of the folder); a cache that disagrees is rebuilt, with
a logged warning, never used.  Written atomically (temporary file + rename), so
concurrent processes never read half a file.

Errors (``OmniglotError``, a ``ValueError``) name the file and what was expected: missing
archives (with where to put which file), corrupt or truncated zips, a wrong layout, an
image of the wrong size, incomplete official archives (image/alphabet/character counts;
``strict=False`` skips this count check, e.g. for custom subsets).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metaloop.data.dataset import ClassDataset
from metaloop.validate import is_int

log = logging.getLogger(__name__)

#: subset name -> archive / top-level folder name
ARCHIVES: dict[str, str] = {
    "background": "images_background",
    "evaluation": "images_evaluation",
    "small1": "images_background_small1",
    "small2": "images_background_small2",
}
#: (images, alphabets, characters) of the official archives
EXPECTED_COUNTS: dict[str, tuple[int, int, int]] = {
    "background": (19_280, 30, 964),
    "evaluation": (13_180, 20, 659),
    "small1": (2_720, 5, 136),
    "small2": (3_120, 5, 156),
}
#: where ``download=True`` fetches ``<archive>.zip`` from
OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
#: Checksums of the files served at ``OMNIGLOT_URL`` (downloads only; local files are not
#: checked, since repacked copies with identical images are common).  The two small
#: archives: SHA-256 of the official files (byte-identical copies were checked).  The two
#: large ones: we know no SHA-256 of the served files, so we check the MD5 that
#: torchvision's Omniglot loader has verified for years against the same URL; every
#: download is also tested as a zip (CRC of every member) before it is kept.
CHECKSUMS: dict[str, tuple[str, str]] = {
    "images_background.zip": ("md5", "68d2efa1b9178cc56df9314c21c6e718"),
    "images_evaluation.zip": ("md5", "6b91aef0f799c5bb55b94e3f2daec811"),
    "images_background_small1.zip": (
        "sha256",
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    ),
    "images_background_small2.zip": (
        "sha256",
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    ),
}
ORIGINAL_SIZE = 105
#: bump when decoding or the cache format changes: older caches are then rebuilt
CACHE_VERSION = 1
RESAMPLE = "lanczos"

_MEMBER = re.compile(
    r"^(?P<top>[^/]+)/(?P<alphabet>[^/]+)/(?P<character>character\d+)/"
    r"(?P<index>\d+)_(?P<drawer>\d+)\.png$"
)
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db")


class OmniglotError(ValueError):
    """Omniglot files are missing, corrupt or not as expected."""


# -- paths ----------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$METALOOP_CACHE`` if set, else ``~/.cache/metaloop``."""
    env = os.environ.get("METALOOP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metaloop"


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The directory holding the Omniglot archives.

    ``root`` if given (or ``root/omniglot`` if that exists and ``root`` holds no archive);
    else ``$METALOOP_DATA/omniglot`` (or ``$METALOOP_DATA``).
    """
    if root is None:
        env = os.environ.get("METALOOP_DATA")
        if not env:
            raise OmniglotError(
                "no Omniglot directory given: pass root=<directory holding "
                + ", ".join(f"{a}.zip" for a in ARCHIVES.values())
                + "> or set METALOOP_DATA to a directory with an omniglot/ folder holding them"
            )
        root = env
    path = Path(root).expanduser()
    has_archive = any(
        (path / f"{a}.zip").exists() or (path / a).is_dir() for a in ARCHIVES.values()
    )
    if not has_archive and (path / "omniglot").is_dir():
        return path / "omniglot"
    return path


def _missing_message(root: Path, names: Sequence[str], tried_download: bool = False) -> str:
    files = ", ".join(f"{n}.zip" for n in names)
    advice = "" if tried_download else ", or pass download=True to fetch them"
    return (
        f"Omniglot archive(s) not found in {root}: put {files} (from {OMNIGLOT_URL}/, or "
        f"the folders they extract to, e.g. {root / names[0]}/<alphabet>/characterNN/*.png) "
        f"into {root}{advice}"
    )


def locate_archive(
    root: str | os.PathLike[str] | None, subset: str, download: bool = False, progress: bool = True
) -> Path:
    """Path of the archive (zip, else extracted folder) of ``subset`` in ``root``;
    downloaded there when missing and ``download`` is true."""
    if subset not in ARCHIVES:
        raise OmniglotError(
            f"unknown Omniglot subset {subset!r}; choose one of {', '.join(ARCHIVES)}"
        )
    path = resolve_root(root)
    name = ARCHIVES[subset]
    if (path / f"{name}.zip").is_file():
        return path / f"{name}.zip"
    if (path / name).is_dir():
        return path / name
    if download:
        return download_archive(subset, path, progress=progress)
    raise OmniglotError(_missing_message(path, [name]))


# -- download -------------------------------------------------------------------------------
def download_archive(
    subset: str,
    root: str | os.PathLike[str],
    *,
    url: str = OMNIGLOT_URL,
    checksums: dict[str, tuple[str, str]] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``<archive>.zip`` of ``subset`` from ``url`` into ``root`` and verify it.

    Verifies the checksum in ``checksums`` (default ``CHECKSUMS``) where one is known and
    the integrity of every zip member; keeps the file only if both pass.
    """
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    name = f"{ARCHIVES[subset]}.zip"
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    dest, part = root / name, root / f"{name}.part"
    source = f"{url.rstrip('/')}/{name}"
    table = CHECKSUMS if checksums is None else checksums
    algorithm, expected = table.get(name, ("sha256", ""))
    digest = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress)
            with bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        part.unlink(missing_ok=True)
        raise OmniglotError(
            f"could not download {source} ({err}). "
            + _missing_message(root, [ARCHIVES[subset]], tried_download=True)
        ) from err
    if expected and digest.hexdigest() != expected:
        part.unlink(missing_ok=True)
        raise OmniglotError(
            f"downloaded {name} has {algorithm} {digest.hexdigest()}, expected {expected}: "
            f"the download is corrupt or the file at {source} changed"
        )
    try:
        with zipfile.ZipFile(part) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as err:
        bad = str(err)
    if bad is not None:
        part.unlink(missing_ok=True)
        raise OmniglotError(
            f"downloaded {name} from {source} is not a valid zip (bad member: {bad})"
        )
    os.replace(part, dest)
    return dest


# -- reading archives -----------------------------------------------------------------------
class _Source:
    """Uniform read access to a zip archive or an extracted folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_zip = path.is_file()
        self._zip: zipfile.ZipFile | None = None

    def names(self) -> list[str]:
        if self.is_zip:
            return [n for n in self._open().namelist() if not n.endswith("/")]
        base = self.path.parent
        return sorted(p.relative_to(base).as_posix() for p in self.path.rglob("*") if p.is_file())

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                raise OmniglotError(
                    f"{self.path} is not a readable zip archive ({err}); expected the official "
                    f"Omniglot archive {self.path.name} from {OMNIGLOT_URL}/ -- the file is "
                    "corrupt or truncated: delete it and download it again"
                ) from err
        return self._zip

    def read(self, name: str) -> bytes:
        try:
            if self.is_zip:
                return self._open().read(name)
            return (self.path.parent / name).read_bytes()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
            raise OmniglotError(
                f"cannot read {name} from {self.path} ({err}): the archive is corrupt or "
                "truncated; delete it and download it again"
            ) from err

    def fingerprint(self) -> str:
        if self.is_zip:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            return f"zip:{self.path.name}:{self.path.stat().st_size}:{h.hexdigest()}"
        h = hashlib.sha256()
        for p in sorted(self.path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(
                    f"{p.relative_to(self.path).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode()
                )
        return f"dir:{self.path.name}:{h.hexdigest()}"

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def preprocess_png(data: bytes, image_size: int | None = 28, source: str = "image") -> np.ndarray:
    """Decode one Omniglot PNG to ``uint8 [S, S]``: check 105x105, resize (Lanczos,
    antialiased) to ``image_size``, invert so strokes are 255.  ``source`` names the file in
    error messages."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.size != (ORIGINAL_SIZE, ORIGINAL_SIZE):
                raise OmniglotError(
                    f"{source}: image of size {img.size[0]}x{img.size[1]}, expected "
                    f"{ORIGINAL_SIZE}x{ORIGINAL_SIZE} (the official Omniglot PNGs)"
                )
            grey = img.convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, OmniglotError):
            raise
        raise OmniglotError(f"{source}: not a decodable PNG image ({err})") from err
    if image_size is not None and image_size != ORIGINAL_SIZE:
        grey = grey.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(grey, dtype=np.uint8)


def _decode_chunk(args: tuple[str, list[str], int | None]) -> np.ndarray:
    path, names, image_size = args
    source = _Source(Path(path))
    try:
        return np.stack([preprocess_png(source.read(n), image_size, f"{path}::{n}") for n in names])
    finally:
        source.close()


@dataclass(frozen=True)
class _Layout:
    names: list[str]  # member names of the images, sorted by class then drawer
    labels: np.ndarray  # class id per image
    classes: list[dict[str, Any]]  # metadata per class


def _parse_layout(source: _Source, subset: str, strict: bool) -> _Layout:
    top = ARCHIVES[subset]
    entries: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
    for name in source.names():
        if any(j in name for j in _JUNK):
            continue
        m = _MEMBER.match(name)
        if m is None or m["top"] != top:
            raise OmniglotError(
                f"{source.path}: unexpected entry {name!r}; expected only images named "
                f"{top}/<alphabet>/characterNN/NNNN_NN.png (the official Omniglot layout)"
            )
        entries.setdefault((m["alphabet"], m["character"]), []).append(
            (int(m["drawer"]), name, int(m["index"]))
        )
    if not entries:
        raise OmniglotError(
            f"{source.path}: no images found; expected {top}/<alphabet>/characterNN/NNNN_NN.png"
        )
    names: list[str] = []
    labels: list[int] = []
    classes: list[dict[str, Any]] = []
    for c, (alphabet, character) in enumerate(sorted(entries)):
        images = sorted(entries[(alphabet, character)])
        names.extend(n for _, n, _ in images)
        labels.extend([c] * len(images))
        classes.append(
            {
                "alphabet": alphabet,
                "character": character,
                "character_id": f"{alphabet}/{character}",
                "index": images[0][2],
                "subset": subset,
            }
        )
    if strict:
        _check_counts(source.path, subset, len(names), classes)
    return _Layout(names, np.asarray(labels, dtype=np.int64), classes)


def _check_counts(path: Path, subset: str, images: int, classes: list[dict[str, Any]]) -> None:
    found = (images, len({c["alphabet"] for c in classes}), len(classes))
    expected = EXPECTED_COUNTS[subset]
    if found != expected:
        raise OmniglotError(
            f"{path}: holds {found[0]} images of {found[2]} characters in {found[1]} "
            f"alphabets; the official {ARCHIVES[subset]} holds {expected[0]} images of "
            f"{expected[2]} characters in {expected[1]} alphabets. The archive is incomplete or "
            "not the official one: download it again (or pass strict=False to load it as it is)"
        )


#: below this many images a worker pool costs more than it saves
_PARALLEL_MIN = 2000


def _decode_all(path: Path, names: list[str], image_size: int | None, workers: int) -> np.ndarray:
    if workers <= 1 or len(names) < _PARALLEL_MIN:
        return _decode_chunk((str(path), names, image_size))
    pieces = workers * 4
    step = -(-len(names) // pieces)
    chunks = [(str(path), names[i : i + step], image_size) for i in range(0, len(names), step)]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        return np.concatenate(pool.map(_decode_chunk, chunks))


# -- cache ----------------------------------------------------------------------------------
def _cache_path(cache_dir: Path, subset: str, image_size: int | None) -> Path:
    size = ORIGINAL_SIZE if image_size is None else image_size
    return cache_dir / "omniglot" / f"{ARCHIVES[subset]}-{size}px.npz"


def _cache_meta(subset: str, image_size: int | None, fingerprint: str) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "subset": subset,
        "image_size": ORIGINAL_SIZE if image_size is None else image_size,
        "resample": RESAMPLE,
        "inverted": True,
        "source": fingerprint,
    }


def _read_cache(path: Path, want: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            images, labels = f["images"], f["labels"]
    except Exception as err:
        log.warning("Omniglot cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    got = {k: meta.get(k) for k in want}
    if got != want:
        diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        log.warning(
            "Omniglot cache %s does not match (%s: found, wanted); rebuilding it", path, diff
        )
        return None
    if images.shape[0] != labels.shape[0] or images.dtype != np.uint8:
        log.warning("Omniglot cache %s is inconsistent; rebuilding it", path)
        return None
    return images, labels, meta["classes"]


def _write_cache(path: Path, meta: dict[str, Any], images: np.ndarray, labels: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images, labels=labels, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not write the Omniglot cache %s (%s); continuing without it", path, err)


# -- public loaders -------------------------------------------------------------------------
def load_omniglot_subset(
    root: str | os.PathLike[str] | None,
    subset: str,
    image_size: int | None = 28,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    download: bool = False,
    workers: int = 2,
    strict: bool = True,
    progress: bool = True,
) -> ClassDataset:
    """One Omniglot archive as a ``ClassDataset`` (``uint8 [N, 1, S, S]``, strokes = 255).

    Classes are the characters, sorted by alphabet then character folder; metadata per
    class: ``alphabet``, ``character`` (``characterNN``), ``character_id``
    (``"<alphabet>/<character>"``, unique over all archives), ``index`` (the global
    character number in the file names) and ``subset``.

    Args:
        root: directory with the zips or extracted folders (see ``resolve_root``).
        subset: ``"background"``, ``"evaluation"``, ``"small1"`` or ``"small2"``.
        image_size: side length after resizing; ``None`` keeps 105.
        cache_dir: where to cache decoded arrays (default ``default_cache_dir()``).
        use_cache: read and write the cache (``False``: always decode).
        download: fetch a missing archive from ``OMNIGLOT_URL``.
        workers: decoding processes (1: decode in this process).
        strict: require the official image/alphabet/character counts.
        progress: show a progress bar while downloading.
    """
    if image_size is not None and (not is_int(image_size) or image_size < 1):
        raise OmniglotError(f"image_size must be a positive integer or None, got {image_size!r}")
    path = locate_archive(root, subset, download=download, progress=progress)
    source = _Source(path)
    try:
        fingerprint = source.fingerprint()
        meta = _cache_meta(subset, image_size, fingerprint)
        cache = _cache_path(
            Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), subset, image_size
        )
        cached = _read_cache(cache, meta) if use_cache else None
        if cached is not None:
            images, labels, classes = cached
            if strict:  # the cache may have been built with strict=False
                _check_counts(path, subset, len(labels), classes)
        else:
            layout = _parse_layout(source, subset, strict)
            start = time.perf_counter()
            images = _decode_all(path, layout.names, image_size, workers)[:, None]
            log.info(
                "decoded %d Omniglot images from %s in %.1f s",
                len(layout.names),
                path,
                time.perf_counter() - start,
            )
            labels, classes = layout.labels, layout.classes
            if use_cache:
                _write_cache(cache, {**meta, "classes": classes}, images, labels)
    finally:
        source.close()
    return ClassDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        classes,
        name=f"omniglot-{subset}",
    )


def load_omniglot(
    root: str | os.PathLike[str] | None = None,
    subsets: Sequence[str] = ("background", "evaluation"),
    image_size: int | None = 28,
    **kwargs: Any,
) -> ClassDataset:
    """Several Omniglot archives concatenated into one ``ClassDataset`` (classes of the
    first subset first).  ``kwargs`` go to ``load_omniglot_subset``."""
    if isinstance(subsets, str):
        subsets = (subsets,)
    unknown = [s for s in subsets if s not in ARCHIVES]
    if unknown:
        raise OmniglotError(
            f"unknown Omniglot subset(s) {unknown}; choose from {', '.join(ARCHIVES)}"
        )
    if not kwargs.get("download", False):
        path = resolve_root(root)
        missing = [
            ARCHIVES[s]
            for s in subsets
            if not ((path / f"{ARCHIVES[s]}.zip").is_file() or (path / ARCHIVES[s]).is_dir())
        ]
        if missing:
            raise OmniglotError(_missing_message(path, missing))
    datasets = [load_omniglot_subset(root, s, image_size, **kwargs) for s in subsets]
    return ClassDataset.concat(datasets, name="omniglot-" + "+".join(subsets))
