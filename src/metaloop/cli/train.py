"""``metaloop train CONFIG --run-dir DIR`` and ``metaloop train RUN_DIR`` (resume)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from metaloop.cli.args import add_overrides
from metaloop.cli.config import EVAL_DEFAULTS, ConfigError, dump_toml, load_config
from metaloop.cli.runs import CONFIG_NAME, runtime

RESUMABLE = (
    {
        ("train", k)
        for k in (
            "iterations",
            "progress",
            "nonfinite",
            "max_skipped_fraction",
            "threads",
            "retain_memory",
            "log_every",
            "checkpoint_every",
            "validate_every",
            "patience",
            "tensorboard",
            "grad_clip",
            "sharpness_tasks",
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


def add_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="meta-train from a TOML config, or resume a run directory")
    t.add_argument("config", help="a TOML config file, or an existing run directory to resume")
    t.add_argument("--run-dir", help="where config, metrics, checkpoints and plots go")
    add_overrides(t, "override a config key, e.g. train.iterations=1000 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    t.set_defaults(func=run)


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
    if saved.exists() and has_checkpoint(run_dir):  # else the earlier attempt never trained
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


def has_checkpoint(run_dir: Path) -> bool:
    from metaloop.train.checkpoint import LATEST, PREVIOUS

    return (run_dir / LATEST).exists() or (run_dir / PREVIOUS).exists()


def check_run_dir(run_dir: Path) -> None:
    """Fail before any work when ``run_dir`` cannot hold a run: it, or the nearest existing
    folder above it, is a file, or an existing run directory cannot be written (a probe
    file is created and removed).  Creates nothing."""
    import os
    import tempfile

    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a directory")
    ancestor = run_dir
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: {ancestor} is a file, not a directory")
    if ancestor != run_dir:
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(f"--run-dir {run_dir}: cannot create it in {ancestor}")
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(
            f"run directory {run_dir} is not writable ({err.strerror or err}); checkpoints "
            "and logs go there"
        ) from err


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


def run(args: argparse.Namespace) -> int:
    from metaloop.cli.build import (
        build_family,
        build_learner,
        build_model,
        build_optimizer,
        family_spec,
        has_validation,
        validate,
    )
    from metaloop.train import Trainer
    from metaloop.train.checkpoint import LATEST
    from metaloop.train.lock import acquire_run_lock

    cfg, run_dir = _resolve_train_config(args)
    if args.no_progress:
        cfg["train"]["progress"] = False
    validate(cfg)
    check_run_dir(run_dir)
    # a resume reads its checkpoint first: an unreadable or refused one stops it before any
    # file of the run is written, and a resume with nothing left to train rewrites nothing
    write_config = True
    if has_checkpoint(run_dir):
        from metaloop.train.checkpoint import load_latest

        state = load_latest(run_dir)
        done = int(state["iteration"]) if state is not None else 0
        saved = run_dir / CONFIG_NAME
        write_config = cfg["train"]["iterations"] > done and (
            not saved.exists() or load_config(saved) != cfg
        )
    runtime(cfg)
    import torch

    torch.manual_seed(cfg["seed"])  # model initialisation is part of the seeded run
    loaded: dict[Any, Any] = {}  # the training and validation parts share one data load
    family = build_family(cfg, "train", cache=loaded, run_dir=run_dir)
    shots = cfg["train"]["validation_shots"] or None  # validation on the reported shots
    ways = cfg["train"]["validation_ways"] or None
    val_family = (
        build_family(cfg, "val", shots=shots, ways=ways, cache=loaded, run_dir=run_dir)
        if has_validation(cfg)
        else None
    )
    _check_test_episodes(cfg, loaded, run_dir)
    model = build_model(cfg, family_spec(cfg, family))  # sized by the family just built
    if cfg["train"]["init_from"] and not (run_dir / LATEST).exists():  # not when resuming
        _warm_start(model, cfg["train"]["init_from"])
    learner = build_learner(cfg, model, family=family)
    optimizer, scheduler = build_optimizer(cfg, learner)
    trainer_cls = Trainer
    from metaloop import distributed

    launched = distributed.launched_by_torchrun()
    if launched:
        distributed.init_from_env()
        trainer_cls = distributed.DistributedTrainer
    main_process = distributed.world()[0] == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    release_lock = acquire_run_lock(run_dir) if main_process else (lambda: None)
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
            write_config=write_config,
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
    cfg,
    run_dir,
    trainer_cls,
    main_process,
    family,
    val_family,
    learner,
    optimizer,
    scheduler,
    write_config: bool = True,
) -> int:
    from metaloop.train.checkpoint import atomic_write_text

    t = cfg["train"]
    if main_process and write_config:
        atomic_write_text(dump_toml(cfg), run_dir / CONFIG_NAME)  # a kill never truncates it
    trainer = trainer_cls(
        learner,
        optimizer,
        meta_batch_size=t["meta_batch_size"],
        seed=cfg["seed"],
        scheduler=scheduler,
        grad_clip=t["grad_clip"] or None,
        nonfinite=t["nonfinite"],
        max_skipped_fraction=t["max_skipped_fraction"],
        tasks_per_chunk=t["tasks_per_chunk"] or None,
        device=cfg["device"],
        progress=t["progress"],
        tensorboard=t["tensorboard"],
    )
    if t["sharpness_tasks"] and val_family is not None:
        _log_sharpness(trainer, val_family, t["sharpness_tasks"], cfg["seed"])
    result = trainer.fit(
        family,
        t["iterations"],
        validate_on=val_family,
        validate_every=t["validate_every"],
        validation_tasks=t["validation_tasks"],
        validation_steps=t["validation_steps"] or None,
        select_on=t["select_on"] or None,
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
        "skipped_steps": result.skipped_steps,
    }
    if main_process:
        print(json.dumps(summary))
    return 0


def _log_sharpness(trainer: Any, val_family: Any, tasks: int, seed: int) -> None:
    """``[train] sharpness_tasks``: add ``alpha * lambda_max`` statistics of ``tasks``
    validation-shaped tasks (their own seed) to every validation record."""
    import torch

    from metaloop.algorithms.gradient import GradientMetaLearner
    from metaloop.diagnostics.sharpness import SharpnessLog

    if not isinstance(trainer.learner, GradientMetaLearner):
        raise ConfigError(
            "train.sharpness_tasks applies to gradient-based learners (maml, fomaml, metasgd, "
            "anil, ...); set it to 0 for this one"
        )
    batch = val_family.sample(tasks, torch.Generator().manual_seed(seed + 2_000_003))
    trainer.callbacks.append(SharpnessLog(batch, iterations=50))


def _check_test_episodes(cfg: dict[str, Any], loaded: dict[Any, Any], run_dir: Path) -> None:
    """An ``[eval]`` episode size the test classes cannot give (``eval.ways`` above their
    number) is an error now, not after training; built only when ``eval.ways`` is set, from
    the data this command already loaded."""
    from metaloop.cli.build import build_family

    ev = cfg["eval"]
    if not ev["ways"]:
        return
    sizes = {"ways": ev["ways"], "shots": ev["shots"] or None, "queries": ev["queries"] or None}
    try:
        build_family(cfg, "test", evaluation=True, cache=loaded, run_dir=run_dir, **sizes)
    except (ConfigError, ValueError) as err:
        raise ConfigError(f"[eval] episodes cannot be drawn from the test classes: {err}") from err
