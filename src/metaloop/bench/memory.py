"""The memory probe of a meta-step: ``PeakMemory`` (see ``metaloop.bench.runner``'s
docstring, "Peak memory", for what it measures on CUDA and on CPU)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time

import torch

MEMORY_METHOD_CPU = "peak RSS growth during one meta-step (after gc + malloc_trim), 0.5 ms sampling"
MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated growth during one meta-step"


# -- memory probes --------------------------------------------------------------------------
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Context manager: ``self.peak`` is the peak memory growth inside it, in bytes."""

    def __init__(self, device: torch.device, interval: float = 0.0005) -> None:
        self.device, self.interval = device, interval
        self.peak: int | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        self._start = _rss_bytes()
        self._max = self._start
        self._stop = threading.Event()
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self._max:
                self._max = rss
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        rss = _rss_bytes() or 0
        self.peak = max(self._max, rss) - self._start
