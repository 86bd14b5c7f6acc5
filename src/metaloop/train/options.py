"""Checks of ``Trainer``'s and ``Trainer.fit``'s options: a clear one-line error naming the
option, the value given and what is allowed."""

from __future__ import annotations

from typing import Any

from metaloop.train.nonfinite import NONFINITE_POLICIES
from metaloop.validate import is_int


def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1 (or ``None``, if allowed)."""
    if value is None and allow_none:
        return
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_trainer_options(
    meta_batch_size: Any,
    tasks_per_chunk: Any,
    nonfinite: Any,
    max_skipped_fraction: Any,
    grad_clip: Any,
    seed: Any,
) -> None:
    """Raise ``ValueError`` on the first of ``Trainer``'s options that is out of range."""
    positive_int("meta_batch_size", meta_batch_size)
    positive_int("tasks_per_chunk", tasks_per_chunk, allow_none=True)
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(
            f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}"
        )
    if (
        isinstance(max_skipped_fraction, bool)
        or not isinstance(max_skipped_fraction, (int, float))
        or not 0 <= max_skipped_fraction <= 1
    ):
        raise ValueError(
            f"max_skipped_fraction must be a number in 0..1, got {max_skipped_fraction!r}"
        )
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
    if not is_int(seed) or not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must be an integer in -2**63..2**63-1, got {seed!r}")


def check_fit_options(
    iterations: Any,
    validate_every: Any,
    validation_tasks: Any,
    checkpoint_every: Any,
    log_every: Any,
    patience: Any,
) -> None:
    """Raise ``ValueError`` unless each of ``fit``'s counts is a positive integer
    (``patience`` may also be ``None``)."""
    positive_int("iterations", iterations)
    positive_int("validate_every", validate_every)
    positive_int("validation_tasks", validation_tasks)
    positive_int("checkpoint_every", checkpoint_every)
    positive_int("log_every", log_every)
    positive_int("patience", patience, allow_none=True)
