"""Shared argument validators: one place for the type and range checks every layer makes.

Python's ``bool`` is an ``int``, so "an integer" is ``isinstance(x, int) and not
isinstance(x, bool)`` and "a number" is ``isinstance(x, (int, float)) and not
isinstance(x, bool)``; ``is_int`` and ``is_number`` say it once.  The checkers return the
value (a ``float`` for numbers) or raise ``error`` (``ValueError`` by default; pass a
subclass such as ``TaskError``) with one line naming the argument, what is allowed and
what was given.  This module imports nothing from metaloop, so every layer may use it.
"""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """An integer (``bool`` excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` (``bool`` excluded); NaN and infinity included."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, error: type[Exception] = ValueError) -> int:
    """``value`` if it is an integer >= 1."""
    if not is_int(value) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: Any, *, error: type[Exception] = ValueError) -> int:
    """``value`` if it is an integer >= 0."""
    if not is_int(value) or value < 0:
        raise error(f"{name} must be an integer >= 0, got {value!r}")
    return value


def positive_float(name: str, value: Any, *, error: type[Exception] = ValueError) -> float:
    """``float(value)`` if it is a finite number > 0."""
    if not is_number(value) or not math.isfinite(value) or value <= 0:
        raise error(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def non_negative_float(name: str, value: Any, *, error: type[Exception] = ValueError) -> float:
    """``float(value)`` if it is a finite number >= 0."""
    if not is_number(value) or not math.isfinite(value) or value < 0:
        raise error(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def probability(name: str, value: Any, *, error: type[Exception] = ValueError) -> float:
    """``float(value)`` if it is a number in ``[0, 1]``."""
    if not is_number(value) or not 0 <= value <= 1:
        raise error(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


__all__ = [
    "is_int",
    "is_number",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
]
