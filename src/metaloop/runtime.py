"""Process-wide settings of a run: torch's thread count and the allocator policy.

They are properties of the process, not of a learner or the engine, so the CLI applies
them once per command (``configure``, from ``[train] threads`` and ``retain_memory``) and
the benchmark runner per measurement (``num_threads``).

* Threads: ``torch.set_num_threads`` is process-wide.  On a shared 2-core machine one
  thread is often faster than two (OpenMP threads wait on each other when another process
  holds a core).
* Allocator: ``retain_freed_memory()`` keeps freed CPU memory for the next step instead
  of returning every large block to the kernel (glibc); docs/performance.md, section 5.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import torch


def configure(threads: int = 0, retain_memory: bool = False) -> None:
    """Apply a run's process settings: ``torch.set_num_threads(threads)`` when
    ``threads > 0`` (0: leave torch's default), and ``retain_freed_memory()`` when asked."""
    if threads:
        torch.set_num_threads(threads)
    if retain_memory:
        retain_freed_memory()


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily ``torch.set_num_threads(n)`` (``None``: leave unchanged)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_RETAINED: list[int] = []  # the threshold in effect, once retain_freed_memory succeeded


def retain_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Keep freed CPU memory in the process for reuse (glibc ``mallopt``); process-wide.

    glibc serves every allocation above its mmap threshold (at most 32 MiB, adjusted
    dynamically) with a fresh ``mmap`` and unmaps it on ``free``.  A convolutional
    training step allocates activations of tens to hundreds of MB (60-way Omniglot
    episodes: 360 images x 64 channels x 28 x 28 floats = 72 MB per layer), so every
    step page-faults them back in from the kernel, zero-filled: on this 2-core machine
    half the step time was system time.  With ``M_MMAP_THRESHOLD = M_TRIM_THRESHOLD =
    threshold_bytes`` allocations below the threshold come from the heap and freed
    blocks stay there for the next step (the Lake ProtoNet preset trains 2.1x faster
    here; docs/performance.md, section 5).  The cost: the process keeps its peak heap
    (resident memory does not shrink after a large step).  Numbers are unchanged.

    Cannot be undone (setting a threshold switches off glibc's dynamic adjustment).
    Returns whether it took effect: ``False`` off glibc (macOS, Windows, musl).
    """
    if threshold_bytes <= 0:
        raise ValueError(f"threshold_bytes must be > 0, got {threshold_bytes}")
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only; AttributeError elsewhere
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(threshold_bytes), 2**31 - 1)
    if mallopt(_M_MMAP_THRESHOLD, value) and mallopt(_M_TRIM_THRESHOLD, value):
        _RETAINED[:] = [value]
        return True
    return False


def retained_memory_threshold() -> int | None:
    """The threshold set by ``retain_freed_memory`` in this process (``None``: not set)."""
    return _RETAINED[0] if _RETAINED else None


__all__ = ["configure", "num_threads", "retain_freed_memory", "retained_memory_threshold"]
