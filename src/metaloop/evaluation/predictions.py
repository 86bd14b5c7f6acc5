"""Saved predictions: evaluate every model once, combine them afterwards.

An evaluation of ``M`` models as an ensemble, with and without balanced assignment, costs
``M`` full evaluations per combination when each is run as its own ``Ensemble``.  Saving
each model's query log-probabilities on the test episodes instead,

    log p_m(y | x_eq)   for every episode e, query q and class y   ([E, Q, ways] per step count),

lets any subset be scored later at no encoder cost, with the ``Ensemble`` rule

    log p(y | x) = log softmax_y( (1/M) sum_m log softmax(f_m(x))_y )

and, optionally, ``BalancedAssignment``'s Sinkhorn balancing of each episode.  The numbers
are those of ``evaluate`` on the same episodes: the log-probabilities come from
``scoring.query_log_probs``, the function the ensemble and balanced wrappers use (a
gradient-based learner is adapted task by task there, which can differ from its own batched
``evaluate_batch`` in float rounding).

Two prediction sets combine only if they were drawn from the same episodes: the seed, the
episode count and every query label must agree, which ``combine_predictions`` checks.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaloop.algorithms.base import MetaLearner
from metaloop.evaluation.balanced import check_balanced_labels
from metaloop.evaluation.evaluate import EvalResult, estimate, evaluation_batches
from metaloop.evaluation.scoring import (
    classification_metrics,
    ensemble_log_probs,
    evaluation_steps,
    query_log_probs,
)
from metaloop.functional.assignment import balance_log_probs, check_balance_options
from metaloop.tasks.base import TaskFamily
from metaloop.train.checkpoint import CheckpointError, UnsafeCheckpointError, safe_load
from metaloop.validate import is_int

FORMAT = "metaloop-predictions-1"
_REMAKE_HINT = "make it again with `metaloop eval --save-predictions`"


@dataclass(frozen=True)
class Predictions:
    """Query log-probabilities of one model (or ensemble) on a fixed set of episodes.

    Attributes:
        log_probs: ``{steps: [E, Q, ways]}`` log-probabilities after ``steps`` inner steps.
        query_y: ``[E, Q]`` the true labels.
        seed: the seed the episodes were drawn with.
        info: a JSON-ready description (run directories, protocol, test-time shift, ...).
    """

    log_probs: dict[int, Tensor]
    query_y: Tensor
    seed: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def episodes(self) -> int:
        return int(self.query_y.shape[0])

    def metrics(
        self, balanced: bool = False, temperature: float = 1.0, iterations: int = 100
    ) -> EvalResult:
        """Per step count, mean query loss and accuracy with 95% CIs; ``balanced`` applies
        ``BalancedAssignment``'s Sinkhorn balancing to each episode first (transductive:
        it assumes every class has the same number of queries)."""
        if balanced:
            check_balance_options(iterations, temperature)
            ways = next(iter(self.log_probs.values())).shape[-1]
            check_balanced_labels(self.query_y, ways)
        out = {}
        for s, log_p in sorted(self.log_probs.items()):
            if balanced:
                log_p = balance_log_probs(log_p, iterations, temperature)
            per_task = classification_metrics(log_p, self.query_y)
            out[s] = {k: estimate(v) for k, v in per_task.items()}
        return EvalResult(out, self.episodes, self.seed)


@torch.no_grad()
def collect_predictions(
    learner: MetaLearner,
    family: TaskFamily,
    episodes: int = 600,
    steps: Sequence[int] | int | None = None,
    seed: int = 12345,
    batch_size: int = 25,
    device: str | torch.device = "cpu",
    info: dict[str, Any] | None = None,
    progress: bool = False,
) -> Predictions:
    """The query log-probabilities of ``learner`` (a classifier) on ``episodes`` tasks of
    ``family``, drawn as ``evaluate`` draws them (same seed, same episodes); ``progress``
    shows a progress bar."""
    if not learner.classification:
        raise ValueError(
            f"predictions are class log-probabilities, but {type(learner).__name__} is trained "
            f"with the {learner.loss_name!r} loss"
        )
    if isinstance(steps, int):
        steps = (steps,)
    steps = evaluation_steps(steps, learner.default_eval_steps)
    log_probs: dict[int, list[Tensor]] = {s: [] for s in steps}
    labels: list[Tensor] = []
    batches = evaluation_batches(learner, family, episodes, seed, batch_size, device, progress)
    for batch in batches:
        for s, log_p in query_log_probs(learner, batch, steps).items():
            log_probs[s].append(log_p.detach().float().cpu())
        labels.append(batch.query_y.cpu())
    return Predictions(
        {s: torch.cat(v) for s, v in log_probs.items()}, torch.cat(labels), seed, dict(info or {})
    )


def save_predictions(predictions: Predictions, path: str | Path) -> Path:
    """Write ``predictions`` to ``path`` (a new file: an existing one is never replaced)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(
            errno.EEXIST,
            "already exists; predictions are never overwritten: choose another path or "
            "remove the file",
            str(path),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "log_probs": predictions.log_probs,
        "query_y": predictions.query_y,
        "seed": predictions.seed,
        "info": predictions.info,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        try:  # a hard link never replaces: of two evaluations saving here, one wins
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(
                errno.EEXIST,
                "already exists (another evaluation saved there first); predictions are "
                "never overwritten",
                str(path),
            ) from None
    finally:
        os.unlink(tmp)
    return path


def load_predictions(path: str | Path) -> Predictions:
    """Read a file written by ``save_predictions`` (clear errors for anything else)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no predictions file at {path}")
    try:
        payload = safe_load(path, "predictions file", _REMAKE_HINT)
    except UnsafeCheckpointError:
        raise  # a file that tries to import code is refused, not "not ours"
    except CheckpointError as err:  # pickle, zip or version errors alike: not our file
        raise ValueError(f"{err}; not a predictions file") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a predictions file written by `metaloop eval --save-predictions` "
            f"(expected format {FORMAT!r})"
        )
    _check_payload(payload, path)
    return Predictions(
        {int(s): v for s, v in payload["log_probs"].items()},
        payload["query_y"],
        int(payload["seed"]),
        dict(payload.get("info") or {}),
    )


def _check_payload(payload: dict[str, Any], path: str | Path) -> None:
    """Raise ``ValueError`` (one line, naming ``path`` and the entry) unless ``payload`` is
    what ``save_predictions`` writes: ``log_probs`` a non-empty ``{steps: [E, Q, ways]}``
    of floating tensors of one shape, no NaN and no ``+inf`` (steps integers >= 0);
    ``query_y`` an integer ``[E, Q]`` tensor with labels in ``0..ways-1``; ``seed`` an
    integer; ``info`` a dict or absent."""

    def bad(what: str) -> ValueError:
        return ValueError(f"{path} is not a valid predictions file: {what}")

    log_probs, query_y = payload.get("log_probs"), payload.get("query_y")
    missing = [k for k in ("log_probs", "query_y", "seed") if k not in payload]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    if not isinstance(log_probs, dict) or not log_probs:
        raise bad(f"log_probs must be a non-empty dict {{steps: tensor}}, got {_kind(log_probs)}")
    shape = None
    for steps, value in log_probs.items():
        if not is_int(steps) or steps < 0:
            raise bad(f"log_probs keys must be step counts (integers >= 0), got {steps!r}")
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() != 3:
            raise bad(
                f"log_probs[{steps}] must be a floating [episodes, queries, ways] tensor, got "
                f"{_kind(value)}"
            )
        if shape is not None and tuple(value.shape) != shape:
            raise bad(f"log_probs[{steps}] has shape {tuple(value.shape)}, the others {shape}")
        shape = tuple(value.shape)
        if bool(torch.isnan(value).any()) or bool((value == float("inf")).any()):
            raise bad(f"log_probs[{steps}] holds NaN or +inf values")
    assert shape is not None
    if (
        not isinstance(query_y, Tensor)
        or query_y.is_floating_point()
        or query_y.is_complex()
        or query_y.dtype == torch.bool
    ):
        raise bad(f"query_y must be an integer tensor of labels, got {_kind(query_y)}")
    if tuple(query_y.shape) != shape[:2]:
        raise bad(
            f"query_y has shape {tuple(query_y.shape)} but log_probs are {shape} "
            f"(expected ({shape[0]}, {shape[1]}))"
        )
    if query_y.numel() and (int(query_y.min()) < 0 or int(query_y.max()) >= shape[2]):
        raise bad(
            f"query_y holds labels {int(query_y.min())}..{int(query_y.max())}, outside "
            f"0..{shape[2] - 1} for {shape[2]} ways"
        )
    seed = payload["seed"]
    if not is_int(seed):
        raise bad(f"seed must be an integer, got {_kind(seed)}")
    info = payload.get("info")
    if info is not None and not isinstance(info, dict):
        raise bad(f"info must be a dict, got {_kind(info)}")


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def combine_predictions(members: Sequence[Predictions], steps: int | None = None) -> Predictions:
    """The ensemble of saved predictions: mean of the members' log-softmax, renormalised
    (``Ensemble``'s rule).  Each member contributes its log-probabilities at ``steps``
    inner steps (which it must hold), or by default at its largest step count (a metric
    learner's 0, a gradient learner's final adaptation); the result is keyed by the
    largest of the counts used."""
    members = list(members)
    if not members:
        raise ValueError("combine needs at least one predictions set")
    first = members[0]
    for i, m in enumerate(members[1:], start=1):
        same = (
            m.seed == first.seed
            and m.query_y.shape == first.query_y.shape
            and torch.equal(m.query_y, first.query_y)
        )
        if not same:
            raise ValueError(
                f"predictions {i} were not made on the same episodes as predictions 0 (seed "
                f"{m.seed} vs {first.seed}, {m.episodes} vs {first.episodes} episodes, or "
                "different query labels): evaluate every member with the same protocol, "
                "episodes and seed"
            )
    chosen = []
    for i, m in enumerate(members):
        s = max(m.log_probs) if steps is None else steps
        if s not in m.log_probs:
            raise ValueError(
                f"predictions {i} hold step counts {sorted(m.log_probs)}, not {s}; evaluate "
                "it with --steps including it, or leave --steps out"
            )
        chosen.append((s, m.log_probs[s]))
    shapes = {tuple(lp.shape) for _, lp in chosen}
    if len(shapes) > 1:
        raise ValueError(f"predictions differ in shape: {sorted(shapes)}")
    key = max(s for s, _ in chosen)
    info = {"members": [m.info for m in members], "steps": [s for s, _ in chosen]}
    combined = ensemble_log_probs([lp for _, lp in chosen])
    return Predictions({key: combined}, first.query_y, first.seed, info)


__all__ = [
    "Predictions",
    "collect_predictions",
    "combine_predictions",
    "load_predictions",
    "save_predictions",
]
