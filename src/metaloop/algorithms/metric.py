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

The distances, label checks, per-class means and soft k-means step are in
``metric_ops.py``, the embedding of support and query sets (``embed_batch``,
``embed_episode``) in ``metric_embedding.py``; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.base import MetaLearner, Predictor, StepMetrics, as_support
from metaloop.algorithms.global_head import (
    global_classification_loss,
    make_global_head,
)
from metaloop.algorithms.metric_embedding import (
    embed,
    embed_batch,
    embed_episode,
    encoder_embedding,
)
from metaloop.algorithms.metric_ops import (
    check_labels,
    check_transductive_balance,
    check_transductive_steps,
    class_means,
    class_sums,
    cosine_similarity,
    euclidean,
    infer_ways,
    one_hot,
    soft_kmeans_step,
    squared_euclidean,
)
from metaloop.functional.losses import LossFn
from metaloop.functional.speed import autocast_context, autocast_dtype, uses_batch_statistics
from metaloop.models.heads import CosineClassifier
from metaloop.tasks.base import Task, TaskBatch, TaskError
from metaloop.tasks.registry import TaskSpec

__all__ = [
    "MetricMetaLearner",
    "check_labels",
    "check_transductive_balance",
    "check_transductive_steps",
    "class_means",
    "class_sums",
    "cosine_similarity",
    "embed",
    "embed_batch",
    "embed_episode",
    "encoder_embedding",
    "euclidean",
    "infer_ways",
    "one_hot",
    "soft_kmeans_step",
    "squared_euclidean",
]


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
