"""Checkpoints that survive kills: atomic writes, a previous copy, verified loads.

``save_checkpoint`` writes to a temporary file in the same directory, flushes and fsyncs
it, then ``os.replace``s it over the target, so a reader sees either the old or the new
file, never half of one.  Before replacing ``latest.pt`` the old one is kept as
``latest.prev.pt``; ``load_latest`` falls back to it (with a warning) when ``latest.pt`` is
corrupt.

A dict saved by ``atomic_save`` carries a ``"checksum"`` entry: a SHA-256 over every
tensor's dtype, shape and bytes and every other value's ``repr``.  ``torch.load`` does not
verify the CRCs of the zip records it reads, so a file with garbled tensor bytes would
otherwise load silently with wrong weights; ``load_checkpoint`` / ``load_latest`` recompute
the digest and treat a mismatch as corruption.  The files stay plain ``torch.save`` dicts.

Loading never runs code from the file: every checkpoint is read with
``torch.load(..., weights_only=True)``, whose unpickler builds only tensors, numbers,
strings, bytes and containers (dict, list, tuple, set, ``OrderedDict``) and refuses any
other import (``os.system``, a class of the writer's, ``pathlib.Path``).  A refused file
raises ``UnsafeCheckpointError`` (never a fallback to another copy or to an unsafe load).
To keep its own files loadable, ``atomic_save`` first turns ``pathlib`` paths into strings
and NumPy values into Python numbers or tensors (``to_plain``) and refuses, before writing,
any other object a safe load could not read back.  The checksum is verified after loading.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

LATEST = "latest.pt"
PREVIOUS = "latest.prev.pt"
BEST = "best.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """No usable checkpoint could be read."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks to import a Python object a safe (``weights_only``) load refuses."""


#: leaf values a ``weights_only=True`` load reads back (containers are handled apart)
_PLAIN_LEAVES = (bool, int, float, complex, str, bytes, bytearray, type(None))
_PLAIN_TORCH = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with only the types a ``weights_only=True`` load reads back.

    Tensors, numbers, strings, bytes, ``None``, torch dtypes/devices/sizes and dicts,
    ``OrderedDict``s, lists, tuples and sets of them pass unchanged; ``os.PathLike`` values
    become strings, NumPy scalars Python numbers and NumPy arrays tensors; other dict
    subclasses become dicts.  Anything else raises ``TypeError`` naming the entry
    (``where``), before anything is written.
    """
    if isinstance(obj, _PLAIN_TORCH) or type(obj) in _PLAIN_LEAVES:
        return obj
    if isinstance(obj, dict):
        items = (
            (to_plain(k, f"{where} key {k!r}"), to_plain(v, f"{where}[{k!r}]"))
            for k, v in obj.items()
        )
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if type(obj) in (list, tuple, set):
        return type(obj)(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if type(obj).__module__ == "numpy":
        import numpy as np

        if isinstance(obj, np.generic) and obj.dtype.kind in "biufc":
            return obj.item()
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
            return torch.from_numpy(obj.copy())
    if isinstance(obj, (bool, int, float, str)):  # an enum or other subclass of a plain type
        for base in (bool, int, float, str):
            if isinstance(obj, base):
                return base(obj)
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which a safe "
        "checkpoint load (torch.load with weights_only=True) cannot read back; store "
        "tensors, numbers, strings, None, or dicts/lists/tuples/sets of them"
    )


def checksum(obj: Any) -> str:
    """SHA-256 of a checkpoint's content (tensor bytes, other values by ``repr``)."""
    h = hashlib.sha256()
    _digest(obj, h)
    return h.hexdigest()


def _digest(obj: Any, h: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.layout == torch.strided and not t.is_quantized:
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # pragma: no cover - sparse/quantized tensors: content by repr
            h.update(repr(t).encode())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k, v in obj.items():
            h.update(repr(k).encode() + b":")
            _digest(v, h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for v in obj:
            _digest(v, h)
        h.update(b"]")
    else:
        text = repr(obj)
        if " at 0x" in text:  # a default repr holds a memory address: not reproducible
            text = type(obj).__qualname__
        h.update(text.encode() + b";")


def _with_checksum(obj: Any) -> Any:
    if isinstance(obj, dict):
        body = {k: v for k, v in obj.items() if k != "checksum"}
        return {**body, "checksum": checksum(body)}
    return obj


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically (temporary file, fsync, rename)."""
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, rename); a dict gets a
    ``"checksum"`` entry that ``load_checkpoint`` verifies.  The content is made plain first
    (``to_plain``): an object a safe load could not read back raises ``TypeError`` and
    nothing is written."""
    obj = _with_checksum(to_plain(obj))
    _atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write(path: str | os.PathLike, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # say which file
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``) a killed writer left in ``run_dir``.

    Only call this when no other process writes to the run directory.
    """
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], run_dir: str | os.PathLike) -> Path:
    """Write ``state`` as the run's latest checkpoint, keeping the previous one."""
    run_dir = Path(run_dir)
    latest = run_dir / LATEST
    state = {"format_version": FORMAT_VERSION, **state}
    moved = latest.exists()
    if moved:
        os.replace(latest, run_dir / PREVIOUS)
        # from here until the next rename only latest.prev.pt exists: load_latest handles it
    try:
        atomic_save(state, latest)
    except OSError:  # disk full, directory made read-only: the last good checkpoint stays
        if moved and not latest.exists():
            try:
                os.replace(run_dir / PREVIOUS, latest)
            except OSError:
                pass  # latest.prev.pt is still read by load_latest
        raise
    return latest


CONVERT_HINT = "see 'Converting an old checkpoint' in docs/reliability.md"


def safe_load(path: str | os.PathLike, what: str = "checkpoint", hint: str = CONVERT_HINT) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with one-line errors.

    A file whose pickle asks to import anything but tensors and plain containers (a
    malicious ``__reduce__`` calling ``os.system``, or any class of the writer's) raises
    ``UnsafeCheckpointError`` naming the import, without running it; any other failure
    (truncated, garbled, not a torch file) raises ``CheckpointError``.  ``what`` names the
    file in the messages and ``hint`` says what to do about a refused one.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the pickle protocol
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        refused = _refused_import(err)
        if refused is not None:
            raise UnsafeCheckpointError(
                f"{what} {path} refused: it asks to import {refused}, which a safe load does "
                "not allow (metaloop reads files with torch.load(weights_only=True) and never "
                f"runs code from them); if the file is yours and you trust it, {hint}"
            ) from err
        raise CheckpointError(
            f"{what} {path} is unreadable ({type(err).__name__}: {_one_line(err)})"
        ) from err


def _read(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (``safe_load``) and verify its checksum."""
    state = safe_load(path)
    if not isinstance(state, dict) or "iteration" not in state:
        raise CheckpointError(f"checkpoint {path} does not hold a metaloop training state")
    expected = state.pop("checksum", None)
    if expected is not None and checksum(state) != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupt (its content does not match its checksum)"
        )
    return state


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _refused_import(err: Exception) -> str | None:
    """The ``module.name`` a ``weights_only`` load refused to import, if that was the error."""
    if isinstance(err, pickle.UnpicklingError):
        match = _GLOBAL.search(str(err))
        if match:
            return match.group(1)
    return None


def _one_line(err: Exception) -> str:
    """The informative part of an exception message, on one line (torch's ``weights_only``
    errors span a dozen lines of advice around the actual reason)."""
    text = _ANSI.sub("", str(err))
    if "Weights only load failed" in text:
        reasons = [
            line.strip()
            for line in text.splitlines()[1:]
            if line.strip()
            and not line.strip().startswith(("(1)", "(2)", "Check the documentation", "Please"))
        ]
        if reasons:
            text = "safe load failed: " + " ".join(reasons)
    return " ".join(text.split())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    return _read(path)


def load_latest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run, or ``None`` when the run has none.

    A corrupt ``latest.pt`` falls back to ``latest.prev.pt`` with a warning; if both exist
    and neither reads, ``CheckpointError`` says so (nothing is deleted).
    """
    run_dir = Path(run_dir)
    candidates = [run_dir / LATEST, run_dir / PREVIOUS]
    present = [p for p in candidates if p.exists()]
    if not present:
        return None
    errors = []
    for p in present:
        try:
            state = _read(p)
        except UnsafeCheckpointError:
            raise  # a planted file is not a kill's leftover: never resume past it
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if errors:
            warnings.warn(
                f"{errors[0]}; resuming from the previous checkpoint {p.name} "
                f"(iteration {state['iteration']})",
                RuntimeWarning,
                stacklevel=2,
            )
        return state
    raise CheckpointError("no readable checkpoint in " + str(run_dir) + ": " + "; ".join(errors))


def load_best(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run's ``best.pt`` when it has one, else its newest readable checkpoint
    (``load_latest``), else ``None``."""
    run_dir = Path(run_dir)
    return load_checkpoint(run_dir / BEST) if (run_dir / BEST).exists() else load_latest(run_dir)


def warm_start(model: torch.nn.Module, source: str | os.PathLike) -> list[str]:
    """Copy into ``model`` the weights it shares with another run's model; return their names.

    ``source`` is a run directory (its ``best.pt``, else its latest checkpoint) or a
    checkpoint file.  A learner's state names its model's tensors under one attribute
    (``model.`` for MAML and its relatives, ``encoder.`` for the metric learners), so a
    tensor ``k`` of ``model`` is taken from ``<prefix>.k``, with the prefix that matches the
    most names.  This is how a body trained by one algorithm starts another (a ProtoNet
    encoder under Proto-MAML, say); tensors without a counterpart keep their values.

    Raises ``CheckpointError`` when nothing matches or a matched tensor has another shape.
    """
    path = Path(source)
    if path.is_dir():
        state = load_best(path)
        if state is None:
            raise CheckpointError(f"init_from: run directory {path} holds no checkpoint")
    else:
        state = load_checkpoint(path)
    saved = state.get("learner", {})
    own = model.state_dict()
    prefixes: dict[str, list[str]] = {}
    for key in saved:
        head, _, rest = key.partition(".")
        if rest in own:
            prefixes.setdefault(head, []).append(rest)
    if not prefixes:
        raise CheckpointError(
            f"init_from: no tensor of {path} matches this model's "
            f"({', '.join(list(own)[:4])}, ...); the checkpoint holds "
            f"{', '.join(list(saved)[:4])}, ..."
        )
    prefix = max(prefixes, key=lambda p: len(prefixes[p]))
    names = prefixes[prefix]
    for k in names:
        if saved[f"{prefix}.{k}"].shape != own[k].shape:
            raise CheckpointError(
                f"init_from: {k} has shape {tuple(saved[f'{prefix}.{k}'].shape)} in {path} but "
                f"{tuple(own[k].shape)} in this model (same architecture and sizes needed)"
            )
    with torch.no_grad():
        for k in names:
            own[k].copy_(saved[f"{prefix}.{k}"])
    return names
