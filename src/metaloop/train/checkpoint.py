"""Checkpoints that survive kills: atomic writes, a previous copy, verified loads.

``save_checkpoint`` writes to a temporary file in the same directory, flushes and fsyncs
it, then ``os.replace``s it over the target, so a reader sees either the old or the new
file, never half of one.  Before replacing ``latest.pt`` the old one is kept as
``latest.prev.pt``; ``load_latest`` falls back to it (with a warning) when ``latest.pt`` is
corrupt.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

LATEST = "latest.pt"
PREVIOUS = "latest.prev.pt"
BEST = "best.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """No usable checkpoint could be read."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
        # from here until the next rename only latest.prev.pt exists: load_latest handles it
    atomic_save(state, latest)
    return latest


def _read(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is "corrupt"
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or "iteration" not in state:
        raise CheckpointError(f"checkpoint {path} does not hold a metaloop training state")
    return state


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
