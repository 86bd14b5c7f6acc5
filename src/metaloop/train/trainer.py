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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaloop.algorithms.base import MetaLearner
from metaloop.tasks.base import TaskBatch, TaskFamily, validate_batch
from metaloop.train.checkpoint import (
    BEST,
    CheckpointError,
    atomic_save,
    load_latest,
    remove_stale_temporaries,
    save_checkpoint,
)
from metaloop.validate import is_int

METRICS_LOG = "metrics.jsonl"
NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """The meta-loss, the meta-gradient or the parameters became NaN or infinite.

    ``iteration`` is the (1-based) iteration that failed and ``tasks`` the indices, within
    that iteration's meta-batch, of the tasks that are non-finite on their own (empty when
    only their combination is, or when they were not checked).
    """

    def __init__(self, message: str, iteration: int | None = None, tasks: Sequence[int] = ()):
        super().__init__(message)
        self.iteration = iteration
        self.tasks = list(tasks)


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
    if not is_int(value) or value < 1:
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
        _positive_int("meta_batch_size", meta_batch_size)
        _positive_int("tasks_per_chunk", tasks_per_chunk, allow_none=True)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}"
            )
        if (
            isinstance(max_skipped_fraction, bool)
            or not isinstance(max_skipped_fraction, (int, float))
            or not 0 <= max_skipped_fraction <= 1
        ):
            raise ValueError(
                f"max_skipped_fraction must be a number in 0..1, got {max_skipped_fraction!r}"
            )
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        if not is_int(seed) or not -(2**63) <= seed < 2**63:
            raise ValueError(f"seed must be an integer in -2**63..2**63-1, got {seed!r}")
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
        self._running = _Running()
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
        if broken:
            culprits = "the learner's parameters are not finite (an earlier update overflowed)"
        elif bad is None:
            culprits = "the tasks were not checked one by one"
        elif bad:
            culprits = (
                f"task(s) {bad} of the {len(batch)} in the meta-batch are non-finite on "
                f"their own{_task_info(batch, bad)}"
            )
        else:
            culprits = (
                f"no single task of the {len(batch)} in the meta-batch is non-finite on "
                "its own; their combination is"
            )
        message = (
            f"non-finite {what} ({value}) at iteration {iteration}: {culprits}; the meta-batch "
            f"is the one drawn at iteration {iteration} from seed {self.seed}, metrics "
            f"{_short(metrics)}."
        )
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
        learner = self.learner
        saved = {k: v.detach().clone() for k, v in learner.state_dict().items()}
        rng = torch.get_rng_state()
        params = [p for p in learner.parameters() if p.requires_grad]
        bad: list[int] = []
        try:
            for i, one in enumerate(batch.split(1)):
                loss, _ = learner.meta_loss(one)
                if not torch.isfinite(loss.detach()):
                    bad.append(i)
                elif what == "meta-gradient" and loss.requires_grad:
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
                        bad.append(i)
        except Exception:  # a failing diagnosis must not hide the real error
            return None
        finally:
            learner.load_state_dict(saved)
            torch.set_rng_state(rng)
        return bad

    def state_is_finite(self) -> bool:
        """Whether the learner's parameters, buffers and the optimizer state are all finite
        (checked before every checkpoint, so a broken state never replaces a good one)."""
        tensors = list(self.learner.state_dict().values())
        for group in self.optimizer.state.values():
            tensors.extend(v for v in group.values() if isinstance(v, torch.Tensor))
        return all(
            bool(torch.isfinite(t).all())
            for t in tensors
            if t.is_floating_point() or t.is_complex()
        )

    # -- validation ----------------------------------------------------------------------
    def evaluate_tasks(
        self,
        batches: Sequence[TaskBatch],
        steps: Sequence[int] | None = None,
        select: int | Sequence[int] | None = None,
    ) -> dict[str, float]:
        """Mean query metrics of the learner over fixed task batches.

        The metrics at step count ``select`` (default: the largest evaluated; several step
        counts: their mean) keep their plain names (``loss``, ``accuracy``); when several
        step counts are evaluated, each one's metrics are also given as ``name@steps``
        (``loss@1``, ``loss@10``).
        """
        self.learner.eval()
        sums: dict[int, dict[str, float]] = {}
        count = 0
        for batch in batches:
            result = self.learner.evaluate_batch(batch.to(self.device), steps)
            for s, metrics in result.items():
                for k, v in metrics.items():
                    sums.setdefault(s, {})[k] = sums.get(s, {}).get(k, 0.0) + float(v.sum())
            count += len(batch)
        self.learner.train()
        if select is None:
            chosen: Sequence[int] = (max(sums),)
        else:
            chosen = (select,) if isinstance(select, int) else tuple(select)
        missing = [s for s in chosen if s not in sums]
        if missing:
            raise ValueError(
                f"validation at {missing} steps was asked for, but the learner reported step "
                f"counts {sorted(sums)}"
            )
        out = {k: sum(sums[s][k] for s in chosen) / (count * len(chosen)) for k in sums[chosen[0]]}
        if len(sums) > 1:
            for s in sorted(sums):
                out.update({f"{k}@{s}": v / count for k, v in sums[s].items()})
        return out

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
        _positive_int("iterations", iterations)
        _positive_int("validate_every", validate_every)
        _positive_int("validation_tasks", validation_tasks)
        _positive_int("checkpoint_every", checkpoint_every)
        _positive_int("log_every", log_every)
        _positive_int("patience", patience, allow_none=True)
        validation_steps, select_step, select_metric = _selection(
            validation_steps, select_on, self.learner.classification
        )
        run_path = Path(run_dir) if run_dir is not None else None
        if run_path is not None:
            run_path.mkdir(parents=True, exist_ok=True)
            state = load_latest(run_path)
            if state is not None:
                self.load_state(state)
            elif self.iteration == 0:
                torch.manual_seed(self.seed)
            if self.is_main:  # drop what a killed process logged past the checkpoint
                _truncate_log(run_path / METRICS_LOG, self.iteration)
                remove_stale_temporaries(run_path)
        elif self.iteration == 0:
            torch.manual_seed(self.seed)

        validation = self._validation_batches(validate_on, validation_tasks)
        maximize = select_metric == "accuracy"
        metric_name = select_metric if select_on is None else select_on
        write_path = run_path if self.is_main else None
        writer = _tensorboard(write_path) if (self.tensorboard and write_path) else None
        log_file = open(write_path / METRICS_LOG, "a") if write_path else None
        history: list[dict[str, Any]] = []
        stopped_early = False
        bar = _progress(self.progress and self.is_main, self.iteration, iterations)
        start = time.perf_counter() - self.elapsed
        classification = self.learner.classification
        if self.validate_tasks:
            for vbatch in validation:
                validate_batch(vbatch, classification=classification)
        checked = False
        if patience is not None and self.bad_validations >= patience:
            stopped_early = True  # resuming a run that had already stopped early
        try:
            while self.iteration < iterations and not stopped_early:
                before = (self.generator.get_state(), torch.get_rng_state())
                batch = family.sample(self.meta_batch_size, self.generator)
                if self.validate_tasks:
                    validate_batch(batch, classification=classification)
                batch = batch.to(self.device)
                if not checked and hasattr(self.learner, "check_batch"):
                    self.learner.check_batch(batch)  # model output vs ways/targets, once
                checked = True
                try:
                    metrics = self.step(batch)
                except NonFiniteError:
                    # keep the state *before* the failing batch was drawn (a resume replays
                    # it exactly), and only if it is finite: never replace a good checkpoint
                    if write_path is not None and self.state_is_finite():
                        self.elapsed = time.perf_counter() - start
                        state = self.state(config)
                        state["generator"], state["torch_rng"] = before
                        save_checkpoint(state, write_path)
                    raise
                self.iteration += 1
                self._running.add(metrics)
                record: dict[str, Any] | None = None
                if self.iteration % log_every == 0 or self.iteration == iterations:
                    record = {"iteration": self.iteration, "split": "train", **self._running.pop()}
                if validation and (
                    self.iteration % validate_every == 0 or self.iteration == iterations
                ):
                    val = self.evaluate_tasks(validation, validation_steps, select_step)
                    if select_metric not in val:
                        raise ValueError(
                            f"select_on {metric_name!r}: the learner's validation reports "
                            f"{', '.join(k for k in val if '@' not in k)}"
                        )
                    value = val[select_metric]
                    improved = math.isfinite(value) and (
                        self.best_metric is None
                        or (value > self.best_metric if maximize else value < self.best_metric)
                    )
                    if improved:
                        self.best_metric, self.best_iteration = value, self.iteration
                        self.bad_validations = 0
                        if write_path is not None:
                            atomic_save(
                                {
                                    "learner": self.learner.state_dict(),
                                    "iteration": self.iteration,
                                    "metric": {metric_name: value},
                                    "config": config,
                                },
                                write_path / BEST,
                            )
                    else:
                        self.bad_validations += 1
                    val_record = {
                        "iteration": self.iteration,
                        "split": "val",
                        **val,
                        "best": self.best_metric,
                    }
                    history.append(val_record)
                    self._emit(val_record, log_file, writer)
                    bar.set_postfix_str(
                        f"loss {metrics.get('loss', float('nan')):.4g} "
                        f"val {metric_name} {value:.4g}"
                    )
                    if patience is not None and self.bad_validations >= patience:
                        stopped_early = True
                if record is not None:
                    record["seconds"] = round(time.perf_counter() - start, 3)
                    history.append(record)
                    self._emit(record, log_file, writer)
                    if not validation:
                        bar.set_postfix_str(f"loss {record.get('loss', float('nan')):.4g}")
                    self._check_skipped()
                bar.update(1)
                if write_path is not None and (
                    self.iteration % checkpoint_every == 0
                    or self.iteration == iterations
                    or stopped_early
                ):
                    if log_file is not None:
                        log_file.flush()
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
            self.iteration,
            self.best_iteration,
            self.best_metric,
            metric_name if validation else None,
            stopped_early,
            self.elapsed,
            self.skipped_steps,
            history,
        )

    def _validation_batches(self, family: TaskFamily | None, tasks: int) -> list[TaskBatch]:
        if family is None:
            return []
        g = torch.Generator().manual_seed(self.seed + 1_000_003)
        sizes = [
            min(self.meta_batch_size, tasks - i) for i in range(0, tasks, self.meta_batch_size)
        ]
        return [family.sample(n, g) for n in sizes]

    def _check_skipped(self) -> None:
        """Raise ``NonFiniteError`` when too many steps were skipped (``max_skipped_fraction``)
        or all of them: the run is not training."""
        done, skipped = self.iteration, self.skipped_steps
        if not skipped or not done:
            return
        if skipped >= done or skipped > self.max_skipped_fraction * done:
            what = (
                "every one"
                if skipped >= done
                else f"more than max_skipped_fraction = {self.max_skipped_fraction:g}"
            )
            raise NonFiniteError(
                f"{skipped} of the {done} meta-steps so far were skipped as non-finite "
                f"(nonfinite='skip'), {what}: the run is not training. Lower the learning "
                "rates, clip gradients (grad_clip), or raise max_skipped_fraction.",
                done,
            )

    def _emit(self, record: dict[str, Any], log_file, writer) -> None:
        for cb in self.callbacks:
            cb(self, record)
        if log_file is not None:  # strict JSON: a non-finite number is written as null
            log_file.write(json.dumps(_json_safe(record), allow_nan=False) + "\n")
            log_file.flush()  # so `tail -f metrics.jsonl` follows the run
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
            "running": self._running.state(),
            "seed": self.seed,
            "config": config,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (``Trainer.state``); a state of another model or optimizer
        raises ``CheckpointError`` with the first mismatch."""
        try:
            self.learner.load_state_dict(state["learner"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            detail = " ".join(str(err).split())
            raise CheckpointError(
                f"the checkpoint does not fit this learner and optimizer (another model, "
                f"algorithm or optimizer wrote it): {detail[:400]}"
            ) from err
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
        self._running = _Running(state.get("running"))


class _Running:
    """Step metrics summed since the last train record.

    Part of the checkpoint, so a resumed run logs the same averages as an uninterrupted one
    whatever ``checkpoint_every`` and ``log_every`` are.  Each metric is averaged over the
    steps that reported it; ``skipped`` is the fraction of steps skipped.
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.counts: dict[str, int] = dict(state.get("counts", {}))
        self.steps: int = int(state.get("steps", 0))

    def add(self, metrics: dict[str, float]) -> None:
        self.steps += 1
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        out = {
            k: v / (self.steps if k == "skipped" else self.counts[k]) for k, v in self.sums.items()
        }
        self.sums, self.counts, self.steps = {}, {}, 0
        return out

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "steps": self.steps}


def _selection(
    steps: Sequence[int] | None, select_on: str | None, classification: bool
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None, str]:
    """``(validation step counts, step counts that select, metric that selects)`` from
    ``fit``'s ``validation_steps`` and ``select_on`` (``"loss@10"``, ``"loss@1,5,10"``,
    ``"accuracy"``)."""
    if steps is not None:
        steps = tuple(steps)
        if not steps or any(not is_int(s) or s < 0 for s in steps):
            raise ValueError(
                f"validation_steps must be a non-empty list of integers >= 0, got {list(steps)}"
            )
    if select_on is None:
        return steps, None, "accuracy" if classification else "loss"
    metric, at, step_text = str(select_on).partition("@")
    counts = step_text.split(",")
    if not metric or (at and not all(c.strip().isdigit() for c in counts)):
        raise ValueError(
            f"select_on must be 'metric', 'metric@steps' or 'metric@steps,steps,...' (for "
            f"example 'loss@10', 'loss@1,5,10' or 'accuracy@1'), got {select_on!r}"
        )
    if not at:
        return steps, None, metric
    chosen = tuple(dict.fromkeys(int(c) for c in counts))
    if steps is None:
        steps = chosen
    for step in chosen:
        if step not in steps:
            raise ValueError(
                f"select_on {select_on!r} names {step} steps, which validation_steps "
                f"{list(steps)} does not include"
            )
    return steps, chosen, metric


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with NaN and infinite floats replaced by ``None`` (JSON has no NaN)."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def _short(metrics: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:.4g}" for k, v in metrics.items()) + "}"


def _task_info(batch: TaskBatch, tasks: list[int], limit: int = 3) -> str:
    """``" (task 3: amplitude=4.2, phase=1.1)"`` from small per-task tensors in ``batch.info``."""
    parts = []
    for i in tasks[:limit]:
        fields = []
        for k, v in (batch.info or {}).items():
            if (
                isinstance(v, torch.Tensor)
                and v.dim() > 0
                and v.shape[0] == len(batch)
                and v[i].numel() <= 4
            ):
                values = v[i].flatten().tolist()
                text = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in values)
                fields.append(f"{k}={text}")
        if fields:
            parts.append(f"task {i}: " + ", ".join(fields))
    return f" ({'; '.join(parts)})" if parts else ""


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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _progress(enabled: bool, initial: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        dynamic_ncols=True,
        unit="it",
        desc="meta-train",
    )


def _tensorboard(run_path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "tensorboard logging needs the optional extra: pip install 'metaloop[tensorboard]'"
        ) from err
    return SummaryWriter(str(run_path / "tensorboard"))
