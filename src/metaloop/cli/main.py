"""The ``metaloop`` command: train, eval, bench, plot, lake-runs.

    metaloop train configs/sinusoid-maml.toml --run-dir runs/sine [--set train.iterations=1000]
    metaloop train runs/sine                       # resume
    metaloop eval runs/sine --episodes 600 --steps 1,5,10 --shots 5 [--json]
    metaloop bench sinusoid [--json]
    metaloop bench sampler [--data-root DIR] [--workers 0,1,2] [--json]
    metaloop plot runs/sine [--out curve.png]
    metaloop diagnose runs/sine [--json]
    metaloop lake-runs runs/omni --runs all_runs.zip [--json]

Every error the user can fix is printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaloop.cli.config import EVAL_DEFAULTS, PARTS, ConfigError, dump_toml, load_config

CONFIG_NAME = "config.toml"
# (section, key) that ``metaloop train RUN_DIR --set ...`` may change when resuming
RESUMABLE = (
    {
        ("train", k)
        for k in (
            "iterations",
            "progress",
            "nonfinite",
            "threads",
            "retain_memory",
            "log_every",
            "checkpoint_every",
            "validate_every",
            "patience",
            "tensorboard",
            "grad_clip",
        )
    }
    | {("eval", k) for k in EVAL_DEFAULTS}
    | {
        # how tasks are batched and compiled changes speed and memory, not the mathematics:
        # results agree to float rounding (tested in tests/functional/test_speed_options.py)
        ("algorithm", "vectorize"),
        ("algorithm", "chunk_size"),
        ("algorithm", "compile"),
        ("algorithm", "channels_last"),
    }
)


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--steps takes integers separated by commas, got {text!r}"
        ) from err
    if not steps or any(s < 0 for s in steps):
        raise argparse.ArgumentTypeError(f"--steps takes integers >= 0, got {text!r}")
    return steps


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_tta_argument(command: argparse.ArgumentParser) -> None:
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


def parser() -> argparse.ArgumentParser:
    from metaloop.bench.sampler import add_sampler_arguments

    p = argparse.ArgumentParser(prog="metaloop", description="Meta-learning on PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train from a TOML config, or resume a run directory")
    t.add_argument("config", help="a TOML config file, or an existing run directory to resume")
    t.add_argument("--run-dir", help="where config, metrics, checkpoints and plots go")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. train.iterations=1000 (repeatable)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a run: mean +- 95%% CI per inner step count")
    e.add_argument(
        "run_dir",
        nargs="+",
        help="a run directory; several evaluate their ensemble (mean log-probability) on the "
        "first run's test episodes",
    )
    e.add_argument("--episodes", type=_positive, default=None)
    e.add_argument("--steps", type=_steps, default=None, help="e.g. 1,5,10")
    e.add_argument("--shots", type=_positive, default=None)
    e.add_argument("--queries", type=_positive, default=None)
    e.add_argument("--ways", type=_positive, default=None)
    e.add_argument("--seed", type=int, default=None)
    e.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    e.add_argument("--protocol", choices=("standard", "within-alphabet"), default=None)
    e.add_argument(
        "--part",
        choices=PARTS,
        default="test",
        help="whose classes the episodes use (default test; train: the meta-training "
        "classes without augmentation, to measure the generalisation gap)",
    )
    _add_tta_argument(e)
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
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
        "--save-predictions",
        metavar="PATH",
        default=None,
        help="also write every query's log-probabilities to PATH (a new file), for "
        "`metaloop combine` to score ensembles later without running the models again",
    )

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

    b = sub.add_parser("bench", help="meta-training throughput against a plain per-task loop")
    b.add_argument(
        "workload",
        help="sinusoid, omniglot, memory or protonet (meta-steps), or sampler (the data path: "
        "Omniglot episode batches/s)",
    )
    b.add_argument(
        "--repeats", type=_positive, default=None, help="timed steps (sampler: timed batches)"
    )
    b.add_argument("--device", default="cpu")
    b.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine more threads "
        "slow small models down; docs/performance.md)",
    )
    b.add_argument(
        "--retain-memory",
        action="store_true",
        help="keep freed memory for reuse, as train and eval do (glibc; docs/performance.md)",
    )
    add_sampler_arguments(b)
    b.add_argument("--json", action="store_true")

    pl = sub.add_parser("plot", help="learning curves of a run directory as a PNG")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")

    dg = sub.add_parser("diagnose", help="adaptation curve, meta-gradient variance, order gap")
    dg.add_argument("run_dir")
    dg.add_argument("--max-steps", type=int, default=10, help="adaptation curve length")
    dg.add_argument("--tasks", type=_positive, default=25, help="tasks per batch")
    dg.add_argument("--batches", type=_positive, default=10, help="batches for gradient variance")
    dg.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    dg.add_argument("--json", action="store_true")

    lk = sub.add_parser("lake-runs", help="Lake et al.'s 20-run one-shot benchmark")
    lk.add_argument("run_dir", nargs="+", help="a run directory; several score their ensemble")
    lk.add_argument("--runs", required=True, help="all_runs.zip or its extracted folder")
    lk.add_argument("--steps", type=int, default=None)
    lk.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    _add_tta_argument(lk)
    lk.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "plot":
            return cmd_plot(args)
        if args.command == "diagnose":
            return cmd_diagnose(args)
        if args.command == "lake-runs":
            return cmd_lake(args)
        if args.command == "combine":
            return cmd_combine(args)
    except ConfigError as err:
        print(f"metaloop {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, FloatingPointError) as err:
        # data, task, checkpoint and non-finite (NonFiniteError) errors carry a message
        # meant for the user
        from metaloop.train import CheckpointError, NonFiniteError

        if not isinstance(err, (ValueError, CheckpointError, NonFiniteError)):
            raise
        print(f"metaloop {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metaloop {args.command}: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    return 0


# -- train ---------------------------------------------------------------------------------
def _resolve_train_config(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    source = Path(args.config)
    if source.is_dir():
        run_dir = Path(args.run_dir) if args.run_dir else source
        if run_dir != source:
            raise ConfigError(f"resuming {source}: --run-dir must be omitted or equal to it")
        saved = source / CONFIG_NAME
        if not saved.exists():
            raise ConfigError(f"{source} is a directory without {CONFIG_NAME}; give a config file")
        cfg = load_config(saved, args.overrides)
        changed = _differences(load_config(saved), cfg, ignore=RESUMABLE)
        if changed:
            raise ConfigError(
                f"resuming {source}: {'; '.join(changed)} cannot change in a running run (the "
                "checkpoint would override or contradict it); settings that may change on "
                "resume: "
                + ", ".join(sorted(f"{a}.{b}" for a, b in RESUMABLE if a == "train"))
                + " and [eval]"
            )
        return cfg, run_dir
    if not args.run_dir:
        raise ConfigError("train needs --run-dir (where checkpoints and logs go)")
    run_dir = Path(args.run_dir)
    cfg = load_config(source, args.overrides)
    saved = run_dir / CONFIG_NAME
    if saved.exists():
        previous = load_config(saved)
        changed = _differences(
            previous, cfg, ignore={("train", "iterations"), ("train", "progress")}
        )
        if changed:
            raise ConfigError(
                f"{run_dir} already holds a run with a different config ({'; '.join(changed)}); "
                "resume it with `metaloop train " + str(run_dir) + "` or choose a new --run-dir"
            )
    return cfg, run_dir


def _differences(a: dict, b: dict, ignore: set[tuple[str, str]]) -> list[str]:
    out = []
    for section in set(a) | set(b):
        va, vb = a.get(section), b.get(section)
        if isinstance(va, dict) and isinstance(vb, dict):
            for k in set(va) | set(vb):
                if (section, k) not in ignore and va.get(k) != vb.get(k):
                    out.append(f"{section}.{k}: {va.get(k)!r} -> {vb.get(k)!r}")
        elif va != vb:
            out.append(f"{section}: {va!r} -> {vb!r}")
    return sorted(out)


def _runtime(cfg: dict[str, Any]) -> None:
    """Process-wide settings of a run: torch threads and the allocator policy."""
    import torch

    from metaloop.functional.speed import retain_freed_memory

    if cfg["train"]["threads"]:
        torch.set_num_threads(cfg["train"]["threads"])
    if cfg["train"]["retain_memory"]:
        retain_freed_memory()


LOCK_NAME = "train.lock"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire_run_lock(run_dir: Path):
    """Refuse to train a run directory that a live process is already training.

    The lock holds the owner's PID; a lock left by a killed process (PID gone) is taken
    over, so SIGKILL never blocks a resume.  Returns the function that releases it.
    """
    import os

    lock = run_dir / LOCK_NAME
    try:
        owner = int(lock.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        owner = 0
    if owner and owner != os.getpid() and _alive(owner):
        raise ConfigError(
            f"{run_dir} is being trained by process {owner} right now; wait for it or stop it "
            f"(a lock left by a killed process is ignored; delete {lock} if process {owner} is "
            "not a metaloop run)"
        )
    lock.write_text(str(os.getpid()))

    def release() -> None:
        try:
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
        except OSError:
            pass

    return release


def cmd_train(args: argparse.Namespace) -> int:
    from metaloop.cli.build import (
        build_family,
        build_learner,
        build_model,
        build_optimizer,
        has_validation,
        validate,
    )
    from metaloop.train import Trainer
    from metaloop.train.checkpoint import LATEST

    cfg, run_dir = _resolve_train_config(args)
    if args.no_progress:
        cfg["train"]["progress"] = False
    validate(cfg)
    _runtime(cfg)
    import torch

    torch.manual_seed(cfg["seed"])  # model initialisation is part of the seeded run
    family = build_family(cfg, "train")
    val_family = build_family(cfg, "val") if has_validation(cfg) else None
    model = build_model(cfg)
    if cfg["train"]["init_from"] and not (run_dir / LATEST).exists():  # not when resuming
        _warm_start(model, cfg["train"]["init_from"])
    learner = build_learner(cfg, model)
    optimizer, scheduler = build_optimizer(cfg, learner)
    trainer_cls = Trainer
    from metaloop import distributed

    launched = distributed.launched_by_torchrun()
    if launched:
        distributed.init_from_env()
        trainer_cls = distributed.DistributedTrainer
    main_process = distributed.world()[0] == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    release_lock = _acquire_run_lock(run_dir) if main_process else (lambda: None)
    try:
        status = _train(
            cfg,
            run_dir,
            trainer_cls,
            main_process,
            family,
            val_family,
            learner,
            optimizer,
            scheduler,
        )
        if launched:
            distributed.shutdown()  # only on success: a failed rank cannot reach the barrier
        return status
    finally:
        release_lock()


def _warm_start(model, source: str) -> None:
    from metaloop.train.checkpoint import CheckpointError, warm_start

    if not Path(source).exists():
        raise ConfigError(
            f"[train] init_from = {source!r}: no such run directory or checkpoint file"
        )
    try:
        names = warm_start(model, source)
    except CheckpointError as err:
        raise ConfigError(f"[train] {err}") from err
    print(f"init_from {source}: {len(names)} tensors loaded", file=sys.stderr)


def _train(
    cfg, run_dir, trainer_cls, main_process, family, val_family, learner, optimizer, scheduler
) -> int:
    from metaloop.train.checkpoint import atomic_write_text

    t = cfg["train"]
    if main_process:
        atomic_write_text(dump_toml(cfg), run_dir / CONFIG_NAME)  # a kill never truncates it
    trainer = trainer_cls(
        learner,
        optimizer,
        meta_batch_size=t["meta_batch_size"],
        seed=cfg["seed"],
        scheduler=scheduler,
        grad_clip=t["grad_clip"] or None,
        nonfinite=t["nonfinite"],
        tasks_per_chunk=t["tasks_per_chunk"] or None,
        device=cfg["device"],
        progress=t["progress"],
        tensorboard=t["tensorboard"],
    )
    result = trainer.fit(
        family,
        t["iterations"],
        validate_on=val_family,
        validate_every=t["validate_every"],
        validation_tasks=t["validation_tasks"],
        patience=t["patience"] or None,
        run_dir=run_dir,
        checkpoint_every=t["checkpoint_every"],
        log_every=t["log_every"],
        config=cfg,
    )
    summary = {
        "run_dir": str(run_dir),
        "iterations": result.iteration,
        "seconds": round(result.seconds, 1),
        "best_iteration": result.best_iteration,
        "best_" + (result.metric_name or "metric"): result.best_metric,
        "stopped_early": result.stopped_early,
    }
    if main_process:
        print(json.dumps(summary))
    return 0


# -- eval ----------------------------------------------------------------------------------
def load_run(run_dir: str | Path, checkpoint: str = "best", overrides: list[str] | None = None):
    """Config and learner of a run directory, weights from its best or latest checkpoint."""
    from metaloop.cli.build import build_learner, build_model, validate
    from metaloop.train.checkpoint import load_best, load_latest

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).exists():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_NAME})")
    cfg = load_config(run_dir / CONFIG_NAME, overrides)
    validate(cfg)
    model = build_model(cfg)
    learner = build_learner(cfg, model)
    state = load_best(run_dir) if checkpoint == "best" else load_latest(run_dir)
    if state is None:
        raise ConfigError(f"{run_dir} has no checkpoint yet (train it first)")
    try:
        learner.load_state_dict(state["learner"])
    except RuntimeError as err:  # config.toml edited, or --set changed the model
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise ConfigError(
            f"the checkpoint of {run_dir} does not fit the learner built from its config"
            f"{' and --set ' + ', '.join(overrides) if overrides else ''}: {detail}"
        ) from err
    return cfg, learner, state


def cmd_eval(args: argparse.Namespace) -> int:
    from metaloop.cli.build import build_family
    from metaloop.evaluation import evaluate

    learner, members = _load_members(args, args.overrides)
    cfg, state = members[0].cfg, members[0].state
    _runtime(cfg)
    ev = cfg["eval"]
    episodes = args.episodes or ev["episodes"]
    steps = args.steps or ev["steps"] or None
    protocol = args.protocol or ev["protocol"]
    sizes = {
        "ways": args.ways or ev["ways"] or None,
        "shots": args.shots or ev["shots"] or None,
        "queries": args.queries or ev["queries"] or None,
    }
    if protocol == "within-alphabet":
        from metaloop.cli.build import build_within_alphabet, check_background_only

        family = build_within_alphabet(cfg, **sizes, part=args.part)
        for member in members[1:]:
            check_background_only(member.cfg, f"the within-alphabet protocol ({member.path})")
    else:
        family = build_family(cfg, args.part, evaluation=True, **sizes)
    seed = args.seed if args.seed is not None else ev["seed"]
    learner, tta_shift = _apply_test_time_shift(learner, members, args.tta_shift)
    if args.save_predictions and args.balanced:
        raise ConfigError(
            "--save-predictions keeps the models' own predictions: leave out --balanced "
            "here and balance when combining (metaloop combine FILE ... --balanced)"
        )
    learner = _apply_balance(learner, args)
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
        )
    reference = {str(k): v for k, v in ev.get("reference", {}).items()}
    out = result.to_dict()
    out.update(
        {
            "run_dir": str(members[0].path),
            "checkpoint": args.checkpoint,
            "checkpoint_iteration": state.get("iteration"),
            "ensemble": _describe_members(members) if len(members) > 1 else None,
            "protocol": protocol,
            "part": args.part,
            "tta_shift": tta_shift,
            "balanced": _balance_report(args),
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
            f", balanced assignment (temperature {_balance_temperature(args):g})"
            if args.balanced
            else ""
        )
    )
    print(result)
    if reference:
        name = ev.get("reference_name") or "reference"
        print(f"  {name}: " + ", ".join(f"{k} steps {v}" for k, v in reference.items()))
    return 0


def _member_shift(member: Any, option: int | None) -> int:
    """``--tta-shift`` if given, else the run's ``[eval] tta_shift``; checked."""
    shift = option if option is not None else member.cfg["eval"]["tta_shift"]
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ConfigError(f"--tta-shift must be an integer >= 0, got {shift}")
    return shift


# -- bench, plot, lake ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Member:
    """One run directory loaded for evaluation."""

    path: str
    cfg: dict[str, Any]
    learner: Any
    state: dict[str, Any]


def _load_members(
    args: argparse.Namespace, overrides: list[str] | None = None
) -> tuple[Any, list[_Member]]:
    """The learner to evaluate and the loaded runs: one run's learner, or with several run
    directories their ``Ensemble`` (the members must take the same inputs as the first run,
    whose test episodes they share)."""
    members = [_Member(path, *load_run(path, args.checkpoint, overrides)) for path in args.run_dir]
    first = members[0]
    for member in members[1:]:
        for section, key in (("task", "family"), ("data", "image_size")):
            mine, theirs = first.cfg[section].get(key), member.cfg[section].get(key)
            if mine != theirs:
                raise ConfigError(
                    f"ensemble members must take the same inputs as the first run "
                    f"{first.path}: {member.path} has {section}.{key} = {theirs!r}, the first "
                    f"run {mine!r}"
                )
    if len(members) == 1:
        return first.learner, members
    from metaloop.evaluation import Ensemble

    try:
        return Ensemble([m.learner for m in members]), members
    except ValueError as err:
        raise ConfigError(f"cannot ensemble {', '.join(args.run_dir)}: {err}") from err


def _describe_members(members: list[_Member]) -> list[dict[str, Any]]:
    return [
        {
            "run_dir": str(m.path),
            "algorithm": m.cfg["algorithm"].get("name"),
            "checkpoint_iteration": m.state.get("iteration"),
        }
        for m in members
    ]


def _apply_test_time_shift(
    learner: Any, members: list[_Member], option: int | None
) -> tuple[Any, int]:
    """Apply ``--tta-shift`` (else each run's ``[eval] tta_shift``) to every member: a metric
    learner averages embeddings over the translated views (its ``test_time_shift``), any
    other classifier is wrapped in ``ShiftAveraged`` (predictions averaged over translated
    queries).  Returns the learner to evaluate and the first nonzero shift (0: off)."""
    from metaloop.evaluation.shift import ShiftAveraged

    shifts = []
    wrapped = []
    for member in members:
        shift, model = _member_shift(member, option), member.learner
        if shift and hasattr(model, "test_time_shift"):
            model.test_time_shift = shift
        elif shift:
            try:
                model = ShiftAveraged(model, shift)
            except ValueError as err:
                raise ConfigError(
                    f"--tta-shift {shift} for {member.path} "
                    f"({member.cfg['algorithm'].get('name')!r}): {err}"
                ) from err
        shifts.append(shift)
        wrapped.append(model)
    if len(members) == 1:
        learner = wrapped[0]
    else:
        for i, model in enumerate(wrapped):
            learner.members[i] = model
    return learner, next((s for s in shifts if s), 0)


def _apply_balance(learner: Any, args: argparse.Namespace) -> Any:
    """``--balanced``: wrap the learner in ``BalancedAssignment``; checks the temperature
    (which means nothing without ``--balanced``)."""
    from metaloop.evaluation import BalancedAssignment

    if not args.balanced:
        if args.balance_temperature is not None:
            raise ConfigError("--balance-temperature needs --balanced")
        return learner
    try:
        return BalancedAssignment(learner, temperature=_balance_temperature(args))
    except ValueError as err:
        raise ConfigError(f"--balanced: {err}") from err


def _balance_temperature(args: argparse.Namespace) -> float:
    return 1.0 if args.balance_temperature is None else args.balance_temperature


def _balance_report(args: argparse.Namespace) -> dict[str, float] | None:
    return {"temperature": _balance_temperature(args)} if args.balanced else None


def cmd_combine(args: argparse.Namespace) -> int:
    """Score the ensemble of saved prediction files (module ``evaluation.predictions``)."""
    from metaloop.evaluation.predictions import combine_predictions, load_predictions

    if args.balance_temperature is not None and not args.balanced:
        raise ConfigError("--balance-temperature needs --balanced")
    try:
        members = [load_predictions(p) for p in args.predictions]
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err
    combined = combine_predictions(members, args.steps)
    result = combined.metrics(args.balanced, _balance_temperature(args))
    if args.json:
        out = result.to_dict()
        out.update(
            {
                "predictions": list(args.predictions),
                "members": combined.info["members"],
                "member_steps": combined.info["steps"],
                "balanced": _balance_report(args),
            }
        )
        print(json.dumps(out))
        return 0
    print(
        " + ".join(args.predictions)
        + (f" (ensemble of {len(members)})" if len(members) > 1 else "")
        + (
            f", balanced assignment (temperature {_balance_temperature(args):g})"
            if args.balanced
            else ""
        )
    )
    print(result)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from metaloop.bench import format_table, run_benchmark
    except ImportError as err:  # pragma: no cover
        raise ConfigError(f"benchmarks are not available: {err}") from err
    from metaloop.functional.speed import retain_freed_memory

    if args.retain_memory and not retain_freed_memory():
        raise ConfigError("--retain-memory needs glibc (Linux); this C library has no mallopt")
    kwargs: dict[str, Any] = {"threads": args.threads}
    try:
        if args.workload == "sampler":
            from metaloop.bench.sampler import run_sampler_benchmark

            try:
                workers = [int(w) for w in args.workers.split(",") if w]
            except ValueError:
                raise ConfigError(
                    f"--workers must be comma-separated integers, got {args.workers!r}"
                ) from None
            result = run_sampler_benchmark(
                args.data_root, workers=workers, batches=args.repeats, **kwargs
            )
        else:
            if args.repeats:
                kwargs["repeats"] = args.repeats
            result = run_benchmark(args.workload, device=args.device, **kwargs)
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err).strip("'\"")) from err
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from metaloop.cli.plot import plot_run

    out = plot_run(args.run_dir, args.out)
    print(out)
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from metaloop import diagnostics
    from metaloop.algorithms.gradient import GradientMetaLearner
    from metaloop.cli.build import build_family

    cfg, learner, state = load_run(args.run_dir, args.checkpoint)
    _runtime(cfg)
    family = build_family(cfg, "test")
    batch = family.sample(args.tasks, torch.Generator().manual_seed(0))
    report: dict[str, Any] = {
        "run_dir": str(args.run_dir),
        "checkpoint_iteration": state.get("iteration"),
    }
    if isinstance(learner, GradientMetaLearner):
        report["adaptation_curve"] = dataclasses.asdict(
            diagnostics.adaptation_curve(learner, batch, args.max_steps)
        )
        if hasattr(learner, "first_order"):
            report["order_gap"] = dataclasses.asdict(
                diagnostics.first_second_order_gap(learner, batch)
            )
    report["meta_gradient"] = dataclasses.asdict(
        diagnostics.meta_gradient_stats(learner, family, args.tasks, batches=max(2, args.batches))
    )
    if args.json:
        print(json.dumps(report))
        return 0
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
    return 0


def cmd_lake(args: argparse.Namespace) -> int:
    from metaloop.cli.build import check_background_only
    from metaloop.data import lake

    learner, members = _load_members(args)
    cfg, state = members[0].cfg, members[0].state
    for member in members:
        check_background_only(member.cfg, f"Lake's 20-run benchmark ({member.path})")
    _runtime(cfg)
    learner, tta_shift = _apply_test_time_shift(learner, members, args.tta_shift)
    learner = _apply_balance(learner, args)
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
        "ensemble": _describe_members(members) if len(members) > 1 else None,
        "tta_shift": tta_shift,
        "balanced": _balance_report(args),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for i, err in enumerate(score.errors, start=1):
            print(f"run {i:02d}: {err:.1f}% error")
        print(f"mean error over {len(score.errors)} runs: {score.mean_error:.2f}%")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
