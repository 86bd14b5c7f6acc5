"""Shared pieces of the metric-based learners (ProtoNet, Matching, Relation, Siamese).

A metric-based learner has no inner loop: it embeds a task's support and query examples
with a shared encoder ``f_phi`` and classifies each query by comparing its embedding with
the support embeddings.  Every such learner reduces to one function

    scores(z_support [T, S, ...], y_support [T, S], z_query [T, Q, ...], ways) -> [T, Q, ways]

and ``MetricMetaLearner`` turns it into the ``MetaLearner`` protocol:

* ``meta_loss(batch)``: ``loss(scores, y_query)`` over all queries of the batch, with
  ``scores`` computed from **one** forward pass of the encoder over every support and
  query example of every task (the task dimension is flattened into the batch);
* ``adapt(support)``: embeds the support set once and returns ``x -> scores[Q, ways]``;
* ``evaluate_batch(batch)``: per-task query loss and accuracy from one forward pass.

Optionally (``global_classes``, ``global_loss_weight``; offered by ``ProtoNet``) the
meta-loss adds an auxiliary **global classification** term: a linear head ``(W, b)`` over
all ``C`` meta-training classes scores every support and query embedding of the batch
against its dataset class ``c(x)`` (``episode_global_labels``),

    L = L_episode + lambda * (1 / N) sum_x CE(W f_phi(x) + b, c(x)),

the auxiliary co-training of Oreshkin et al. 2018 (TADAM); the head and its loss are in
``global_head.py``.  The head is used in training only; evaluation and ``adapt`` never
read it.

Metric learners take no inner steps: ``steps`` is accepted for protocol compatibility and
ignored (every requested step count reports the same numbers).

Note on batch norm: the single forward pass normalises support and query examples of the
whole meta-batch together when the encoder is in training mode (as the ProtoNet reference
code does for one episode); in ``eval()`` mode the running statistics are used.

Labels are integers ``0 .. ways-1``; ``ways`` is read from ``batch.ways`` or, when that is
``None``, from the largest support label, so one learner trains on 60-way episodes and
tests on 5-way ones.  Every class must have at least one support example in every task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.base import MetaLearner, Predictor, StepMetrics, as_support
from metaloop.algorithms.global_head import (
    global_classification_loss,
    make_global_head,
)
from metaloop.data.transforms import shift_views, translate
from metaloop.functional.assignment import balance_log_probs
from metaloop.functional.losses import LossFn
from metaloop.functional.params import call
from metaloop.functional.speed import autocast_context, autocast_dtype, uses_batch_statistics
from metaloop.models.heads import CosineClassifier
from metaloop.tasks.base import Task, TaskBatch, TaskError
from metaloop.tasks.registry import TaskSpec
from metaloop.validate import is_int

# -- distances ---------------------------------------------------------------------------


def squared_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """``d[..., i, j] = ||a[..., i, :] - b[..., j, :]||^2``, ``a [..., N, D]``, ``b [..., M, D]``.

    Computed as ``||a||^2 - 2 a.b + ||b||^2`` (one batched matmul), clamped at zero.
    """
    a2 = (a * a).sum(-1, keepdim=True)
    b2 = (b * b).sum(-1).unsqueeze(-2)
    return (a2 - 2.0 * a @ b.transpose(-1, -2) + b2).clamp_min(0.0)


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``c[..., i, j] = a_i . b_j / (||a_i|| ||b_j||)`` for ``a [..., N, D]``, ``b [..., M, D]``."""
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return a @ b.transpose(-1, -2)


def euclidean(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """``||a_i - b_j||`` with a gradient that stays finite at zero distance."""
    return squared_euclidean(a, b).clamp_min(eps).sqrt()


# -- labels ------------------------------------------------------------------------------


def infer_ways(support_y: Tensor, ways: int | None = None) -> int:
    """``ways`` if given, else ``max(support_y) + 1``."""
    if ways is not None:
        return int(ways)
    if support_y.numel() == 0:
        raise TaskError("cannot infer the number of ways from an empty support set")
    return int(support_y.max()) + 1


def check_labels(support_y: Tensor, query_y: Tensor | None, ways: int) -> None:
    """Raise ``TaskError`` unless labels are integers in ``0..ways-1`` and every class has
    at least one support example in every task.  ``support_y [T, S]``, ``query_y [T, Q]``.
    """
    for name, y in (("support_y", support_y), ("query_y", query_y)):
        if y is None:
            continue
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TaskError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= ways):
            raise TaskError(
                f"{name} labels must lie in 0..{ways - 1} for a {ways}-way task, found range "
                f"{int(y.min())}..{int(y.max())}"
            )
    counts = F.one_hot(support_y, ways).sum(-2)  # [T, ways]
    missing = (counts == 0).nonzero()
    if missing.numel():
        task, cls = (int(v) for v in missing[0])
        raise TaskError(
            f"class {cls} has no support examples in task {task} ({missing.shape[0]} empty "
            f"(task, class) pairs in all); every class 0..{ways - 1} needs at least one "
            "support example"
        )


def one_hot(labels: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    return F.one_hot(labels, ways).to(dtype)


def class_means(z: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Per-class mean of embeddings: ``z [T, S, D]``, ``labels [T, S]`` -> ``[T, ways, D]``.

    ``c_k = (1/|S_k|) sum_{i: y_i = k} z_i`` (ProtoNet's prototypes).
    """
    return class_sums(z, labels, ways, mean=True)


def class_sums(z: Tensor, labels: Tensor, ways: int, mean: bool = False) -> Tensor:
    """Per-class sum (or mean) of embeddings of any trailing shape: ``z [T, S, *F]`` ->
    ``[T, ways, *F]``.
    """
    onehot = one_hot(labels, ways, z.dtype)  # [T, S, ways]
    if mean:
        onehot = onehot / onehot.sum(1, keepdim=True).clamp_min(1.0)
    flat = z.reshape(*z.shape[:2], -1)
    out = onehot.transpose(1, 2) @ flat
    return out.reshape(z.shape[0], ways, *z.shape[2:])


def check_transductive_steps(steps: object) -> int:
    """``steps`` if it is a valid number of soft k-means refinements (an int >= 0)."""
    if not is_int(steps) or steps < 0:
        raise ValueError(
            f"transductive_steps must be an integer >= 0 (0 turns it off), got {steps!r}"
        )
    return steps


def check_transductive_balance(balance: object, steps: int) -> bool:
    """``balance`` if it is a bool and, when true, there are refinement steps to balance."""
    if not isinstance(balance, bool):
        raise ValueError(f"transductive_balance must be true or false, got {balance!r}")
    if balance and steps == 0:
        raise ValueError(
            "transductive_balance balances the soft k-means weights, so it needs "
            "transductive_steps >= 1 (got 0); for balanced final predictions use "
            "metaloop.evaluation.BalancedAssignment (eval --balanced)"
        )
    return balance


def soft_kmeans_step(
    prototypes: Tensor,
    z_support: Tensor,
    y_support: Tensor,
    z_query: Tensor,
    logits: Callable[[Tensor, Tensor], Tensor],
    balanced: bool = False,
) -> Tensor:
    """One soft k-means refinement of prototypes by unlabelled queries (Ren et al., 2018):

        w_jk = softmax_k(logits(z_j, c)),
        c_k <- (sum_{i: y_i = k} z_i + sum_j w_jk z_j) / (|S_k| + sum_j w_jk).

    With ``balanced`` the weights are instead the Sinkhorn-balanced assignment of the
    queries (``metaloop.functional.assignment``: rows sum to 1, every class receives
    ``Q / ways`` of the query mass), the k-means step of PT-MAP (Hu et al., 2021); it
    assumes the queries are spread evenly over the classes.

    ``prototypes [T, ways, D]``, ``z_support [T, S, D]``, ``y_support [T, S]``,
    ``z_query [T, Q, D]``; ``logits(z_query, prototypes) -> [T, Q, ways]``.
    """
    ways = prototypes.shape[1]
    scores = logits(z_query, prototypes)
    w = balance_log_probs(scores).exp() if balanced else scores.softmax(-1)  # [T, Q, ways]
    total = class_sums(z_support, y_support, ways) + w.transpose(1, 2) @ z_query
    count = one_hot(y_support, ways, w.dtype).sum(1) + w.sum(1)  # [T, ways]
    return total / count.unsqueeze(-1)


# -- embedding ---------------------------------------------------------------------------


def _check_images(example_shape: torch.Size) -> None:
    if len(example_shape) != 3:
        raise TaskError(
            "test-time shift translates images: examples must be [C, H, W], got shape "
            f"{tuple(example_shape)}"
        )


def embed(encoder: nn.Module, x: Tensor, test_time_shift: int = 0) -> Tensor:
    """``encoder(x)`` with a clear error when the output does not have one row per input;
    with ``test_time_shift`` the mean over translated views (see ``embed_batch``)."""
    if test_time_shift:
        _check_images(x.shape[1:])
        views = shift_views(test_time_shift)
        return torch.stack([embed(encoder, translate(x, dx, dy)) for dx, dy in views]).mean(0)
    z = encoder(x)
    if not isinstance(z, Tensor) or z.dim() < 2 or z.shape[0] != x.shape[0]:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(
            f"the encoder must map {x.shape[0]} inputs of shape {tuple(x.shape[1:])} to "
            f"[{x.shape[0]}, ...] embeddings, got {shape}"
        )
    return z


def encoder_embedding(
    encoder: nn.Module,
    x: Tensor,
    params: Mapping[str, Tensor] | None = None,
    test_time_shift: int = 0,
) -> Tensor:
    """``f_phi(x)`` of ``encoder`` (``embed``), with ``params`` in place of the encoder's
    own parameters of those names when given (``MetaLearner.embed``).  A name the encoder
    does not have is an error naming it."""
    if params is None:
        return embed(encoder, x, test_time_shift)
    own = dict(encoder.named_parameters())
    unknown = sorted(set(params) - set(own))
    if unknown:
        raise ValueError(
            f"{type(encoder).__name__} has no parameter {unknown[0]!r}; its parameters are: "
            f"{', '.join(own)}"
        )
    buffers = dict(encoder.named_buffers())

    def substituted(inputs: Tensor) -> Tensor:
        return call(encoder, params, buffers, inputs)

    return embed(substituted, x, test_time_shift)  # type: ignore[arg-type]


def _check_same_features(support_shape: torch.Size, query_shape: torch.Size) -> None:
    if support_shape != query_shape:
        raise TaskError(
            f"support and query features differ in shape: {tuple(support_shape)} vs "
            f"{tuple(query_shape)}"
        )


def embed_episode(
    encoder: nn.Module, support_x: Tensor, query_x: Tensor, test_time_shift: int = 0
) -> tuple[Tensor, Tensor]:
    """``(z_support, z_query)`` of one episode from one forward pass over both sets.

    With batch-statistics normalisation (``batch_episode``) every embedding is then
    normalised with the statistics of its own episode, support and query together: the
    convention of training (``meta_loss``), evaluation (``embed_batch``) and ``adapt``.
    """
    _check_same_features(support_x.shape[1:], query_x.shape[1:])
    z = embed(encoder, torch.cat([support_x, query_x]), test_time_shift)
    return z[: support_x.shape[0]], z[support_x.shape[0] :]


def embed_batch(
    encoder: nn.Module, batch: TaskBatch, test_time_shift: int = 0
) -> tuple[Tensor, Tensor]:
    """Embed all support and query examples of a batch.

    Returns ``z_support [T, S, *E]`` and ``z_query [T, Q, *E]`` where ``E`` is the
    encoder's output shape per example (a vector or a feature map).  One forward pass for
    the whole batch when the encoder treats inputs independently; one per episode
    (``embed_episode``) when it normalises with batch statistics, so that no episode's
    embeddings depend on the other episodes of the batch.

    ``test_time_shift = s > 0`` (images only) averages the embeddings of the
    ``(2s + 1)^2`` translations of every image by up to ``s`` pixels per axis,
    ``z(x) = mean_{(dx, dy)} f(translate(x, dx, dy))``, one forward pass per translation
    (test-time augmentation; the border is filled with 0, Omniglot's background).
    """
    sx, qx = batch.support_x, batch.query_x
    t, s, q = sx.shape[0], sx.shape[1], qx.shape[1]
    _check_same_features(sx.shape[2:], qx.shape[2:])
    if t > 1 and uses_batch_statistics(encoder):
        pairs = [embed_episode(encoder, sx[i], qx[i], test_time_shift) for i in range(t)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    x = torch.cat([sx.reshape(t * s, *sx.shape[2:]), qx.reshape(t * q, *qx.shape[2:])])
    z = embed(encoder, x, test_time_shift)
    return z[: t * s].reshape(t, s, *z.shape[1:]), z[t * s :].reshape(t, q, *z.shape[1:])


# -- the shared learner shell --------------------------------------------------------------


class MetricMetaLearner(MetaLearner):
    """``MetaLearner`` shell for learners defined by ``scores(z_s, y_s, z_q, ways)``.

    Subclasses implement ``scores``; ``loss`` is applied as ``loss(scores[N, ways],
    labels[N])`` (cross-entropy on logits by default).  ``channels_last=True`` lays the
    encoder's 4-D weights out channels-last (identical numbers up to float rounding; faster
    convolutions on the CPU, see docs/performance.md).  ``autocast="bfloat16"`` runs the
    encoder of ``meta_loss`` under ``torch.autocast`` (mixed precision: convolutions in
    bfloat16, parameters, gradients and the distances and loss in float32); 2.4x faster
    per meta-training step on CPUs with AMX (docs/performance.md).  Evaluation and ``adapt``
    stay in float32, so reported figures are those of the float32 network.
    """

    default_eval_steps: tuple[int, ...] = (0,)
    #: the encoder is a feature extractor (never a classifier with a ``ways`` head)
    model_role = "embedding"
    #: ``test_time_shift`` averages embeddings over translated views (``embed_batch``)
    shifts_embeddings = True

    @classmethod
    def config_defaults(
        cls, spec: TaskSpec, model: nn.Module, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Nothing from the family: a metric learner's loss is part of the method (e.g.
        the Relation Network's MSE on relation scores), not the family's."""
        return {}

    #: test-time augmentation in ``evaluate_batch`` and ``adapt``: embeddings averaged over
    #: translations by up to this many pixels per axis (0: off; see ``embed_batch``)
    test_time_shift: int = 0

    def __init__(
        self,
        encoder: nn.Module,
        loss: str | LossFn = "cross_entropy",
        channels_last: bool = False,
        autocast: str | torch.dtype | None = None,
    ) -> None:
        super().__init__(loss)
        self.autocast_dtype = autocast_dtype(autocast)
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        if channels_last:
            # 4-D weights restrided channels-last: convolutions then run (and return) that
            # layout whatever the input's, oneDNN's fast path on the CPU (1.3x here)
            encoder.to(memory_format=torch.channels_last)
        self.encoder = encoder
        self.classification = True
        #: auxiliary global-classification head (module docstring); set by subclasses
        self.global_head: nn.Linear | CosineClassifier | None = None
        self.global_loss_weight = 0.0

    def _init_global_head(
        self,
        global_classes: object,
        global_loss_weight: object,
        classifier: str = "linear",
        scale: float = 10.0,
        margin: float = 0.0,
    ) -> None:
        """Set ``global_head`` and ``global_loss_weight`` (``global_head.make_global_head``)."""
        dim = getattr(self.encoder, "embedding_dim", None)
        self.global_head, self.global_loss_weight = make_global_head(
            global_classes, global_loss_weight, dim, classifier, scale, margin
        )

    def global_loss(self, batch: TaskBatch, z_support: Tensor, z_query: Tensor) -> Tensor:
        """``(1/N) sum_x CE(W f(x) + b, c(x))`` over every support and query embedding."""
        assert self.global_head is not None
        return global_classification_loss(self.global_head, batch, z_support, z_query)

    def scores(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        """Class scores ``[T, Q, ways]`` of each query (higher is more likely)."""
        raise NotImplementedError

    def episode_scores(self, batch: TaskBatch, test_time_shift: int = 0) -> tuple[Tensor, int]:
        """Scores ``[T, Q, ways]`` for every query of a batch (one encoder forward, or one
        per translated view with ``test_time_shift``)."""
        ways = infer_ways(batch.support_y, batch.ways)
        check_labels(batch.support_y, batch.query_y, ways)
        z_s, z_q = embed_batch(self.encoder, batch, test_time_shift)
        return self.scores(z_s, batch.support_y, z_q, ways), ways

    def per_task_metrics(self, scores: Tensor, query_y: Tensor) -> dict[str, Tensor]:
        """Per-task query loss and accuracy, shape ``[T]`` each."""
        losses = torch.stack([self.loss_fn(s, y) for s, y in zip(scores, query_y)])
        acc = (scores.argmax(-1) == query_y).to(scores.dtype).mean(-1)
        return {"loss": losses, "accuracy": acc}

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """``loss(scores, y_query)`` averaged over every query of the batch, plus
        ``global_loss_weight`` times the global classification loss when enabled."""
        ways = infer_ways(batch.support_y, batch.ways)
        check_labels(batch.support_y, batch.query_y, ways)
        with autocast_context(self.autocast_dtype, batch.support_x):
            z_s, z_q = embed_batch(self.encoder, batch)
        if self.autocast_dtype is not None:  # distances and loss in float32
            z_s, z_q = z_s.float(), z_q.float()
        scores = self.scores(z_s, batch.support_y, z_q, ways)
        query_loss = self.loss_fn(scores.flatten(0, 1), batch.query_y.flatten())
        acc = (scores.argmax(-1) == batch.query_y).float().mean()
        metrics = {"query_loss": float(query_loss.detach()), "accuracy": float(acc)}
        loss = query_loss
        if self.global_head is not None and self.global_loss_weight > 0:
            global_loss = self.global_loss(batch, z_s, z_q)
            loss = loss + self.global_loss_weight * global_loss
            metrics["global_loss"] = float(global_loss.detach())
        return loss, {"loss": float(loss.detach()), **metrics}

    def embed(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``z = f_phi(x)``, the encoder's output ``[N, *E]`` (a vector or, for the Relation
        Network, a feature map per input), averaged over translated views when
        ``test_time_shift`` is set; ``params`` replaces encoder parameters by name.  The
        Matching Network's full-context embedding depends on the episode and is not
        applied: this is its per-example encoder.  With per-episode batch statistics
        (``norm = "batch_episode"``) the rows of ``x`` are normalised together."""
        return encoder_embedding(self.encoder, x, params, self.test_time_shift)

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        """The predictor maps ``x [Q, ...]`` to ``[Q, ways]`` scores.  ``steps`` is ignored
        (no inner loop).  The support is embedded once, or, when the encoder normalises with
        batch statistics, together with each ``x`` (``embed_episode``: the predictions are
        then exactly those of ``evaluate_batch`` on the episode).  Support embeddings are
        detached: the predictor is for inference, training goes through ``meta_loss``.
        """
        x, y = as_support(support)
        if x.shape[0] != y.shape[0]:
            raise TaskError(f"support has {x.shape[0]} inputs but {y.shape[0]} labels")
        ways = infer_ways(y)
        y = y.unsqueeze(0)
        check_labels(y, None, ways)
        shift = self.test_time_shift
        per_episode = uses_batch_statistics(self.encoder)
        z_fixed = None if per_episode else embed(self.encoder, x, shift).detach()

        def predict(inputs: Tensor) -> Tensor:
            if z_fixed is None:
                z_s, z_q = embed_episode(self.encoder, x, inputs, shift)
                z_s = z_s.detach()
            else:
                z_s, z_q = z_fixed, embed(self.encoder, inputs, shift)
            return self.scores(z_s.unsqueeze(0), y, z_q.unsqueeze(0), ways)[0]

        return predict

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """Per-task query metrics ``{s: {"loss": [T], "accuracy": [T]}}``; identical for every
        requested ``s`` since metric learners take no inner steps."""
        steps = tuple(steps) if steps is not None else self.default_eval_steps
        if any(s < 0 for s in steps):
            raise ValueError(f"evaluation step counts must be >= 0, got {steps}")
        scores, _ = self.episode_scores(batch, self.test_time_shift)
        metrics = self.per_task_metrics(scores, batch.query_y)
        return {s: dict(metrics) for s in steps}

    @torch.no_grad()
    def query_log_probs(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        """The whole batch scored once with one encoder pass (``episode_scores``, the
        numbers ``evaluate_batch`` reports), the same tensor serving every step count."""
        scores, _ = self.episode_scores(batch, self.test_time_shift)
        return dict.fromkeys(steps, F.log_softmax(scores, -1))
