"""The flags of ``metaloop diagnose``'s analyses (``diagnose_analyses``) and the checks
their values and the run's family must pass."""

from __future__ import annotations

import argparse
from typing import Any

from metaloop.cli.args import positive_int
from metaloop.cli.config import ConfigError


def _float_list(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from err
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from err
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _policy_list(text: str) -> list[str]:
    from metaloop.models.norm import NORM_POLICIES

    if text.strip() == "all":
        return [p for p in NORM_POLICIES if p != "none"]
    values = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [v for v in values if v not in NORM_POLICIES]
    if not values or unknown or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(
            f"expected distinct policies from {', '.join(NORM_POLICIES)} (or 'all'), got {text!r}"
        )
    return values


def add_arguments(dg: argparse.ArgumentParser) -> None:
    dg.add_argument("--oracle", action="store_true", help="theta_0 against the closed form")
    dg.add_argument(
        "--inner-lrs", type=_float_list, default=None, help="inner-step curves at these rates"
    )
    dg.add_argument(
        "--inner-decay",
        type=_float_list,
        default=None,
        metavar="C1,C2,..",
        help="inner-step curves with inner weight decay c (first --inner-lrs rate)",
    )
    dg.add_argument(
        "--support-jitter",
        type=_float_list,
        default=None,
        metavar="STD1,..",
        help="inner-step curves with 4 noisy copies of each support point (input noise std)",
    )
    dg.add_argument(
        "--decay-toward",
        default="zero,init",
        help="--inner-decay anchors: zero and/or init (theta_0), comma-separated",
    )
    dg.add_argument("--loto", action="store_true", help="leave-one-task-out risk inflation")
    dg.add_argument("--loto-tasks", type=positive_int, default=10, help="task set of --loto")
    dg.add_argument(
        "--pool-sizes", type=_int_list, default=None, help="risk inflation against pool size"
    )
    dg.add_argument("--pool-points", type=positive_int, default=50, help="points per pool task")
    dg.add_argument(
        "--pool-key",
        default="alphabet",
        help="--pool-sizes on an image family: the class metadata field a pool takes whole",
    )
    dg.add_argument(
        "--pool-seed",
        type=int,
        default=None,
        help="--pool-sizes on an image family: pick the groups in a seeded order (default: "
        "the first N in sorted order)",
    )
    dg.add_argument(
        "--meta-batch",
        type=positive_int,
        default=None,
        help="meta-batch of --pool-sizes/--diversity/--bn-policies training (default: the run's)",
    )
    dg.add_argument(
        "--bn-policies",
        type=_policy_list,
        default=None,
        metavar="P1,P2,..",
        help="train and test the backbone with these normalization policies side by side "
        "('all': the six of models.norm except none)",
    )
    dg.add_argument(
        "--episodes",
        type=positive_int,
        default=600,
        help="--bn-policies: test episodes (standard protocol, eval seed 12345)",
    )
    dg.add_argument(
        "--small-queries",
        type=int,
        default=1,
        help="--bn-policies: also test with this many queries per class (0: skip)",
    )
    dg.add_argument(
        "--iterations", type=positive_int, default=500, help="meta-training of --loto/--pool-sizes"
    )
    dg.add_argument("--outer-lr", type=float, default=1e-3, help="Adam rate of that training")
    dg.add_argument(
        "--geometry",
        action="store_true",
        help="gradient alignment, dead ReLU units, distance to the subspace of task optima",
    )
    dg.add_argument(
        "--diversity",
        type=_float_list,
        default=None,
        metavar="W1,W2,..",
        help="meta-train at these widths of the family's ranges; test in-range and shifted",
    )
    dg.add_argument(
        "--diversity-shift",
        type=float,
        default=0.75,
        help="--diversity: the shifted test ranges move by this many configured widths",
    )
    dg.add_argument("--noise", action="store_true", help="meta-gradient noise by source")
    dg.add_argument(
        "--noise-draws",
        type=_int_list,
        default=[8, 4, 4],
        metavar="I,J,K",
        help="--noise: tasks, support sets per task, query sets per support set",
    )
    dg.add_argument(
        "--noise-shots",
        type=_int_list,
        default=None,
        metavar="S1,S2,..",
        help="--noise: repeat the decomposition with these support sizes",
    )
    dg.add_argument(
        "--noise-batch-sizes",
        type=_int_list,
        default=None,
        metavar="B1,B2,..",
        help="--noise: covariance trace of the meta-batch mean against these meta-batch sizes",
    )
    dg.add_argument(
        "--noise-batches",
        type=positive_int,
        default=50,
        help="--noise-batch-sizes: independent meta-batches per size",
    )
    dg.add_argument("--plot", default=None, metavar="DIR", help="write a PNG per analysis")


def _synthetic_only(family: Any, what: str) -> None:
    if type(family).__module__ != "metaloop.tasks.synthetic":
        raise ConfigError(
            f"{what} needs a synthetic task family (metaloop.tasks.synthetic: sinusoid, "
            f"linear, gaussian_mean, ...), got {type(family).__name__}"
        )
