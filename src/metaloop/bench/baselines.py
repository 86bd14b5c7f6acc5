"""Reference meta-steps written the plain way, to measure the engine against.

``PlainLoopMAML`` is what learn2learn, higher and TorchOpt do for MAML: tasks one after
another; for each task, ``torch.autograd.grad(support_loss, params, create_graph=True)``
per inner step and an out-of-place SGD update; the query losses are summed (averaged)
and one ``.backward()`` gives the meta-gradient.  First order: the inner gradients are
taken without ``create_graph`` and used as constants.  It is deliberately independent of
``metaloop.functional`` (only ``torch.func.functional_call`` to run the module with other
weights), so the benchmark tests can use it as an independent check of the engine's
meta-gradient.

``PlainLoopProtoNet`` does the same for Prototypical Networks: per task, embed support
and query, class means as prototypes, negative squared Euclidean distances as logits,
cross-entropy; the mean over tasks, one backward.

``HigherMAML`` / ``TorchOptMAML`` run the same meta-step with the ``higher`` and
``torchopt`` libraries when they are installed (optional comparison columns).

All speak the ``meta_loss(batch) -> (scalar, metrics)`` protocol of ``MetaLearner``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metaloop.tasks.base import TaskBatch

LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


class _PerTaskBaseline(nn.Module):
    """``meta_loss = (1/T) sum_i task_loss(batch, i)``, the tasks one after another."""

    def task_loss(self, batch: TaskBatch, i: int) -> Tensor:
        raise NotImplementedError

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        loss = sum(self.task_loss(batch, i) for i in range(len(batch))) / len(batch)
        return loss, {"loss": float(loss.detach())}


class PlainLoopMAML(_PerTaskBaseline):
    """Per-task MAML / FOMAML with plain ``torch.autograd`` (see module doc).

    Args:
        model: any ``nn.Module`` (its parameters are the meta-parameters).
        inner_lr: SGD inner learning rate.
        inner_steps: inner steps per task.
        loss: ``"mse"`` or ``"cross_entropy"``.
        first_order: FOMAML (inner gradients as constants).
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float,
        inner_steps: int = 1,
        loss: str = "mse",
        first_order: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.inner_lr, self.inner_steps = float(inner_lr), int(inner_steps)
        self.loss_fn = LOSSES[loss]
        self.first_order = bool(first_order)

    def adapt_one(self, sx: Tensor, sy: Tensor) -> dict[str, Tensor]:
        names, params = zip(*self.model.named_parameters())
        fast = list(params)
        for _ in range(self.inner_steps):
            loss = self.loss_fn(functional_call(self.model, dict(zip(names, fast)), (sx,)), sy)
            grads = torch.autograd.grad(loss, fast, create_graph=not self.first_order)
            fast = [p - self.inner_lr * g for p, g in zip(fast, grads)]
        return dict(zip(names, fast))

    def task_loss(self, batch: TaskBatch, i: int) -> Tensor:
        fast = self.adapt_one(batch.support_x[i], batch.support_y[i])
        return self.loss_fn(
            functional_call(self.model, fast, (batch.query_x[i],)), batch.query_y[i]
        )


class PlainLoopProtoNet(_PerTaskBaseline):
    """Per-task Prototypical Networks with squared Euclidean distance (see module doc)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def task_loss(self, batch: TaskBatch, i: int) -> Tensor:
        sy = batch.support_y[i]
        ways = int(batch.ways if batch.ways is not None else sy.max() + 1)
        z = self.encoder(torch.cat([batch.support_x[i], batch.query_x[i]])).flatten(1)
        zs, zq = z[: sy.shape[0]], z[sy.shape[0] :]
        one_hot = F.one_hot(sy, ways).to(z.dtype)
        prototypes = (one_hot.T @ zs) / one_hot.sum(0).unsqueeze(1)
        logits = -((zq.unsqueeze(1) - prototypes.unsqueeze(0)) ** 2).sum(-1)
        return F.cross_entropy(logits, batch.query_y[i])


class HigherMAML(_PerTaskBaseline):
    """MAML with ``higher.innerloop_ctx`` (facebookresearch/higher), one task at a time."""

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float,
        inner_steps: int = 1,
        loss: str = "mse",
        first_order: bool = False,
    ) -> None:
        super().__init__()
        import higher  # noqa: F401 - fail early when missing

        if first_order:
            raise ValueError("the higher column is second order only")
        self.model = model
        self.inner_lr, self.inner_steps = float(inner_lr), int(inner_steps)
        self.loss_fn = LOSSES[loss]
        self.inner_opt = torch.optim.SGD(model.parameters(), lr=self.inner_lr)

    def task_loss(self, batch: TaskBatch, i: int) -> Tensor:
        import higher

        with higher.innerloop_ctx(self.model, self.inner_opt, copy_initial_weights=False) as (
            fmodel,
            diffopt,
        ):
            for _ in range(self.inner_steps):
                diffopt.step(self.loss_fn(fmodel(batch.support_x[i]), batch.support_y[i]))
            return self.loss_fn(fmodel(batch.query_x[i]), batch.query_y[i])


class TorchOptMAML(_PerTaskBaseline):
    """MAML with ``torchopt.MetaSGD`` (metaopt/torchopt), one task at a time."""

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float,
        inner_steps: int = 1,
        loss: str = "mse",
        first_order: bool = False,
    ) -> None:
        super().__init__()
        import torchopt

        if first_order:
            raise ValueError("the TorchOpt column is second order only")
        self.model = model
        self.inner_steps = int(inner_steps)
        self.loss_fn = LOSSES[loss]
        self.inner_opt = torchopt.MetaSGD(model, lr=float(inner_lr))

    def task_loss(self, batch: TaskBatch, i: int) -> Tensor:
        import torchopt

        # MetaSGD updates the module in place: restore the meta-parameters after each task
        state = torchopt.extract_state_dict(self.model)
        optim_state = torchopt.extract_state_dict(self.inner_opt)
        for _ in range(self.inner_steps):
            self.inner_opt.step(self.loss_fn(self.model(batch.support_x[i]), batch.support_y[i]))
        loss = self.loss_fn(self.model(batch.query_x[i]), batch.query_y[i])
        torchopt.recover_state_dict(self.model, state)
        torchopt.recover_state_dict(self.inner_opt, optim_state)
        return loss


def available_libraries() -> dict[str, bool]:
    """Which optional comparison libraries import in this environment."""
    out: dict[str, bool] = {}
    for name in ("higher", "torchopt"):
        try:
            __import__(name)
            out[name] = True
        except Exception:
            out[name] = False
    return out


__all__ = [
    "HigherMAML",
    "PlainLoopMAML",
    "PlainLoopProtoNet",
    "TorchOptMAML",
    "available_libraries",
]
