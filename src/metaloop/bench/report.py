"""Pieces shared by the benchmark reports (``runner`` and ``sampler``): the machine facts
every result records, and the formatting of optional numbers."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages, or ``None`` where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_facts() -> dict[str, Any]:
    """``torch`` and ``python`` versions and ``cpu_count``, as every result records them."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``-`` for a missing value."""
    return "-" if value is None else format(value, spec)


def load_text(result: dict[str, Any]) -> str:
    """``"2.45 -> 2.49"`` (1-minute load average at start and end of a run), or ``-``."""
    start, end = result.get("load_avg_start"), result.get("load_avg_end")
    return "-" if start is None or end is None else f"{start[0]:.2f} -> {end[0]:.2f}"
