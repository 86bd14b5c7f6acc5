"""The run-directory lock: one training process per run directory.

``Trainer(run_dir=...)`` users need it as much as the CLI does, so it lives here.

The lock is an advisory ``fcntl.flock`` on ``RUN/train.lock``, taken without waiting:
the kernel grants it to exactly one open file at a time, so two processes starting on the
same directory at the same instant cannot both get it (the previous read-then-write of a
PID could, 37 times in 100), and it is dropped when its holder exits, however it dies, so
SIGKILL never blocks a resume.  The holder writes its PID into the file for the messages.
A file that names a live process other than the caller but is not locked (written by an
older metaloop, which only wrote the PID) is still respected.

A process that holds the lock may take it again (re-entrant, counted); the file is removed
by the last release.  Platforms without ``fcntl`` train unlocked, with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "train.lock"

#: locks this process holds: real path -> [file descriptor, times taken]
_held: dict[str, list[int]] = {}


class RunLockedError(RuntimeError):
    """Another live process is training this run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode(errors="replace").strip() or 0)
    except (OSError, ValueError):
        return 0


def _locked_message(run_dir: str | Path, lock: Path, owner: int) -> str:
    who = f"process {owner}" if owner else "another process"
    return (
        f"{run_dir} is being trained by {who} right now; wait for it or stop it (a lock left "
        f"by a killed process is ignored; delete {lock} if {who} is not a metaloop run)"
    )


def acquire_run_lock(run_dir: str | Path) -> Callable[[], None]:
    """Refuse to train a run directory that a live process is already training.

    Takes ``flock(LOCK_EX | LOCK_NB)`` on ``run_dir/train.lock`` (created if missing; the
    directory must exist) and writes this process's PID into it.  Raises
    ``RunLockedError`` when another process holds the lock.  Returns the function that
    releases it.
    """
    lock = Path(run_dir) / LOCK_NAME
    key = os.path.realpath(lock)
    if key in _held:
        _held[key][1] += 1
        return _releaser(key, lock)
    if fcntl is None:  # pragma: no cover - not POSIX
        warnings.warn(
            "this platform has no fcntl: the run directory is not locked against a second trainer",
            RuntimeWarning,
            stacklevel=2,
        )
        return lambda: None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunLockedError(
                f"cannot create the run lock {lock}: {err.strerror or err}"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            raise RunLockedError(_locked_message(run_dir, lock, owner)) from None
        except OSError as err:
            os.close(fd)
            raise RunLockedError(f"cannot lock {lock}: {err.strerror or err}") from err
        # the file we locked may have been released and removed (or replaced) between our
        # open and our flock: then the lock is on a dead inode; start again
        try:
            here, ours = os.stat(lock), os.fstat(fd)
            same = (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    owner = _read_pid(fd)
    if owner and owner != os.getpid() and _alive(owner):  # a PID-only lock of an older version
        os.close(fd)
        raise RunLockedError(_locked_message(run_dir, lock, owner))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except OSError as err:
        os.close(fd)
        raise RunLockedError(f"cannot write the run lock {lock}: {err.strerror or err}") from err
    _held[key] = [fd, 1]
    return _releaser(key, lock)


def _releaser(key: str, lock: Path) -> Callable[[], None]:
    released = False

    def release() -> None:
        nonlocal released
        entry = _held.get(key)
        if released or entry is None:
            return
        released = True
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[key]
        fd = entry[0]
        try:  # remove the file while still holding the lock, then drop the lock
            here, ours = os.stat(lock), os.fstat(fd)
            if (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino):
                os.unlink(lock)
        except OSError:
            pass
        finally:
            os.close(fd)

    return release
