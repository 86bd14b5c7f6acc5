"""Argument types and options shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from metaloop.cli.config import ConfigError


def steps_list(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--steps takes integers separated by commas, got {text!r}"
        ) from err
    if not steps or any(s < 0 for s in steps):
        raise argparse.ArgumentTypeError(f"--steps takes integers >= 0, got {text!r}")
    return steps


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from err
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"a seed must lie in -2**63..2**63-1, got {value}")
    return value


def check_output_path(path: str | Path, option: str, create_parents: bool = False) -> None:
    """Fail before any work when ``path`` cannot be written: a folder above it is a file,
    missing (unless ``create_parents``: the writer will create it), or not writable (a
    probe file is created and removed in the nearest existing folder).  Creates nothing."""
    import os
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give a file path")
    parent = path.parent
    if create_parents:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    if not parent.exists():
        raise ConfigError(f"{option} {path}: the directory {parent} does not exist")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(
            f"{option} {path}: the directory {parent} is not writable ({err.strerror or err})"
        ) from err


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_tta_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--tta-shift",
        type=int,
        default=None,
        metavar="S",
        help="test-time shift: average over translations by up to S pixels (metric learners: "
        "embeddings; other classifiers: query predictions)",
    )
    command.add_argument(
        "--balanced",
        action="store_true",
        help="transductive: predict each task's queries jointly, every class receiving the "
        "same share (Sinkhorn balancing; only for balanced query sets, docs/algorithms.md)",
    )
    command.add_argument(
        "--balance-temperature",
        type=float,
        default=None,
        metavar="TAU",
        help="with --balanced: scores divided by TAU first (1, the default, keeps the model's "
        "confidence; smaller approaches a one-to-one assignment)",
    )


def add_overrides(command: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    command.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )
