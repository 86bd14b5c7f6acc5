"""The run log of ``Trainer.fit``: ``metrics.jsonl``, TensorBoard and the progress bar.

``metrics.jsonl`` holds one strict-JSON record per line (a non-finite number is written as
``null``) and is flushed after every record, so ``tail -f`` follows a run.  On resume the
lines a killed process wrote past the checkpoint are dropped (``truncate_log``), so the log
of a resumed run matches that of an uninterrupted one.  ``RunningMeans`` sums the step
metrics between two train records; it is part of the checkpoint for the same reason.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_LOG = "metrics.jsonl"


class RunningMeans:
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


class RunLog:
    """Where ``fit``'s records go: ``run_path/metrics.jsonl`` and, with ``tensorboard``,
    ``run_path/tensorboard`` (neither without ``run_path``), plus a tqdm progress bar
    (shown with ``progress``) counting iterations from ``initial`` to ``total``."""

    def __init__(
        self, run_path: Path | None, tensorboard: bool, progress: bool, initial: int, total: int
    ) -> None:
        self.writer = tensorboard_writer(run_path) if (tensorboard and run_path) else None
        self.file = open(run_path / METRICS_LOG, "a") if run_path else None
        self.bar = progress_bar(progress, initial, total)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with ``iteration`` and ``split``) to the log and TensorBoard."""
        if self.file is not None:  # strict JSON: a non-finite number is written as null
            self.file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
            self.file.flush()  # so `tail -f metrics.jsonl` follows the run
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("iteration",) and v is not None:
                    self.writer.add_scalar(f"{record['split']}/{k}", v, record["iteration"])

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with NaN and infinite floats replaced by ``None`` (JSON has no NaN)."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def truncate_log(path: Path, iteration: int) -> None:
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


def progress_bar(enabled: bool, initial: int, total: int):
    """A tqdm bar over meta-train iterations (disabled, it draws nothing)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        dynamic_ncols=True,
        unit="it",
        desc="meta-train",
    )


def tensorboard_writer(run_path: Path):
    """A TensorBoard ``SummaryWriter`` into ``run_path/tensorboard``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "tensorboard logging needs the optional extra: pip install 'metaloop[tensorboard]'"
        ) from err
    return SummaryWriter(str(run_path / "tensorboard"))
