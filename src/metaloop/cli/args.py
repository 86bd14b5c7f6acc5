"""Argument types and options shared by several commands."""

from __future__ import annotations

import argparse


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
