"""``metaloop combine FILE ...``: score the ensemble of prediction files saved by
``metaloop eval --save-predictions``, without running the models again."""

from __future__ import annotations

import argparse
import json
from typing import Any

from metaloop.cli.config import ConfigError
from metaloop.cli.runs import balance_report, balance_temperature


def add_parser(sub: Any) -> None:
    c = sub.add_parser(
        "combine", help="score the ensemble of saved predictions (eval --save-predictions)"
    )
    c.add_argument("predictions", nargs="+", help="files written by eval --save-predictions")
    c.add_argument(
        "--steps",
        type=int,
        default=None,
        help="inner step count every member contributes (default: each member's largest)",
    )
    c.add_argument(
        "--balanced",
        action="store_true",
        help="transductive: Sinkhorn-balance each episode's queries over the classes",
    )
    c.add_argument("--balance-temperature", type=float, default=None, metavar="TAU")
    c.add_argument("--json", action="store_true", help="print one JSON object")

    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score the ensemble of saved prediction files (module ``evaluation.predictions``)."""
    from metaloop.evaluation.predictions import combine_predictions, load_predictions

    if args.balance_temperature is not None and not args.balanced:
        raise ConfigError("--balance-temperature needs --balanced")
    try:
        members = [load_predictions(p) for p in args.predictions]
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err
    combined = combine_predictions(members, args.steps)
    result = combined.metrics(args.balanced, balance_temperature(args))
    if args.json:
        out = result.to_dict()
        out.update(
            {
                "predictions": list(args.predictions),
                "members": combined.info["members"],
                "member_steps": combined.info["steps"],
                "balanced": balance_report(args),
            }
        )
        print(json.dumps(out))
        return 0
    print(
        " + ".join(args.predictions)
        + (f" (ensemble of {len(members)})" if len(members) > 1 else "")
        + (
            f", balanced assignment (temperature {balance_temperature(args):g})"
            if args.balanced
            else ""
        )
    )
    print(result)
    return 0
