"""``metaloop diagnose RUN --sharpness``: the distribution of ``alpha * lambda_max`` of the
support loss at the learned initialisation over test tasks (``diagnostics.sharpness``).

The tasks are the evaluation episodes of ``metaloop eval`` (``[eval]`` shots, seed and batch
size; ``--sharpness-tasks`` of them, 600 by default), so a task's sharpness can be set
beside its divergence in ``eval``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from metaloop.cli.args import positive_int
from metaloop.cli.config import ConfigError


def add_arguments(dg: argparse.ArgumentParser) -> None:
    dg.add_argument(
        "--sharpness",
        action="store_true",
        help="alpha * lambda_max of the support loss at the initialisation over test tasks "
        "and the fraction above 2 (gradient descent's stability limit)",
    )
    dg.add_argument(
        "--sharpness-tasks",
        type=positive_int,
        default=600,
        help="test tasks of --sharpness (the first ones `metaloop eval` draws)",
    )
    dg.add_argument(
        "--sharpness-shots",
        type=positive_int,
        default=None,
        help="support points per task of --sharpness (default: [eval] shots, else the task's)",
    )
    dg.add_argument(
        "--power-iterations",
        type=positive_int,
        default=100,
        help="Hessian-vector products per power-iteration pass of --sharpness",
    )


def run_sharpness(args: argparse.Namespace, cfg: dict[str, Any], learner: Any) -> dict[str, Any]:
    """The ``sharpness`` entry of the diagnose report (``Sharpness`` as a dict, with the
    episode shape and seed)."""
    from metaloop.algorithms.gradient import GradientMetaLearner
    from metaloop.cli.build import build_family
    from metaloop.diagnostics.sharpness import sharpness
    from metaloop.evaluation.evaluate import evaluation_batches

    if not isinstance(learner, GradientMetaLearner):
        raise ConfigError(
            "--sharpness applies to gradient-based learners (maml, fomaml, metasgd, anil, ...), "
            f"not {cfg['algorithm'].get('name')!r}"
        )
    ev = cfg["eval"]
    shots = args.sharpness_shots or ev["shots"] or None
    family = build_family(cfg, "test", evaluation=True, shots=shots)
    batches = list(
        evaluation_batches(learner, family, args.sharpness_tasks, ev["seed"], ev["batch_size"])
    )
    try:
        report = sharpness(learner, batches, iterations=args.power_iterations)
    except ValueError as err:
        raise ConfigError(f"--sharpness: {err}") from err
    out = dataclasses.asdict(report)
    out.update({"shots": family.shots, "seed": ev["seed"], "text": str(report)})
    return out
