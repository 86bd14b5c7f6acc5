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

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaloop.algorithms.base import MetaLearner
from metaloop.tasks.base import TaskBatch, TaskFamily, validate_batch
from metaloop.train.checkpoint import save_checkpoint
from metaloop.train.nonfinite import (
    NONFINITE_POLICIES,
    NonFiniteError,
    check_skipped,
    nonfinite_message,
    state_is_finite,
    tasks_nonfinite_alone,
)
from metaloop.train.options import check_fit_options, check_trainer_options
from metaloop.train.resume import open_run, restore_trainer_state, trainer_state
from metaloop.train.runlog import METRICS_LOG, RunLog, RunningMeans
from metaloop.train.validation import (
    Selection,
    evaluate_tasks,
    validate_and_keep_best,
    validation_batches,
)

__all__ = ["METRICS_LOG", "NONFINITE_POLICIES", "FitResult", "NonFiniteError", "Trainer"]


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
        max_skipped_fraction: under ``nonfinite="skip"``, stop with ``NonFiniteError`` when
            more than this fraction of the steps so far were skipped (checked at every train
            log record and at the end), and always when every step was skipped: such a run
            is not training.
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
        max_skipped_fraction: float = 0.5,
    ) -> None:
        check_trainer_options(
            meta_batch_size, tasks_per_chunk, nonfinite, max_skipped_fraction, grad_clip, seed
        )
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
        self.max_skipped_fraction = float(max_skipped_fraction)
        self.iteration = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.best_metric: float | None = None
        self.best_iteration: int | None = None
        self.bad_validations = 0
        self.elapsed = 0.0
        self.skipped_steps = 0
        self._running = RunningMeans()
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
                return self._nonfinite("meta-loss", float(loss.detach()), chunk_metrics, batch)
            (loss * weight).backward()
            for k, v in chunk_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + weight * v
        params = [p for p in self.learner.parameters() if p.grad is not None]
        if params:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))
            if not torch.isfinite(norm):
                return self._nonfinite("meta-gradient", float(norm), metrics, batch)
            metrics["grad_norm"] = float(norm)
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    def _nonfinite(
        self, what: str, value: float, metrics: dict[str, float], batch: TaskBatch | None = None
    ) -> dict[str, float]:
        """Drop the step: raise ``NonFiniteError`` (``"stop"``) or count it (``"skip"``).

        With ``batch`` given, each of its tasks is re-run on its own to name the culprits
        (the learner's state and torch's RNG are restored afterwards, so this never changes
        the run).
        """
        self.optimizer.zero_grad(set_to_none=True)
        iteration = self.iteration + 1
        broken = not self.state_is_finite()
        bad = self._bad_tasks(batch, what) if batch is not None and not broken else None
        message = nonfinite_message(what, value, iteration, self.seed, metrics, batch, bad, broken)
        if self.nonfinite == "skip":
            self.skipped_steps += 1
            warnings.warn(
                f"{message} The step was skipped (nonfinite='skip').", RuntimeWarning, stacklevel=3
            )
            return {"skipped": 1.0}
        message += (
            " Lower the learning rates, clip gradients (grad_clip), or set "
            "nonfinite='skip' to drop such steps."
        )
        raise NonFiniteError(message, iteration, bad or ())

    def _bad_tasks(self, batch: TaskBatch, what: str) -> list[int] | None:
        """Indices of the tasks whose meta-loss (or meta-gradient) is non-finite alone."""
        return tasks_nonfinite_alone(self.learner, batch, what)

    def state_is_finite(self) -> bool:
        """Whether the learner's parameters, buffers and the optimizer state are all finite
        (checked before every checkpoint, so a broken state never replaces a good one)."""
        return state_is_finite(self.learner, self.optimizer)

    # -- validation ----------------------------------------------------------------------
    def evaluate_tasks(
        self,
        batches: Sequence[TaskBatch],
        steps: Sequence[int] | None = None,
        select: int | Sequence[int] | None = None,
    ) -> dict[str, float]:
        """Mean query metrics of the learner over fixed task batches
        (``metaloop.train.validation.evaluate_tasks``)."""
        return evaluate_tasks(self.learner, batches, self.device, steps, select)

    def _validation_batches(self, family: TaskFamily | None, tasks: int) -> list[TaskBatch]:
        return validation_batches(family, tasks, self.meta_batch_size, self.seed)

    # -- the loop --------------------------------------------------------------------------
    def fit(
        self,
        family: TaskFamily,
        iterations: int,
        validate_on: TaskFamily | None = None,
        validate_every: int = 1000,
        validation_tasks: int = 100,
        validation_steps: Sequence[int] | None = None,
        select_on: str | None = None,
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

        Validation adapts with every step count in ``validation_steps`` (default: the
        learner's ``default_eval_steps``) and logs each one's metrics (``loss@10``).  The
        best checkpoint is chosen on ``select_on``, ``"metric@steps"`` (``"loss@10"``: the
        mean query loss after 10 steps, lowest wins; ``accuracy`` highest wins), its mean
        over several step counts (``"loss@1,5,10"``: ``(L_1 + L_5 + L_10) / 3``) or a bare
        metric name (at the largest validation step count); default: accuracy for
        classification, else loss, at the largest validation step count.  To validate on
        the protocol that is reported, give ``validate_on`` the test episodes' shape (shots)
        and ``validation_steps`` the reported step counts.
        """
        check_fit_options(
            iterations, validate_every, validation_tasks, checkpoint_every, log_every, patience
        )
        selection = Selection.parse(validation_steps, select_on, self.learner.classification)
        run_path = open_run(self, run_dir)
        validation = self._validation_batches(validate_on, validation_tasks)
        write_path = run_path if self.is_main else None
        log = RunLog(
            write_path, self.tensorboard, self.progress and self.is_main, self.iteration, iterations
        )
        history: list[dict[str, Any]] = []
        start = time.perf_counter() - self.elapsed
        first_iteration = self.iteration
        # true when resuming a run that had already stopped early
        stopped_early = patience is not None and self.bad_validations >= patience
        try:
            if self.validate_tasks:
                for vbatch in validation:
                    validate_batch(vbatch, classification=self.learner.classification)
            while self.iteration < iterations and not stopped_early:
                first = self.iteration == first_iteration
                metrics = self._train_step(family, first, write_path, config, start)
                last = self.iteration == iterations
                record: dict[str, Any] | None = None
                if self.iteration % log_every == 0 or last:
                    record = {"iteration": self.iteration, "split": "train", **self._running.pop()}
                if validation and (self.iteration % validate_every == 0 or last):
                    val_record, value = validate_and_keep_best(
                        self, validation, selection, write_path, config
                    )
                    self._emit(val_record, log, history)
                    log.bar.set_postfix_str(
                        f"loss {metrics.get('loss', float('nan')):.4g} "
                        f"val {selection.name} {value:.4g}"
                    )
                    stopped_early = patience is not None and self.bad_validations >= patience
                if record is not None:
                    record["seconds"] = round(time.perf_counter() - start, 3)
                    self._emit(record, log, history)
                    if not validation:
                        log.bar.set_postfix_str(f"loss {record.get('loss', float('nan')):.4g}")
                    self._check_skipped()
                log.bar.update(1)
                if write_path is not None and (
                    self.iteration % checkpoint_every == 0 or last or stopped_early
                ):
                    log.flush()
                    self._checkpoint(write_path, config, start)
        finally:
            log.close()
        self.elapsed = time.perf_counter() - start
        return FitResult(
            self.iteration,
            self.best_iteration,
            self.best_metric,
            selection.name if validation else None,
            stopped_early,
            self.elapsed,
            self.skipped_steps,
            history,
        )

    def _train_step(
        self,
        family: TaskFamily,
        check: bool,
        write_path: Path | None,
        config: dict[str, Any] | None,
        start: float,
    ) -> dict[str, float]:
        """Draw a meta-batch, check it (the learner's ``check_batch`` too, with ``check``),
        step on it and count the iteration; returns the step's metrics.

        On ``NonFiniteError`` the state *before* the batch was drawn is saved (a resume
        replays it exactly), and only if it is finite: a good checkpoint is never replaced.
        """
        before = (self.generator.get_state(), torch.get_rng_state())
        batch = family.sample(self.meta_batch_size, self.generator)
        if self.validate_tasks:
            validate_batch(batch, classification=self.learner.classification)
        batch = batch.to(self.device)
        if check:
            self.learner.check_batch(batch)  # model output vs ways/targets, once
        try:
            metrics = self.step(batch)
        except NonFiniteError:
            if write_path is not None and self.state_is_finite():
                self.elapsed = time.perf_counter() - start
                state = self.state(config)
                state["generator"], state["torch_rng"] = before
                save_checkpoint(state, write_path)
            raise
        self.iteration += 1
        self._running.add(metrics)
        return metrics

    def _checkpoint(self, write_path: Path, config: dict[str, Any] | None, start: float) -> None:
        """Save the state, refusing (``NonFiniteError``) when it is not finite."""
        if not self.state_is_finite():
            raise NonFiniteError(
                f"non-finite parameters or optimizer state after iteration "
                f"{self.iteration} (the update itself overflowed); the last good "
                f"checkpoint in {write_path} is kept. Lower the learning rates or "
                "clip gradients (grad_clip).",
                self.iteration,
            )
        self.elapsed = time.perf_counter() - start
        save_checkpoint(self.state(config), write_path)

    def _check_skipped(self) -> None:
        """Raise ``NonFiniteError`` when too many steps were skipped (``max_skipped_fraction``)
        or all of them: the run is not training."""
        check_skipped(self.iteration, self.skipped_steps, self.max_skipped_fraction)

    def _emit(self, record: dict[str, Any], log: RunLog, history: list[dict[str, Any]]) -> None:
        """Keep ``record`` in ``history``, hand it to the callbacks (which may add to it, as
        ``SharpnessLog`` does to validation records) and then to the log."""
        history.append(record)
        for cb in self.callbacks:
            cb(self, record)
        log.write(record)

    # -- state -----------------------------------------------------------------------------
    def state(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: weights, optimizer, RNGs, counters."""
        return trainer_state(self, config)

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (``Trainer.state``); a state of another model or optimizer
        raises ``CheckpointError`` with the first mismatch."""
        restore_trainer_state(self, state)
