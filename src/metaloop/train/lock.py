"""The run-directory lock: one training process per run directory.

``Trainer(run_dir=...)`` users need it as much as the CLI does, so it lives here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

LOCK_NAME = "train.lock"


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


def acquire_run_lock(run_dir: str | Path) -> Callable[[], None]:
    """Refuse to train a run directory that a live process is already training.

    The lock holds the owner's PID; a lock left by a killed process (PID gone) is taken
    over, so SIGKILL never blocks a resume.  Returns the function that releases it.
    """
    lock = Path(run_dir) / LOCK_NAME
    try:
        owner = int(lock.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        owner = 0
    if owner and owner != os.getpid() and _alive(owner):
        raise RunLockedError(
            f"{run_dir} is being trained by process {owner} right now; wait for it or stop it "
            f"(a lock left by a killed process is ignored; delete {lock} if process {owner} is "
            "not a metaloop run)"
        )
    lock.write_text(str(os.getpid()))

    def release() -> None:
        try:
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
        except OSError:
            pass

    return release
