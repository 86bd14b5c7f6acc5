"""The outer loop: one trainer for every ``MetaLearner``.

Each iteration samples ``meta_batch_size`` tasks from a ``TaskFamily`` with the trainer's
own seeded generator, asks the learner for ``meta_loss`` and steps the outer optimizer on
its gradient.  Around that: meta-validation on a fixed set of held-out tasks with
best-checkpoint keeping and early stopping, a JSON-lines metrics log, atomic checkpoints
with every random state, resumption from a run directory, and a guard against
non-finite losses and gradients.

The trainer never knows which algorithm it runs: it only calls ``meta_loss`` and
``evaluate_batch``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaloop.algorithms.base import MetaLearner
from metaloop.tasks.base import TaskBatch, TaskFamily, validate_batch
from metaloop.train.checkpoint import BEST, atomic_save, load_latest, save_checkpoint

METRICS_LOG = "metrics.jsonl"
NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """The meta-loss or the meta-gradient was NaN or infinite."""


@dataclass
class FitResult:
    """What ``Trainer.fit`` returns: where training stopped and the best validation figure."""

    iteration: int
    best_iteration: int | None
    best_metric: float | None
    metric_name: str | None
    stopped_early: bool
    seconds: float
    skipped_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Trainer:
    """Meta-train a ``MetaLearner``.

    Args:
        learner: the meta-learner; its ``parameters()`` are what the outer loop learns.
        optimizer: any ``torch.optim.Optimizer`` over ``learner.parameters()``.
        meta_batch_size: tasks per meta-update.
        seed: seeds the task generator and torch's global RNG; same seed, same numbers.
        scheduler: optional LR scheduler, stepped once per iteration.
        grad_clip: optional max global norm of the meta-gradient.
        nonfinite: ``"stop"`` raises ``NonFiniteError`` (after saving the last good state),
            ``"skip"`` drops the step and goes on.
        tasks_per_chunk: split each meta-batch into chunks of at most this many tasks and
            accumulate their gradients (bounds memory; same result up to float rounding).
        device: where tasks and the learner live.
        progress: show a tqdm progress bar.
        tensorboard: also log scalars to TensorBoard in ``run_dir/tensorboard``.
        validate_tasks: check every sampled batch with ``validate_batch`` (cheap; on by default).
    """

    def __init__(
        self,
        learner: MetaLearner,
        optimizer: torch.optim.Optimizer,
        meta_batch_size: int = 25,
        seed: int = 0,
        scheduler: Any | None = None,
        grad_clip: float | None = None,
        nonfinite: str = "stop",
        tasks_per_chunk: int | None = None,
        device: str | torch.device = "cpu",
        progress: bool = True,
        tensorboard: bool = False,
        validate_tasks: bool = True,
    ) -> None:
        _positive_int("meta_batch_size", meta_batch_size)
        _positive_int("tasks_per_chunk", tasks_per_chunk, allow_none=True)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        self.learner = learner.to(device)
        self.optimizer = optimizer
        self.meta_batch_size = meta_batch_size
        self.seed = seed
        self.scheduler = scheduler
        self.grad_clip = grad_clip
        self.nonfinite = nonfinite
        self.tasks_per_chunk = tasks_per_chunk
        self.device = torch.device(device)
        self.progress = progress
        self.tensorboard = tensorboard
        self.validate_tasks = validate_tasks
        self.iteration = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.best_metric: float | None = None
        self.best_iteration: int | None = None
        self.bad_validations = 0
        self.elapsed = 0.0
        self.skipped_steps = 0
        self.callbacks: list[Callable[[Trainer, dict[str, Any]], None]] = []
        #: only the main process writes logs and checkpoints (see metaloop.distributed)
        self.is_main = True

    # -- one meta-update -------------------------------------------------------------------
    def step(self, batch: TaskBatch) -> dict[str, float]:
        """One meta-update on ``batch``; returns the learner's metrics.

        Raises ``NonFiniteError`` under ``nonfinite="stop"`` when the loss or gradient is
        not finite; under ``"skip"`` leaves the parameters unchanged.
        """
        self.learner.train()
        self.optimizer.zero_grad(set_to_none=True)
        chunks = batch.split(self.tasks_per_chunk) if self.tasks_per_chunk else [batch]
        metrics: dict[str, float] = {}
        total = len(batch)
        for chunk in chunks:
            loss, chunk_metrics = self.learner.meta_loss(chunk)
            weight = len(chunk) / total
            if not torch.isfinite(loss.detach()):
                return self._nonfinite("meta-loss", float(loss.detach()), chunk_metrics)
            (loss * weight).backward()
            for k, v in chunk_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + weight * v
        params = [p for p in self.learner.parameters() if p.grad is not None]
        if params:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))
            if not torch.isfinite(norm):
                return self._nonfinite("meta-gradient", float(norm), metrics)
            metrics["grad_norm"] = float(norm)
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    def _nonfinite(self, what: str, value: float, metrics: dict[str, float]) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        message = (
            f"non-finite {what} ({value}) at iteration {self.iteration + 1}: the batch's "
            f"tasks were drawn from generator seed {self.seed} at that iteration; "
            f"metrics {metrics}. Lower the learning rates, clip gradients (grad_clip), or "
            "set nonfinite='skip' to drop such steps."
        )
        if self.nonfinite == "skip":
            self.skipped_steps += 1
            return {"skipped": 1.0}
        raise NonFiniteError(message)

    # -- validation ----------------------------------------------------------------------
    def evaluate_tasks(self, batches: Sequence[TaskBatch], steps: Sequence[int] | None = None) -> dict[str, float]:
        """Mean query metrics of the learner over fixed task batches."""
        self.learner.eval()
        sums: dict[str, float] = {}
        count = 0
        for batch in batches:
            result = self.learner.evaluate_batch(batch.to(self.device), steps)
            last = result[max(result)]
            for k, v in last.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
            count += len(batch)
        self.learner.train()
        return {k: v / count for k, v in sums.items()}

    # -- the loop --------------------------------------------------------------------------
    def fit(
        self,
        family: TaskFamily,
        iterations: int,
        validate_on: TaskFamily | None = None,
        validate_every: int = 1000,
        validation_tasks: int = 100,
        validation_steps: Sequence[int] | None = None,
        patience: int | None = None,
        run_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 1000,
        log_every: int = 100,
        config: dict[str, Any] | None = None,
    ) -> FitResult:
        """Meta-train for ``iterations`` meta-updates in total (resuming counts what was done).

        Validation runs every ``validate_every`` iterations on ``validation_tasks`` tasks
        drawn once from ``validate_on`` with a seed of their own; the best learner is kept in
        ``run_dir/best.pt``.  With ``patience`` set, training stops after that many
        validations without improvement.  A run directory that already holds a checkpoint
        is resumed from it.
        """
        _positive_int("iterations", iterations)
        _positive_int("validate_every", validate_every)
        _positive_int("validation_tasks", validation_tasks)
        _positive_int("checkpoint_every", checkpoint_every)
        _positive_int("log_every", log_every)
        _positive_int("patience", patience, allow_none=True)
        run_path = Path(run_dir) if run_dir is not None else None
        if run_path is not None:
            run_path.mkdir(parents=True, exist_ok=True)
            state = load_latest(run_path)
            if state is not None:
                self.load_state(state)
                if self.is_main:
                    _truncate_log(run_path / METRICS_LOG, self.iteration)
            elif self.iteration == 0:
                torch.manual_seed(self.seed)
        elif self.iteration == 0:
            torch.manual_seed(self.seed)

        validation = self._validation_batches(validate_on, validation_tasks)
        maximize = self.learner.classification
        metric_name = "accuracy" if maximize else "loss"
        write_path = run_path if self.is_main else None
        writer = _tensorboard(write_path) if (self.tensorboard and write_path) else None
        log_file = open(write_path / METRICS_LOG, "a") if write_path else None  # noqa: SIM115
        history: list[dict[str, Any]] = []
        stopped_early = False
        bar = _progress(self.progress and self.is_main, self.iteration, iterations)
        start = time.perf_counter() - self.elapsed
        running: dict[str, float] = {}
        try:
            while self.iteration < iterations:
                batch = family.sample(self.meta_batch_size, self.generator)
                if self.validate_tasks:
                    validate_batch(batch)
                try:
                    metrics = self.step(batch.to(self.device))
                except NonFiniteError:
                    if write_path is not None:
                        self.elapsed = time.perf_counter() - start
                        save_checkpoint(self.state(config), write_path)
                    raise
                self.iteration += 1
                for k, v in metrics.items():
                    running[k] = running.get(k, 0.0) + v
                running["_n"] = running.get("_n", 0.0) + 1
                record: dict[str, Any] | None = None
                if self.iteration % log_every == 0 or self.iteration == iterations:
                    n = running.pop("_n")
                    record = {"iteration": self.iteration, "split": "train",
                              **{k: v / n for k, v in running.items()}}
                    running = {}
                if validation and (self.iteration % validate_every == 0 or self.iteration == iterations):
                    val = self.evaluate_tasks(validation, validation_steps)
                    value = val[metric_name]
                    improved = self.best_metric is None or (
                        value > self.best_metric if maximize else value < self.best_metric
                    )
                    if improved:
                        self.best_metric, self.best_iteration = value, self.iteration
                        self.bad_validations = 0
                        if write_path is not None:
                            atomic_save(
                                {"learner": self.learner.state_dict(), "iteration": self.iteration,
                                 "metric": {metric_name: value}, "config": config},
                                write_path / BEST,
                            )
                    else:
                        self.bad_validations += 1
                    val_record = {"iteration": self.iteration, "split": "val",
                                  **val, "best": self.best_metric}
                    history.append(val_record)
                    self._emit(val_record, log_file, writer)
                    bar.set_postfix_str(f"loss {metrics.get('loss', float('nan')):.4g} "
                                        f"val {metric_name} {value:.4g}")
                    if patience is not None and self.bad_validations >= patience:
                        stopped_early = True
                if record is not None:
                    record["seconds"] = round(time.perf_counter() - start, 3)
                    history.append(record)
                    self._emit(record, log_file, writer)
                    if not validation:
                        bar.set_postfix_str(f"loss {record.get('loss', float('nan')):.4g}")
                bar.update(1)
                if write_path is not None and (
                    self.iteration % checkpoint_every == 0 or self.iteration == iterations
                    or stopped_early
                ):
                    if log_file is not None:
                        log_file.flush()
                    self.elapsed = time.perf_counter() - start
                    save_checkpoint(self.state(config), write_path)
                if stopped_early:
                    break
        finally:
            bar.close()
            if log_file is not None:
                log_file.close()
            if writer is not None:
                writer.close()
        self.elapsed = time.perf_counter() - start
        return FitResult(
            self.iteration, self.best_iteration, self.best_metric,
            metric_name if validation else None, stopped_early, self.elapsed,
            self.skipped_steps, history,
        )

    def _validation_batches(self, family: TaskFamily | None, tasks: int) -> list[TaskBatch]:
        if family is None:
            return []
        g = torch.Generator().manual_seed(self.seed + 1_000_003)
        sizes = [min(self.meta_batch_size, tasks - i) for i in range(0, tasks, self.meta_batch_size)]
        return [family.sample(n, g) for n in sizes]

    def _emit(self, record: dict[str, Any], log_file, writer) -> None:
        for cb in self.callbacks:
            cb(self, record)
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
        if writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("iteration",) and v is not None:
                    writer.add_scalar(f"{record['split']}/{k}", v, record["iteration"])

    # -- state -----------------------------------------------------------------------------
    def state(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: weights, optimizer, RNGs, counters."""
        return {
            "iteration": self.iteration,
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best_metric": self.best_metric,
            "best_iteration": self.best_iteration,
            "bad_validations": self.bad_validations,
            "elapsed": self.elapsed,
            "skipped_steps": self.skipped_steps,
            "seed": self.seed,
            "config": config,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.iteration = int(state["iteration"])
        self.best_metric = state.get("best_metric")
        self.best_iteration = state.get("best_iteration")
        self.bad_validations = int(state.get("bad_validations", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so logs match a clean run."""
    if not path.exists():
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("iteration", math.inf) <= iteration:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _progress(enabled: bool, initial: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
                unit="it", desc="meta-train")


def _tensorboard(run_path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "tensorboard logging needs the optional extra: pip install 'metaloop[tensorboard]'"
        ) from err
    return SummaryWriter(str(run_path / "tensorboard"))
