"""``metaloop lake-runs RUN ... --runs all_runs.zip``: Lake et al.'s 20-run one-shot
benchmark (20-way within-alphabet runs of the evaluation alphabets, error per run)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from metaloop.cli.args import add_tta_arguments, nonnegative_int
from metaloop.cli.config import ConfigError
from metaloop.cli.runs import (
    apply_balance,
    apply_test_time_shift,
    balance_report,
    describe_members,
    load_members,
    runtime,
)


def add_parser(sub: Any) -> None:
    lk = sub.add_parser("lake-runs", help="Lake et al.'s 20-run one-shot benchmark")
    lk.add_argument("run_dir", nargs="+", help="a run directory; several score their ensemble")
    lk.add_argument("--runs", required=True, help="all_runs.zip or its extracted folder")
    lk.add_argument("--steps", type=nonnegative_int, default=None)
    lk.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    add_tta_arguments(lk)
    lk.add_argument("--json", action="store_true")
    lk.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaloop.cli.build import check_background_only
    from metaloop.data import lake

    learner, members = load_members(args)
    for member in members:
        if not member.learner.classification:
            raise ConfigError(
                f"{member.path} is not an image classifier (task family "
                f"{member.cfg['task'].get('family')!r}, loss {member.learner.loss_name!r}); "
                "Lake's runs are 20-way one-shot character classification"
            )
    cfg, state = members[0].cfg, members[0].state
    for member in members:
        check_background_only(member.cfg, f"Lake's 20-run benchmark ({member.path})")
    runtime(cfg)
    learner, tta_shift = apply_test_time_shift(learner, members, args.tta_shift)
    learner = apply_balance(learner, args)
    runs = lake.load_runs(args.runs, image_size=cfg["data"]["image_size"])
    steps = args.steps

    def predict(task):
        import torch

        learner.eval()
        with torch.enable_grad():
            predictor = learner.adapt(task.support, steps=steps)
        with torch.no_grad():
            return predictor(task.query_x).argmax(-1)

    score = lake.score_runs(predict, runs)
    report = {
        "errors": list(score.errors),
        "mean_error": score.mean_error,
        "runs": len(score.errors),
        "run_dir": str(members[0].path),
        "checkpoint_iteration": state.get("iteration"),
        "ensemble": describe_members(members) if len(members) > 1 else None,
        "tta_shift": tta_shift,
        "balanced": balance_report(args),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for i, err in enumerate(score.errors, start=1):
            print(f"run {i:02d}: {err:.1f}% error")
        print(f"mean error over {len(score.errors)} runs: {score.mean_error:.2f}%")
    return 0
