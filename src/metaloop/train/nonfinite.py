"""Non-finite losses, gradients and states: the error, its diagnosis and the skip budget.

When the meta-loss L = sum_i w_i L_i of a meta-batch, or its gradient, is NaN or
infinite, the trainer re-runs each task i alone to name those whose L_i (or dL_i/dtheta)
is non-finite by itself, and reports them with their task parameters.  Under
``nonfinite="skip"`` the step is dropped; a run that skips more than a set fraction of its
steps (or all of them) stops, since it is not training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metaloop.algorithms.base import MetaLearner
from metaloop.tasks.base import TaskBatch

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


def tasks_nonfinite_alone(learner: MetaLearner, batch: TaskBatch, what: str) -> list[int] | None:
    """Indices of the tasks of ``batch`` whose meta-loss (with ``what == "meta-gradient"``:
    or meta-gradient) is non-finite alone; ``None`` when the diagnosis itself failed.

    The learner's state and torch's RNG are restored afterwards, so this never changes a run.
    """
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


def nonfinite_message(
    what: str,
    value: float,
    iteration: int,
    seed: int,
    metrics: dict[str, float],
    batch: TaskBatch | None,
    bad: list[int] | None,
    broken: bool,
) -> str:
    """What went non-finite at ``iteration``, and which tasks did (``bad``, from
    ``tasks_nonfinite_alone``; ``broken``: the parameters already were)."""
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
    return (
        f"non-finite {what} ({value}) at iteration {iteration}: {culprits}; the meta-batch "
        f"is the one drawn at iteration {iteration} from seed {seed}, metrics "
        f"{_short(metrics)}."
    )


def state_is_finite(learner: MetaLearner, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the learner's parameters, buffers and the optimizer state are all finite."""
    tensors = list(learner.state_dict().values())
    for group in optimizer.state.values():
        tensors.extend(v for v in group.values() if isinstance(v, torch.Tensor))
    return all(
        bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point() or t.is_complex()
    )


def check_skipped(done: int, skipped: int, max_skipped_fraction: float) -> None:
    """Raise ``NonFiniteError`` when ``skipped`` of ``done`` steps is more than
    ``max_skipped_fraction`` of them, or all of them: the run is not training."""
    if not skipped or not done:
        return
    if skipped >= done or skipped > max_skipped_fraction * done:
        what = (
            "every one"
            if skipped >= done
            else f"more than max_skipped_fraction = {max_skipped_fraction:g}"
        )
        raise NonFiniteError(
            f"{skipped} of the {done} meta-steps so far were skipped as non-finite "
            f"(nonfinite='skip'), {what}: the run is not training. Lower the learning "
            "rates, clip gradients (grad_clip), or raise max_skipped_fraction.",
            done,
        )


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
