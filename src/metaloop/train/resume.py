"""A trainer's resumable state: what a checkpoint holds, how it is restored, and how a run
directory is (re)opened so that a resumed run continues bit-for-bit.

The state holds the learner's and the optimizer's (and scheduler's) state, the task
generator's and torch's RNG states, the iteration, the best validation figure, the
validations without improvement, the elapsed time, the skipped steps and the running
sums of the step metrics since the last train record.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from metaloop.train.checkpoint import CheckpointError, load_latest, remove_stale_temporaries
from metaloop.train.runlog import METRICS_LOG, RunningMeans, truncate_log

if TYPE_CHECKING:
    from metaloop.train.trainer import Trainer


def trainer_state(trainer: Trainer, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to continue bit-for-bit: weights, optimizer, RNGs, counters."""
    return {
        "iteration": trainer.iteration,
        "learner": trainer.learner.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "generator": trainer.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "best_metric": trainer.best_metric,
        "best_iteration": trainer.best_iteration,
        "bad_validations": trainer.bad_validations,
        "elapsed": trainer.elapsed,
        "skipped_steps": trainer.skipped_steps,
        "running": trainer._running.state(),
        "seed": trainer.seed,
        "config": config,
    }


def restore_trainer_state(trainer: Trainer, state: dict[str, Any]) -> None:
    """Continue ``trainer`` from ``state`` (``trainer_state``); a state of another model or
    optimizer raises ``CheckpointError`` with the first mismatch."""
    try:
        trainer.learner.load_state_dict(state["learner"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(
            f"the checkpoint does not fit this learner and optimizer (another model, "
            f"algorithm or optimizer wrote it): {detail[:400]}"
        ) from err
    if trainer.scheduler is not None and state.get("scheduler") is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    trainer.iteration = int(state["iteration"])
    trainer.best_metric = state.get("best_metric")
    trainer.best_iteration = state.get("best_iteration")
    trainer.bad_validations = int(state.get("bad_validations", 0))
    trainer.elapsed = float(state.get("elapsed", 0.0))
    trainer.skipped_steps = int(state.get("skipped_steps", 0))
    trainer._running = RunningMeans(state.get("running"))


def open_run(trainer: Trainer, run_dir: str | os.PathLike | None) -> Path | None:
    """Create ``run_dir`` and continue ``trainer`` from its latest checkpoint (else seed
    torch's RNG with the trainer's seed, on a fresh trainer); on the main process, drop
    what a killed process logged past that checkpoint and its stale temporary files."""
    run_path = Path(run_dir) if run_dir is not None else None
    state = None
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
        state = load_latest(run_path)
    if state is not None:
        trainer.load_state(state)
    elif trainer.iteration == 0:
        torch.manual_seed(trainer.seed)
    if run_path is not None and trainer.is_main:
        truncate_log(run_path / METRICS_LOG, trainer.iteration)
        remove_stale_temporaries(run_path)
    return run_path
