"""The fine-tuning baseline: pretrain a classifier, then fit a new head per task.

Two stages (Chen et al. 2019's "Baseline"; also the transfer-learning baseline of Vinyals
et al. 2016 and Snell et al. 2017):

1. **Pretraining** (``pretrain``): an encoder ``f_phi`` and a linear classifier ``W_0`` over
   all ``C`` meta-training classes are trained jointly by plain supervised learning on
   global labels, ``min_{phi, W_0} E_(x, y) CE(W_0 f_phi(x), y)``.
2. **Adaptation** (``FineTuneBaseline.adapt``): for each test task the pretraining head is
   discarded and a new ``ways``-way linear head ``(W, b)`` is fitted on the support set,

       min_{W, b} (1/S) sum_i CE(W f_phi(x_i) + b, y_i)       (finetune="head")

   by ``steps`` steps of Adam (or SGD) from ``W = 0, b = 0`` (``head_init="zeros"``; this is
   logistic regression on frozen embeddings, a convex problem) or from the prototype
   classifier ``W_k = 2 c_k, b_k = -||c_k||^2`` (``head_init="prototypes"``, which equals
   ProtoNet's squared-Euclidean rule before any step).  With ``finetune="all"`` the
   encoder's parameters are fine-tuned too (on copies; the learner itself is unchanged).

``meta_loss(batch)`` is the *plain classification loss* of the encoder plus the pretraining
head on every support and query example of the batch, so the generic trainer can run
stage 1 from a task sampler.  Labels are, in order of preference:
``batch.info[global_labels_key]`` (``[T, S+Q]`` global class ids of support then query);
``batch.info["classes"][t, y]`` (the dataset class id of episode label ``y``, which
``metaloop.data`` episodes carry, so ``num_classes = family.num_classes``); else the task
labels themselves (meaningful only when labels keep their meaning across tasks, as in
``RotatingBoundary``).  It needs ``num_classes`` and ``embedding_dim``.

The encoder is used in whatever mode it is in: in ``train()`` mode batch norm uses (and its
running statistics follow) the batches it sees, as in any forward pass; evaluate in
``eval()`` mode.  ``finetune="all"`` works on copies of parameters and buffers.

Speed options (``functional.speed.SpeedOptions``, the engine's, as algorithm config keys):
``autocast="bfloat16"`` runs the encoder forward and the pretraining head of ``meta_loss``
in mixed precision (parameters, gradients and the cross-entropy stay float32: logits are
cast back before the loss), and in evaluation (``evaluate_batch``, ``adapt``) the encoder
forward (with ``finetune="all"`` the fine-tuned encoder copy's forward too); embeddings are
cast back to float32 and the head fitting ``z W^T + b`` stays float32 (in bfloat16 it was
8-25% slower per episode: casts around tiny matmuls).
Reported accuracies are then those of the mixed-precision forward.  ``compile=True`` (or
a dict of ``torch.compile`` options) compiles the encoder forward ``x -> f_phi(x)`` once
per learner (``SpeedOptions.compiled``; a failed compile warns once and runs eagerly),
used by ``meta_loss`` and by ``finetune="head"`` evaluation; ``finetune="all"`` runs the
encoder functionally on per-task parameter copies and stays eager.

Stage 1's training loop, ``pretrain``, is in ``finetune_pretrain.py``, stage 2's head
fitting (``init_heads``, ``fit_heads``) in ``finetune_heads.py``, and the speed options'
compiled encoder and float32 casts (``FineTuneSpeed``) in ``finetune_speed.py``;
``metaloop.diagnostics.feature_reuse`` holds the seed experiment contrasting this baseline
with MAML.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.base import MetaLearner, Predictor, StepMetrics, as_support
from metaloop.algorithms.finetune_heads import (
    HeadInit,
    _last,
    _torch_optimizer,
    fit_heads,
    head_logits,
    init_heads,
    per_task_cross_entropy,
)
from metaloop.algorithms.finetune_pretrain import PretrainResult, pretrain
from metaloop.algorithms.finetune_speed import FineTuneSpeed
from metaloop.algorithms.global_head import episode_global_labels
from metaloop.algorithms.metric_embedding import (
    embed,
    embed_episode,
    encoder_embedding,
)
from metaloop.algorithms.metric_ops import check_labels, infer_ways
from metaloop.algorithms.registry import register
from metaloop.functional.params import call
from metaloop.functional.speed import SpeedOptions, uses_batch_statistics
from metaloop.tasks.base import Task, TaskBatch, TaskError
from metaloop.tasks.registry import TaskSpec
from metaloop.validate import is_int

__all__ = [
    "FineTune",
    "FineTuneBaseline",
    "HeadInit",
    "PretrainResult",
    "fit_heads",
    "head_logits",
    "init_heads",
    "per_task_cross_entropy",
    "pretrain",
]

FineTune = Literal["head", "all"]


@register("finetune")
class FineTuneBaseline(FineTuneSpeed, MetaLearner):
    """Pretrained encoder + a new linear head fitted per task (optionally fine-tuning all).

    Args:
        encoder: feature extractor ``f_phi`` (outputs flattened to ``D`` features).
        finetune: ``"head"`` (frozen features, logistic regression on embeddings) or
            ``"all"`` (encoder fine-tuned with the head, at ``backbone_lr``).
        steps: fine-tuning steps per task (also the default evaluation step count).
        lr: learning rate of the head; ``backbone_lr`` (default ``lr``) of the encoder.
        optimizer: ``"adam"`` or ``"sgd"`` (full-batch on the support set).
        weight_decay: L2 penalty passed to the optimizer.
        head_init: ``"zeros"`` or ``"prototypes"`` (see the module docstring).
        num_classes, embedding_dim: size of the pretraining head used by ``meta_loss``
            (``embedding_dim`` defaults to ``encoder.embedding_dim`` when present, as on
            ``Conv4(ways=None)``).
        global_labels_key: ``batch.info`` key holding global labels ``[T, S+Q]``.
        autocast: ``"bfloat16"`` (or ``"float16"`` on CUDA): mixed precision in pretraining
            and evaluation (see the module docstring); ``None``: float32.
        compile: ``True`` or a dict of ``torch.compile`` options: compile the encoder
            forward (``meta_loss`` and ``finetune="head"`` evaluation).
    """

    #: the model is the encoder ``f_phi`` (its pretraining head is built here)
    model_role = "embedding"
    #: evaluation step counts are fine-tuning steps
    adapts_by_steps = True

    @classmethod
    def config_defaults(
        cls, spec: TaskSpec, model: nn.Module, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``num_classes``: the family's training classes (the pretraining head's size)."""
        return {} if spec.num_classes is None else {"num_classes": spec.num_classes}

    @classmethod
    def needs_training_classes(cls, options: Mapping[str, Any]) -> bool:
        return "num_classes" not in options

    def __init__(
        self,
        encoder: nn.Module,
        finetune: FineTune = "head",
        steps: int = 100,
        lr: float = 0.01,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        head_init: HeadInit = "zeros",
        backbone_lr: float | None = None,
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        global_labels_key: str = "global_labels",
        autocast: str | torch.dtype | None = None,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__("cross_entropy")
        if finetune not in ("head", "all"):
            raise ValueError(f"finetune must be 'head' or 'all', got {finetune!r}")
        if not is_int(steps) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        for name, value in (("lr", lr), ("backbone_lr", backbone_lr)):
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adam' or 'sgd'")
        if head_init not in ("zeros", "prototypes"):
            raise ValueError(f"unknown head_init {head_init!r}; choose 'zeros' or 'prototypes'")
        self.encoder = encoder
        self.finetune, self.steps, self.lr = finetune, steps, float(lr)
        self.backbone_lr = float(backbone_lr if backbone_lr is not None else lr)
        self.optimizer_name, self.weight_decay, self.head_init = optimizer, weight_decay, head_init
        self.global_labels_key = global_labels_key
        self.speed = SpeedOptions(compile=compile, autocast=autocast)
        self.head: nn.Linear | None = None
        if num_classes is not None:
            embedding_dim = embedding_dim or getattr(encoder, "embedding_dim", None)
            if embedding_dim is None:
                raise ValueError(
                    "num_classes needs embedding_dim (the encoder's flattened "
                    "output size) to build the pretraining head"
                )
            self.head = nn.Linear(embedding_dim, num_classes)

    @property
    def default_eval_steps(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.steps,)

    # -- stage 1 ---------------------------------------------------------------------------
    def pretrain(self, data: Any, labels: Tensor | None = None, **kwargs: Any) -> PretrainResult:
        """``pretrain(self.encoder, data, labels, head=self.head, ...)``; keeps the head."""
        kwargs.setdefault("head", self.head)
        result = pretrain(self.encoder, data, labels, **kwargs)
        if self.head is None and isinstance(result.head, nn.Linear):
            self.head = result.head
        return result

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Plain classification loss of ``head(f(x))`` on all support and query examples."""
        if self.head is None:
            raise ValueError(
                "FineTuneBaseline.meta_loss needs a pretraining head: pass "
                "num_classes and embedding_dim"
            )
        x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        labels = episode_global_labels(batch, self.global_labels_key)
        if labels is None:
            labels = torch.cat([batch.support_y, batch.query_y], dim=1)
        y = labels.reshape(-1).to(x.device)
        if y.shape[0] != x.shape[0]:
            raise TaskError(f"{y.shape[0]} labels for {x.shape[0]} examples in meta_loss")
        if int(y.min()) < 0 or int(y.max()) >= self.head.out_features:
            raise TaskError(
                f"labels {int(y.min())}..{int(y.max())} exceed the pretraining "
                f"head's {self.head.out_features} classes"
            )
        with self.speed.context(x):
            logits = self.head(embed(self._speed_encoder(), x).flatten(1))
        logits = self._unmixed(logits)  # the loss in float32
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    def embed(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``z = f_phi(x)``: the pretrained encoder's output, the features every episode's
        new head is fit on (``params`` replaces encoder parameters by name)."""
        return encoder_embedding(self.encoder, x, params)

    # -- stage 2 ---------------------------------------------------------------------------
    def _fit_heads(
        self, z: Tensor, y: Tensor, ways: int, steps: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the heads after 0, 1, .., ``steps`` steps on frozen embeddings ``z``."""
        return fit_heads(
            z, y, ways, steps, self.head_init, self.optimizer_name, self.lr, self.weight_decay
        )

    def _fit_all(self, x: Tensor, y: Tensor, ways: int, steps: int) -> Iterator[Predictor]:
        """Yield predictors after 0 .. ``steps`` steps fine-tuning encoder copy and head."""
        encoder = self.encoder
        params = {k: v.detach().clone().requires_grad_() for k, v in encoder.named_parameters()}
        buffers = {k: v.detach().clone() for k, v in encoder.named_buffers()}

        def features(p: dict[str, Tensor], inputs: Tensor) -> Tensor:
            with self.speed.context(inputs):
                z = call(encoder, p, buffers, inputs)
            if z.shape[0] != inputs.shape[0]:
                raise ValueError(f"the encoder mapped {inputs.shape[0]} inputs to {tuple(z.shape)}")
            return self._unmixed(z.flatten(1))

        with torch.no_grad():
            z0 = features(params, x)
        weight, bias = init_heads(z0.unsqueeze(0), y.unsqueeze(0), ways, self.head_init)
        weight, bias = weight[0].requires_grad_(), bias[0].requires_grad_()
        opt = _torch_optimizer(
            self.optimizer_name,
            [
                {"params": list(params.values()), "lr": self.backbone_lr},
                {"params": [weight, bias], "lr": self.lr},
            ],
            self.weight_decay,
        )

        def snapshot() -> Predictor:
            p = {k: v.detach().clone() for k, v in params.items()}
            w, b = weight.detach().clone(), bias.detach().clone()
            return lambda inputs: features(p, inputs) @ w.T + b

        yield snapshot()
        for _ in range(steps):
            with torch.enable_grad():
                loss = F.cross_entropy(features(params, x) @ weight.T + bias, y)
                opt.zero_grad()
                loss.backward()
            opt.step()
            yield snapshot()

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        """Fit a new ``ways``-way head (and, with ``finetune="all"``, the encoder) on the
        support set with ``steps`` (default ``self.steps``) optimizer steps; the predictor maps
        ``x [Q, ...]`` to logits ``[Q, ways]``."""
        x, y = as_support(support)
        steps = self.steps if steps is None else steps
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        ways = infer_ways(y)
        check_labels(y.unsqueeze(0), None, ways)
        if self.finetune == "all":
            return _last(self._fit_all(x, y, ways, steps))
        encoder = self._speed_encoder()
        if uses_batch_statistics(encoder):
            # support and inputs normalised together, as in evaluate_batch: the head is fit
            # on support embeddings that depend on the inputs, so once per call
            def predict_episode(inputs: Tensor) -> Tensor:
                with self.speed.context(x):
                    z_s, z_q = embed_episode(encoder, x, inputs)
                z_s, z_q = self._unmixed(z_s.detach()), self._unmixed(z_q)
                z_s = z_s.flatten(1).unsqueeze(0)
                weight, bias = _last(self._fit_heads(z_s, y.unsqueeze(0), ways, steps))
                return z_q.flatten(1) @ weight[0].T + bias[0]

            return predict_episode
        with torch.no_grad(), self.speed.context(x):
            z = self._unmixed(embed(encoder, x)).flatten(1).unsqueeze(0)
        weight, bias = _last(self._fit_heads(z, y.unsqueeze(0), ways, steps))

        def predict(inputs: Tensor) -> Tensor:
            with self.speed.context(inputs):
                z_q = self._unmixed(embed(encoder, inputs))
            return z_q.flatten(1) @ weight[0].T + bias[0]

        return predict

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """Query loss and accuracy per task after each requested number of fine-tuning
        steps, from one fitting run per task (``finetune="head"``: all tasks at once on
        embeddings from one encoder forward)."""
        wanted = sorted(set(steps if steps is not None else self.default_eval_steps))
        if wanted and wanted[0] < 0:
            raise ValueError(f"evaluation step counts must be >= 0, got {wanted}")
        ways = infer_ways(batch.support_y, batch.ways)
        check_labels(batch.support_y, batch.query_y, ways)
        last = wanted[-1] if wanted else 0
        records: dict[int, dict[str, Tensor]] = {}
        if self.finetune == "head":
            z_s, z_q = self._embed_batch(batch)
            for t, (weight, bias) in enumerate(self._fit_heads(z_s, batch.support_y, ways, last)):
                if t in wanted:
                    logits = head_logits(z_q, weight, bias)
                    records[t] = {
                        "loss": per_task_cross_entropy(logits, batch.query_y),
                        "accuracy": (logits.argmax(-1) == batch.query_y).to(z_q.dtype).mean(1),
                    }
            return records
        per_task: dict[int, dict[str, list[Tensor]]] = {
            s: {"loss": [], "accuracy": []} for s in wanted
        }
        for task in batch:
            for t, predictor in enumerate(
                self._fit_all(task.support_x, task.support_y, ways, last)
            ):
                if t in wanted:
                    logits = predictor(task.query_x)
                    per_task[t]["loss"].append(F.cross_entropy(logits, task.query_y))
                    per_task[t]["accuracy"].append(
                        (logits.argmax(-1) == task.query_y).to(logits.dtype).mean()
                    )
        return {s: {k: torch.stack(v) for k, v in m.items()} for s, m in per_task.items()}

    def extra_repr(self) -> str:
        return (
            f"finetune={self.finetune}, steps={self.steps}, lr={self.lr}, "
            f"optimizer={self.optimizer_name}, head_init={self.head_init}"
            + (f", {self.speed.describe()}" if self.speed.describe() else "")
        )
