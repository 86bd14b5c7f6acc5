"""Reading a labelled image collection (``metaloop.data.folder``): ``ImageSource`` (a
directory, a zip or a tar archive), the ``(member, class)`` rows of its class folders
(``scan_class_folders``) or of a CSV/JSON split file (``read_split_file``, resolved to
members by ``resolve_rows``), and ``ImageDataError``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from PIL import Image

_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "/._")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

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
