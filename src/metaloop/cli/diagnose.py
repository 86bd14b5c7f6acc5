"""``metaloop diagnose RUN``: adaptation curve, first- vs second-order gap and meta-gradient
statistics of a trained run."""

from __future__ import annotations

import argparse
import json
from typing import Any

from metaloop.cli.args import positive_int
from metaloop.cli.diagnose_options import add_arguments as add_analysis_arguments
from metaloop.cli.diagnose_sharpness import add_arguments as add_sharpness_arguments
from metaloop.cli.diagnose_sharpness import run_sharpness
from metaloop.cli.runs import load_run, runtime


def add_parser(sub: Any) -> None:
    dg = sub.add_parser("diagnose", help="adaptation curve, meta-gradient variance, order gap")
    dg.add_argument("run_dir")
    dg.add_argument("--max-steps", type=int, default=10, help="adaptation curve length")
    dg.add_argument("--tasks", type=positive_int, default=25, help="tasks per batch")
    dg.add_argument(
        "--batches", type=positive_int, default=10, help="batches for gradient variance"
    )
    dg.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    dg.add_argument("--json", action="store_true")
    add_sharpness_arguments(dg)
    add_analysis_arguments(dg)

    dg.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from metaloop import diagnostics
    from metaloop.cli.build import build_family

    cfg, learner, state = load_run(args.run_dir, args.checkpoint)
    runtime(cfg)
    family = build_family(cfg, "test")
    batch = family.sample(args.tasks, torch.Generator().manual_seed(0))
    report: dict[str, Any] = {
        "run_dir": str(args.run_dir),
        "checkpoint_iteration": state.get("iteration"),
    }
    if learner.adapts_by_steps:  # an adaptation curve over inner steps means something
        report["adaptation_curve"] = dataclasses.asdict(
            diagnostics.adaptation_curve(learner, batch, args.max_steps)
        )
        if learner.first_order is not None:
            report["order_gap"] = dataclasses.asdict(
                diagnostics.first_second_order_gap(learner, batch)
            )
    report["meta_gradient"] = dataclasses.asdict(
        diagnostics.meta_gradient_stats(learner, family, args.tasks, batches=max(2, args.batches))
    )
    from metaloop.cli.diagnose_analyses import print_analyses, run_analyses

    report.update(run_analyses(args, cfg, learner, family, batch))
    if args.sharpness:
        report["sharpness"] = run_sharpness(args, cfg, learner)
    if args.json:
        print(json.dumps(report))
        return 0
    if "sharpness" in report:
        print(report["sharpness"]["text"])
    if "adaptation_curve" in report:
        c = report["adaptation_curve"]
        print("steps   support loss   query loss")
        for s, a, b in zip(c["steps"], c["support_loss"], c["query_loss"]):
            print(f"{s:>5}   {a:>12.4g}   {b:>10.4g}")
    if "order_gap" in report:
        g = report["order_gap"]
        print(
            f"first vs second order: cosine {g['cosine']:.4f}, relative difference "
            f"{g['relative_difference']:.4f}"
        )
    m = report["meta_gradient"]
    print(
        f"meta-gradient over {m['batches']} batches of {args.tasks}: |mean| {m['mean_norm']:.4g}, "
        f"trace cov {m['variance']:.4g}, signal/noise {m['signal_to_noise']:.3g}"
    )
    print_analyses(report)
    return 0
