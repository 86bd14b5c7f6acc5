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

``feature_reuse_experiment`` is the seed experiment contrasting this baseline with MAML.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.base import MetaLearner, Predictor, StepMetrics, as_support
from metaloop.algorithms.metric import (
    check_labels,
    class_means,
    embed,
    embed_batch,
    embed_episode,
    episode_global_labels,
    infer_ways,
)
from metaloop.algorithms.registry import register
from metaloop.functional.params import call
from metaloop.functional.speed import uses_batch_statistics
from metaloop.tasks.base import Task, TaskBatch, TaskError
from metaloop.tasks.registry import TaskSpec

FineTune = Literal["head", "all"]
HeadInit = Literal["zeros", "prototypes"]


# -- stage 1: supervised pretraining ---------------------------------------------------------


@dataclass
class PretrainResult:
    """The trained classification head and per-epoch mean training loss and accuracy."""

    head: nn.Module
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


def _embedding_dim(encoder: nn.Module, example: Tensor) -> int:
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            return int(embed(encoder, example[:1]).flatten(1).shape[1])
    finally:
        encoder.train(was_training)


def _as_tensors(data: Any, labels: Tensor | None) -> tuple[Tensor, Tensor] | None:
    if isinstance(data, Tensor):
        if labels is None:
            raise ValueError("pretrain(encoder, x, y): labels are required with a tensor x")
        return data, torch.as_tensor(labels)
    if hasattr(data, "images") and hasattr(data, "labels"):
        return torch.as_tensor(data.images), torch.as_tensor(data.labels)
    return None


def pretrain(
    encoder: nn.Module,
    data: Any,
    labels: Tensor | None = None,
    *,
    num_classes: int | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    head: nn.Module | None = None,
    generator: torch.Generator | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> PretrainResult:
    """Train ``encoder`` and a linear head on global labels with Adam and cross-entropy.

    ``data`` is a tensor ``x [N, ...]`` with ``labels [N]``, an object with ``images`` and
    ``labels`` attributes, or any map-style dataset of ``(x, y)`` pairs such as
    ``metaloop.data.ClassDataset`` (then ``num_classes`` comes from the argument, the
    dataset's ``num_classes`` attribute or ``head``).  ``num_classes`` defaults to
    ``max(y) + 1`` for tensors; ``head`` defaults to ``nn.Linear(embedding_dim,
    num_classes)``.  ``uint8`` images are scaled to ``[0, 1]``, then ``transform`` (e.g. a
    normalisation) is applied to every input batch.  The encoder is trained in place; the
    head is returned with the training curve.
    """

    param = next(iter(encoder.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")

    def prepare(xb: Tensor) -> Tensor:
        xb = xb.to(device)
        xb = xb.float() / 255.0 if xb.dtype == torch.uint8 else xb
        return transform(xb) if transform is not None else xb

    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    tensors = _as_tensors(data, labels)
    if tensors is not None:
        x, y = tensors
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(
                f"need as many labels as inputs (and at least one), got "
                f"{x.shape[0]} inputs and {y.shape[0]} labels"
            )
        if y.is_floating_point():
            raise ValueError(f"labels must be integer class ids, got dtype {y.dtype}")
        num_classes = num_classes or int(y.max()) + 1
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(
                f"labels must lie in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}"
            )
        first = x[:1]

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            order = torch.randperm(x.shape[0], generator=generator)
            for i in range(0, x.shape[0], batch_size):
                idx = order[i : i + batch_size]
                yield x[idx], y[idx]
    else:
        num_classes = num_classes or getattr(data, "num_classes", None)
        if num_classes is None and head is None:
            raise ValueError("pretrain on a generic dataset needs num_classes or head")
        loader = torch.utils.data.DataLoader(
            data, batch_size=batch_size, shuffle=True, generator=generator
        )
        first = torch.as_tensor(data[0][0]).unsqueeze(0)

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            for xb, yb in loader:
                yield torch.as_tensor(xb), torch.as_tensor(yb)

    if head is None:
        dim = _embedding_dim(encoder, prepare(first))
        head = nn.Linear(dim, int(num_classes)).to(device)  # type: ignore[arg-type]
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    result = PretrainResult(head)
    encoder.train()
    head.train()
    for _ in range(epochs):
        total, correct, count = 0.0, 0, 0
        for xb, yb in batches():
            logits = head(embed(encoder, prepare(xb)).flatten(1))
            yb = yb.to(device)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * yb.shape[0]
            correct += int((logits.argmax(-1) == yb).sum())
            count += yb.shape[0]
        result.loss.append(total / max(count, 1))
        result.accuracy.append(correct / max(count, 1))
    return result


# -- stage 2: per-task heads -----------------------------------------------------------------


def _torch_optimizer(name: str, groups: list[dict[str, Any]], weight_decay: float):
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")


def init_heads(z: Tensor, y: Tensor, ways: int, init: HeadInit) -> tuple[Tensor, Tensor]:
    """Initial heads ``W [T, ways, D]``, ``b [T, ways]`` for embeddings ``z [T, S, D]``."""
    t, _, d = z.shape
    if init == "zeros":
        return z.new_zeros(t, ways, d), z.new_zeros(t, ways)
    if init == "prototypes":
        c = class_means(z, y, ways)
        return 2.0 * c, -(c * c).sum(-1)
    raise ValueError(f"unknown head_init {init!r}; choose 'zeros' or 'prototypes'")


def head_logits(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``z W^T + b`` per task: ``z [T, N, D]``, ``W [T, ways, D]``, ``b [T, ways]``."""
    return z @ weight.transpose(1, 2) + bias.unsqueeze(1)


def per_task_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each task: ``[T, N, ways]``, ``[T, N]`` -> ``[T]``."""
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)


def _last(iterator: Iterator[Any]) -> Any:
    item = None
    for item in iterator:  # noqa: B007 - keep the last yielded value
        pass
    return item


@register("finetune")
class FineTuneBaseline(MetaLearner):
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
    ) -> None:
        super().__init__("cross_entropy")
        if finetune not in ("head", "all"):
            raise ValueError(f"finetune must be 'head' or 'all', got {finetune!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
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
        logits = self.head(embed(self.encoder, x).flatten(1))
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(acc)}

    # -- stage 2 ---------------------------------------------------------------------------
    def _fit_heads(
        self, z: Tensor, y: Tensor, ways: int, steps: int
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the heads after 0, 1, .., ``steps`` steps on frozen embeddings ``z``."""
        z = z.detach()
        weight, bias = init_heads(z, y, ways, self.head_init)
        weight, bias = weight.requires_grad_(), bias.requires_grad_()
        opt = _torch_optimizer(
            self.optimizer_name, [{"params": [weight, bias], "lr": self.lr}], self.weight_decay
        )
        yield weight.detach().clone(), bias.detach().clone()
        for _ in range(steps):
            with torch.enable_grad():
                # sum of per-task means: each task's head gets exactly its own gradient
                loss = per_task_cross_entropy(head_logits(z, weight, bias), y).sum()
                opt.zero_grad()
                loss.backward()
            opt.step()
            yield weight.detach().clone(), bias.detach().clone()

    def _fit_all(self, x: Tensor, y: Tensor, ways: int, steps: int) -> Iterator[Predictor]:
        """Yield predictors after 0 .. ``steps`` steps fine-tuning encoder copy and head."""
        encoder = self.encoder
        params = {k: v.detach().clone().requires_grad_() for k, v in encoder.named_parameters()}
        buffers = {k: v.detach().clone() for k, v in encoder.named_buffers()}

        def features(p: dict[str, Tensor], inputs: Tensor) -> Tensor:
            z = call(encoder, p, buffers, inputs)
            if z.shape[0] != inputs.shape[0]:
                raise ValueError(f"the encoder mapped {inputs.shape[0]} inputs to {tuple(z.shape)}")
            return z.flatten(1)

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
        encoder = self.encoder
        if uses_batch_statistics(encoder):
            # support and inputs normalised together, as in evaluate_batch: the head is fit
            # on support embeddings that depend on the inputs, so once per call
            def predict_episode(inputs: Tensor) -> Tensor:
                z_s, z_q = embed_episode(encoder, x, inputs)
                z_s = z_s.detach().flatten(1).unsqueeze(0)
                weight, bias = _last(self._fit_heads(z_s, y.unsqueeze(0), ways, steps))
                return z_q.flatten(1) @ weight[0].T + bias[0]

            return predict_episode
        with torch.no_grad():
            z = embed(encoder, x).flatten(1).unsqueeze(0)
        weight, bias = _last(self._fit_heads(z, y.unsqueeze(0), ways, steps))

        def predict(inputs: Tensor) -> Tensor:
            return embed(encoder, inputs).flatten(1) @ weight[0].T + bias[0]

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
            z_s, z_q = embed_batch(self.encoder, batch)
            z_s, z_q = z_s.flatten(2), z_q.flatten(2)
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
        )


# -- the feature-reuse seed experiment ---------------------------------------------------------


def feature_reuse_model() -> nn.Sequential:
    """``x in R^2 -> features: Linear(2, 1) -> head: Linear(1, 2)``: a one-unit bottleneck."""
    return nn.Sequential(OrderedDict(features=nn.Linear(2, 1), head=nn.Linear(1, 2)))


def feature_reuse_experiment(
    seed: int = 0,
    iterations: int = 150,
    meta_batch_size: int = 16,
    outer_lr: float = 0.01,
    angle_std: float = 5.0,
    shots: int = 20,
    queries: int = 100,
    inner_lr: float = 1.0,
    inner_steps: int = 5,
    test_steps: int = 10,
    head_steps: int = 200,
    head_lr: float = 0.1,
    test_tasks: int = 200,
    finetune_all_tasks: int = 20,
) -> dict[str, float]:
    """Feature reuse (frozen pretrained features + new head) vs MAML on a rotated task.

    Meta-training tasks are 2-D binary problems whose boundary is a line through the origin
    at ``90 +- angle_std`` degrees (nearly vertical: the label is essentially the sign of
    ``x_1``); the test task is the horizontal boundary (``angle = 0``: label = sign of
    ``x_2``).  Both learners use ``feature_reuse_model``: a feature layer
    ``f(x) = w . x + c`` with a single unit, then a linear head.

    * Feature reuse (``FineTuneBaseline(finetune="head")``): pretraining on the vertical
      tasks drives ``w`` to ``(+-r, ~0)``: the feature *is* the x-coordinate, and nothing in
      the training signal rewards keeping ``x_2``.  On the horizontal task the label is
      independent of ``x_1``, so any head on the frozen feature is at chance (about 50%),
      however long it is fitted.
    * MAML adapts every parameter, the feature layer included: the inner-loop gradient of
      the support loss with respect to ``w`` is ``mean_i (p_i - y_i) a x_i`` (``a`` the head's
      weight difference), whose ``x_2`` component is non-zero once the labels depend on
      ``x_2``; a few steps rotate ``w`` towards ``(0, 1)`` and accuracy goes above 90%.

    The bottleneck is what makes the contrast honest rather than an artefact: with a wide
    random feature layer, features trained on vertical boundaries would still carry ``x_2``
    and a refitted head would succeed; the experiment isolates the case where pretraining
    has collapsed the representation onto the directions its tasks needed.

    For contrast, ``finetune_all_horizontal`` fine-tunes the pretrained encoder together
    with the new head (on ``finetune_all_tasks`` tasks; it is a per-task loop): it also
    recovers, which locates the failure in *freezing* the features, not in pretraining.

    Both learners are trained for ``iterations`` Adam steps (``outer_lr``) on batches of
    ``meta_batch_size`` vertical tasks; the baseline through its ``meta_loss`` (plain
    classification on the pooled tasks), MAML through its second-order meta-loss with
    ``inner_steps`` steps at ``inner_lr`` (``test_steps`` at test time).  Returns accuracies
    (fractions) on ``test_tasks`` horizontal tasks (and on vertical ones as a sanity check),
    MAML's accuracy on horizontal tasks before adapting, and the pretrained feature
    direction's angle from the x axis in degrees.  Seeded by ``seed``; about 5 s on one CPU
    thread.
    """
    from metaloop.algorithms.maml import MAML
    from metaloop.tasks.synthetic import RotatingBoundary

    torch.manual_seed(seed)
    train_family = RotatingBoundary(shots, queries, angle_mean=90.0, angle_std=angle_std)
    horizontal = RotatingBoundary(shots, queries, angle_mean=0.0, angle_std=0.0)
    vertical = RotatingBoundary(shots, queries, angle_mean=90.0, angle_std=0.0)

    def train(learner: MetaLearner, offset: int) -> None:
        gen = torch.Generator().manual_seed(seed + offset)
        opt = torch.optim.Adam(learner.parameters(), lr=outer_lr)
        for _ in range(iterations):
            loss, _ = learner.meta_loss(train_family.sample(meta_batch_size, gen))
            opt.zero_grad()
            loss.backward()
            opt.step()

    def accuracy(
        learner: MetaLearner, family: RotatingBoundary, steps: int, tasks: int = test_tasks
    ) -> float:
        gen = torch.Generator().manual_seed(seed + 10_000)
        metrics = learner.evaluate_batch(family.sample(tasks, gen), steps=(steps,))
        return float(metrics[steps]["accuracy"].mean())

    baseline_model = feature_reuse_model()
    baseline = FineTuneBaseline(
        baseline_model.features,
        finetune="head",
        steps=head_steps,
        lr=head_lr,
        num_classes=2,
        embedding_dim=1,
    )
    train(baseline, 1)
    w = baseline_model.features.weight.detach()[0]
    angle = float(torch.rad2deg(torch.atan2(w[1].abs(), w[0].abs())))
    finetune_all = FineTuneBaseline(
        baseline_model.features, finetune="all", steps=head_steps, lr=head_lr
    )

    maml_model = feature_reuse_model()
    maml = MAML(
        maml_model,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        loss="cross_entropy",
        eval_steps=test_steps,
    )
    train(maml, 2)
    return {
        "frozen_features_horizontal": accuracy(baseline, horizontal, head_steps),
        "frozen_features_vertical": accuracy(baseline, vertical, head_steps),
        "finetune_all_horizontal": accuracy(
            finetune_all, horizontal, head_steps, finetune_all_tasks
        ),
        "maml_horizontal": accuracy(maml, horizontal, test_steps),
        "maml_horizontal_0_steps": accuracy(maml, horizontal, 0),
        "maml_vertical": accuracy(maml, vertical, test_steps),
        "feature_angle_degrees": angle,
    }
