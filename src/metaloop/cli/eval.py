"""``metaloop eval`` (one run or an ensemble), ``metaloop combine`` (saved predictions)
and ``metaloop lake-runs`` (Lake et al.'s 20-run one-shot benchmark)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from metaloop.cli.args import (
    add_overrides,
    add_tta_arguments,
    check_output_path,
    positive_int,
    seed_int,
    steps_list,
)
from metaloop.cli.config import PARTS, ConfigError
from metaloop.cli.runs import (
    apply_balance,
    apply_test_time_shift,
    balance_report,
    balance_temperature,
    describe_members,
    load_members,
    runtime,
)


def add_parser(sub: Any) -> None:
    e = sub.add_parser("eval", help="evaluate a run: mean +- 95%% CI per inner step count")
    e.add_argument(
        "run_dir",
        nargs="+",
        help="a run directory; several evaluate their ensemble (mean log-probability) on the "
        "first run's test episodes",
    )
    e.add_argument("--episodes", type=positive_int, default=None)
    e.add_argument("--steps", type=steps_list, default=None, help="e.g. 1,5,10")
    e.add_argument("--shots", type=positive_int, default=None)
    e.add_argument("--queries", type=positive_int, default=None)
    e.add_argument("--ways", type=positive_int, default=None)
    e.add_argument("--seed", type=seed_int, default=None)
    e.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    e.add_argument("--protocol", choices=("standard", "within-alphabet"), default=None)
    e.add_argument(
        "--part",
        choices=PARTS,
        default="test",
        help="whose classes the episodes use (default test; train: the meta-training "
        "classes without augmentation, to measure the generalisation gap)",
    )
    add_tta_arguments(e)
    add_overrides(e)
    e.add_argument("--json", action="store_true", help="print one JSON object (docs/cli.md)")
    e.add_argument(
        "--attack-epsilon",
        type=float,
        default=None,
        metavar="E",
        help="robustness: score FGSM queries of radius E against the adapted model "
        "(metaloop.evaluation.AdversarialQueries)",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument(
        "--oos",
        action="store_true",
        help="out-of-scope rejection (families with an 'oos' protocol, e.g. clinc150): "
        "in-scope accuracy, out-of-scope recall and AUROC, threshold from validation episodes",
    )
    e.add_argument(
        "--oos-score",
        choices=("max_probability", "max_logit"),
        default="max_probability",
        help="confidence that decides abstention (metaloop.evaluation.oos)",
    )
    e.add_argument(
        "--oos-validation-episodes",
        type=positive_int,
        default=200,
        help="validation episodes the abstention threshold is chosen on",
    )
    e.add_argument(
        "--divergence-factor",
        type=float,
        default=None,
        metavar="F",
        help="count an episode as divergent when its query loss is non-finite or above F "
        "times its loss before adaptation (default: [eval] divergence_factor, 10)",
    )
    e.add_argument(
        "--save-predictions",
        metavar="PATH",
        default=None,
        help="also write every query's log-probabilities to PATH (a new file), for "
        "`metaloop combine` to score ensembles later without running the models again",
    )

    e.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from metaloop.cli.build import build_family
    from metaloop.evaluation import evaluate

    if args.save_predictions:  # refuse before the evaluation, not after
        if Path(args.save_predictions).exists():
            raise ConfigError(
                f"--save-predictions {args.save_predictions} already exists; predictions "
                "are never overwritten"
            )
        check_output_path(args.save_predictions, "--save-predictions", create_parents=True)
    loaded: dict[Any, Any] = {}  # one data load for the learners and the episodes
    learner, members = load_members(args, args.overrides, loaded)
    cfg, state = members[0].cfg, members[0].state
    runtime(cfg)
    ev = cfg["eval"]
    episodes = args.episodes or ev["episodes"]
    steps = args.steps or ev["steps"] or None
    protocol = args.protocol or ev["protocol"]
    sizes = {
        "ways": args.ways or ev["ways"] or None,
        "shots": args.shots or ev["shots"] or None,
        "queries": args.queries or ev["queries"] or None,
    }
    if args.oos:
        return _run_oos(args, cfg, learner, members, sizes, episodes, steps, loaded)
    if protocol == "within-alphabet":
        from metaloop.cli.build import build_within_alphabet, check_background_only

        family = build_within_alphabet(cfg, **sizes, part=args.part, cache=loaded)
        for member in members[1:]:
            check_background_only(member.cfg, f"the within-alphabet protocol ({member.path})")
    else:
        family = build_family(
            cfg, args.part, evaluation=True, cache=loaded, run_dir=members[0].path, **sizes
        )
    seed = args.seed if args.seed is not None else ev["seed"]
    learner, tta_shift = apply_test_time_shift(learner, members, args.tta_shift)
    if args.save_predictions and args.balanced:
        raise ConfigError(
            "--save-predictions keeps the models' own predictions: leave out --balanced "
            "here and balance when combining (metaloop combine FILE ... --balanced)"
        )
    learner = apply_balance(learner, args)
    if args.attack_epsilon is not None:
        from metaloop.evaluation import AdversarialQueries

        if args.save_predictions:
            raise ConfigError(
                "--attack-epsilon scores attacked queries and --save-predictions keeps the "
                "models' own predictions: use one of them"
            )
        try:
            learner = AdversarialQueries(learner, args.attack_epsilon)
        except ValueError as err:
            raise ConfigError(f"--attack-epsilon: {err}") from err
    if args.save_predictions:
        from metaloop.evaluation.predictions import collect_predictions, save_predictions

        if Path(args.save_predictions).exists():  # refuse before the evaluation, not after
            raise ConfigError(
                f"--save-predictions {args.save_predictions} already exists; predictions "
                "are never overwritten"
            )
        info = {
            "runs": [str(m.path) for m in members],
            "checkpoint": args.checkpoint,
            "iterations": [m.state.get("iteration") for m in members],
            "protocol": protocol,
            "part": args.part,
            "tta_shift": tta_shift,
        }
        predictions = collect_predictions(
            learner,
            family,
            episodes,
            steps,
            seed,
            ev["batch_size"],
            cfg["device"],
            info,
            progress=not args.no_progress,
        )
        save_predictions(predictions, args.save_predictions)
        result = predictions.metrics()
    else:
        result = evaluate(
            learner,
            family,
            episodes=episodes,
            steps=steps,
            seed=seed,
            batch_size=ev["batch_size"],
            device=cfg["device"],
            progress=not args.no_progress,
            divergence_factor=_divergence_factor(args, ev),
        )
    reference = {str(k): v for k, v in ev.get("reference", {}).items()}
    out = result.to_dict()
    out.update(
        {
            "run_dir": str(members[0].path),
            "checkpoint": args.checkpoint,
            "checkpoint_iteration": state.get("iteration"),
            "ensemble": describe_members(members) if len(members) > 1 else None,
            "protocol": protocol,
            "part": args.part,
            "tta_shift": tta_shift,
            "balanced": balance_report(args),
            "attack_epsilon": args.attack_epsilon,
            "task": {k: v for k, v in cfg["task"].items()},
            "episode": {
                "ways": getattr(family, "ways", None),
                "shots": family.shots,
                "queries": family.queries,
            },
            "algorithm": cfg["algorithm"].get("name"),
            "reference": {"name": ev.get("reference_name", ""), "values": reference}
            if reference
            else None,
        }
    )
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        " + ".join(
            f"{m.path} ({m.cfg['algorithm'].get('name')}, checkpoint {args.checkpoint} "
            f"at iteration {m.state.get('iteration')})"
            for m in members
        )
        + (f" (ensemble of {len(members)})" if len(members) > 1 else "")
        + f", {protocol} protocol"
        + (f" on the {args.part} classes" if args.part != "test" else "")
        + ", "
        f"{getattr(family, 'ways', None) or ''}{'-way ' if getattr(family, 'ways', None) else ''}"
        f"{family.shots}-shot, {family.queries} queries"
        + (f", test-time shift {tta_shift}" if tta_shift else "")
        + (
            f", balanced assignment (temperature {balance_temperature(args):g})"
            if args.balanced
            else ""
        )
    )
    print(result)
    if reference:
        name = ev.get("reference_name") or "reference"
        print(f"  {name}: " + ", ".join(f"{k} steps {v}" for k, v in reference.items()))
    return 0


def _divergence_factor(args: argparse.Namespace, ev: dict[str, Any]) -> float:
    """``--divergence-factor``, else ``[eval] divergence_factor``; a finite number >= 1."""
    factor = args.divergence_factor
    if factor is None:
        return ev["divergence_factor"]
    if not (math.isfinite(factor) and factor >= 1):
        raise ConfigError(f"--divergence-factor must be a finite number >= 1, got {factor:g}")
    return factor


def _run_oos(args, cfg, learner, members, sizes, episodes, steps, loaded) -> int:
    """``eval --oos``: the abstention threshold chosen on validation episodes (validation
    intents and out-of-scope utterances), the figures on test episodes."""
    from metaloop.cli.build import build_family
    from metaloop.evaluation.oos import evaluate_oos

    if args.save_predictions or args.attack_epsilon is not None or args.part != "test":
        raise ConfigError(
            "--oos reports out-of-scope rejection on the test part; leave out "
            "--save-predictions, --attack-epsilon and --part"
        )
    ev = cfg["eval"]
    run_dir = members[0].path
    kw = dict(evaluation=True, cache=loaded, protocol="oos", run_dir=run_dir, **sizes)
    val, test = build_family(cfg, "val", **kw), build_family(cfg, "test", **kw)
    seed = args.seed if args.seed is not None else ev["seed"]
    result = evaluate_oos(
        learner,
        val,
        test,
        episodes=episodes,
        validation_episodes=args.oos_validation_episodes,
        seed=seed,
        score=args.oos_score,
        steps=steps[-1] if steps else None,
        batch_size=ev["batch_size"],
        device=cfg["device"],
        progress=not args.no_progress,
    )
    shape = {
        "ways": test.ways,
        "shots": test.shots,
        "queries": test.queries,
        "oos_queries": getattr(test, "oos_queries", None),
    }
    if args.json:
        print(json.dumps({**result.to_dict(), "run_dir": str(run_dir), "episode": shape}))
        return 0
    print(
        f"{run_dir} ({cfg['algorithm'].get('name')}, checkpoint {args.checkpoint}), "
        f"{shape['ways']}-way {shape['shots']}-shot, {shape['queries']} queries per intent and "
        f"{shape['oos_queries']} out-of-scope queries per episode"
    )
    print(result)
    return 0
