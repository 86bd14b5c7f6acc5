"""The one protocol every algorithm speaks, in two layers.

``Adaptable`` is what evaluation, ensembles, diagnostics and the CLI call on a trained
learner, each with a default:

* ``adapt(support, steps)``: a predictor specialised to one task's support set;
* ``evaluate_batch(batch, steps)``: per-task query metrics after each step count (default:
  ``adapt`` task by task, then ``task_metrics``);
* ``query_log_probs(batch, steps)``: ``{steps: [T, Q, ways]}`` query log-probabilities
  of a classifier (default: ``adapt`` task by task);
* ``task_metrics(predictor, task)`` / ``query_metrics(prediction, target)``: the scoring;
* ``check_batch(batch)``: a one-line error when the model does not fit the task;
* the attributes ``default_eval_steps``, ``loss_name``, ``loss_fn``, ``classification``,
  ``adapts_by_steps``, ``first_order`` and ``shifts_embeddings`` / ``test_time_shift``.

``MetaLearner`` adds what training and building need: ``meta_loss(batch)``, a scalar whose
gradient with respect to ``self.parameters()`` is the meta-gradient for a batch of tasks
(plus metrics as plain floats), ``embed(x, params=None)``, the task-independent embedding
that pair verification scores (raising ``NoEmbeddingError`` for learners without one), and
the class's declarations for the CLI (``model_role``, ``config_defaults``,
``needs_training_classes``).  Evaluation wrappers (test-time shift,
balanced assignment, ensembles, adversarial queries) are ``Adaptable`` only: they have no
``meta_loss``.

The trainer, evaluation, diagnostics, benchmarks and distributed training only ever use
this protocol, so they never know which algorithm they run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from metaloop.functional.losses import LossFn, accuracy, get_loss, is_classification
from metaloop.tasks.base import Task, TaskBatch, TaskError
from metaloop.tasks.registry import TaskSpec

Predictor = Callable[[Tensor], Tensor]
StepMetrics = dict[int, dict[str, Tensor]]


def as_support(support: Task | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    if isinstance(support, Task):
        return support.support
    x, y = support
    return x, y


def constructor_accepts(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword ``name``: declared by its ``__init__`` or by
    a base class's ``__init__`` reached through ``**kwargs``."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        if name in params and params[name].kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


class OutputShapeError(TaskError):
    """The model's predictions do not fit the task's targets (output size vs ways/targets)."""


class NoEmbeddingError(ValueError):
    """``MetaLearner.embed`` of a learner that has no task-independent embedding."""


def check_prediction(
    prediction: Tensor,
    target: Tensor,
    *,
    classification: bool,
    ways: int | None = None,
    loss_name: str = "mse",
) -> None:
    """Raise ``OutputShapeError`` when predictions cannot be scored against ``target``.

    Cross-entropy needs ``prediction [..., C]`` for labels ``[...]`` with ``C == ways``
    (the labels' range when ``ways`` is unknown); MSE needs identical shapes (it would
    silently broadcast otherwise).  Other (custom) losses are not checked.
    """
    pred_shape, target_shape = tuple(prediction.shape), tuple(target.shape)
    if classification:
        if pred_shape[:-1] != target_shape:
            raise OutputShapeError(
                f"the model's output has shape {pred_shape} but cross-entropy needs "
                f"{target_shape} + (ways,) for labels of shape {target_shape}"
            )
        outputs = pred_shape[-1]
        if ways is not None and outputs != ways:
            raise OutputShapeError(
                f"the model outputs {outputs} class scores but the task is {ways}-way: "
                f"the model's output size must equal ways ({ways})"
            )
        if ways is None and target.numel() and int(target.max()) >= outputs:
            raise OutputShapeError(
                f"the model outputs {outputs} class scores but the labels go up to "
                f"{int(target.max())}: the output size must exceed every label"
            )
    elif loss_name == "mse" and pred_shape != target_shape:
        raise OutputShapeError(
            f"the model's predictions have shape {pred_shape} but the targets have shape "
            f"{target_shape}; MSE needs equal shapes (set the model's output size to match)"
        )


class Adaptable(nn.Module):
    """What consumers call on a trained learner (module docstring); holds the task loss
    and the default evaluation through ``adapt``."""

    #: step counts at which ``evaluate_batch`` reports by default
    default_eval_steps: tuple[int, ...] = (0,)
    #: ``adapt``'s ``steps`` are inner optimisation steps, so metrics change with them
    #: (an adaptation curve over step counts means something); ``False``: adaptation has
    #: no step count (metric learners, the CNP) and every step count scores alike
    adapts_by_steps: ClassVar[bool] = False
    #: the first-/second-order switch of learners that have one (settable: diagnostics
    #: compare both meta-gradients), ``None`` for the others
    first_order: bool | None = None
    #: ``True``: setting ``test_time_shift = s`` makes the learner average its embeddings
    #: over translations by up to ``s`` pixels itself; ``False``: consumers wrap it in
    #: ``metaloop.evaluation.ShiftAveraged`` (predictions averaged) instead
    shifts_embeddings: ClassVar[bool] = False
    test_time_shift: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Put the API's input checks (``algorithms.validation``) in front of the subclass's
        own ``adapt``, ``meta_loss``, ``evaluate_batch`` and ``query_log_probs``."""
        super().__init_subclass__(**kwargs)
        from metaloop.algorithms.validation import wrap_learner_class

        wrap_learner_class(cls)

    def __init__(self, loss: str | LossFn = "mse") -> None:
        super().__init__()
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)
        self.classification = is_classification(loss)

    def adapt(self, support: Task | tuple[Tensor, Tensor], steps: int | None = None) -> Predictor:
        raise NotImplementedError

    def check_batch(self, batch: TaskBatch) -> None:
        """Check on the first task of ``batch`` that the model fits the task.

        Adapts with zero steps (in eval mode, with torch's RNG state restored afterwards so
        that the check never changes a seeded run) and checks the query predictions with
        ``check_prediction``.  A model that cannot take the task's inputs raises
        ``OutputShapeError`` naming the shapes.  Learners without ``adapt`` are not checked.
        """
        task = batch[0]
        was_training = self.training
        rng = torch.get_rng_state()
        self.eval()
        try:
            with torch.enable_grad():
                predictor = self.adapt(task.support, steps=0)
            with torch.no_grad():
                prediction = predictor(task.query_x)
        except NotImplementedError:
            return
        except RuntimeError as err:
            raise OutputShapeError(
                f"the model cannot process this task (support_x {tuple(task.support_x.shape)}, "
                f"query_x {tuple(task.query_x.shape)}): {err}".splitlines()[0]
            ) from err
        finally:
            self.train(was_training)
            torch.set_rng_state(rng)
        if isinstance(prediction, Tensor):
            check_prediction(
                prediction,
                task.query_y,
                classification=self.classification,
                ways=batch.ways,
                loss_name=self.loss_name,
            )

    def query_metrics(self, prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Loss (and accuracy for classification) of a prediction on a query set."""
        metrics = {"loss": self.loss_fn(prediction, target)}
        if self.classification:
            metrics["accuracy"] = accuracy(prediction, target)
        return metrics

    def task_metrics(self, predictor: Predictor, task: Task) -> dict[str, Tensor]:
        """Query metrics of one adapted task (``evaluate_batch``'s scoring; evaluation
        wrappers override it to change what the queries are)."""
        return self.query_metrics(predictor(task.query_x), task.query_y)

    @torch.no_grad()
    def evaluate_batch(self, batch: TaskBatch, steps: Sequence[int] | None = None) -> StepMetrics:
        """Per-task query metrics after adapting with each step count in ``steps``.

        Returns ``{steps: {"loss": Tensor[T], "accuracy": Tensor[T]?}}``.
        """
        steps = tuple(steps) if steps is not None else self.default_eval_steps
        out: StepMetrics = {}
        for s in steps:
            per_task: dict[str, list[Tensor]] = {}
            for task in batch:
                with torch.enable_grad():
                    predictor = self.adapt(task.support, steps=s)
                metrics = self.task_metrics(predictor, task)
                for k, v in metrics.items():
                    per_task.setdefault(k, []).append(v.detach())
            out[s] = {k: torch.stack(v) for k, v in per_task.items()}
        return out

    def query_log_probs(self, batch: TaskBatch, steps: Sequence[int]) -> dict[int, Tensor]:
        """``{s: [T, Q, ways]}``: log-softmax of every query's class scores after adapting
        with ``s`` steps, for each ``s`` in ``steps`` (a classifier's predictive
        distribution, what ensembles average and balanced assignment rebalances).

        The default adapts task by task; learners that score a whole batch at once (the
        metric learners) override it.
        """
        out: dict[int, Tensor] = {}
        for s in steps:
            rows = []
            for task in batch:
                with torch.enable_grad():
                    predictor = self.adapt(task.support, steps=s)
                rows.append(torch.log_softmax(predictor(task.query_x).detach(), -1))
            out[s] = torch.stack(rows)
        return out

    def extra_repr(self) -> str:
        return f"loss={self.loss_name}"


class MetaLearner(Adaptable):
    """A trainable learner: ``Adaptable`` plus ``meta_loss`` and the declarations the CLI
    builds it from."""

    #: what the model handed to the constructor is, for the CLI's model defaults:
    #: ``"classifier"``: it outputs the task's predictions (``spec.y_dim`` outputs: the
    #: ``ways`` class scores, or the targets); ``"embedding"``: a feature extractor with no
    #: task head (the learner compares, decodes or classifies its features itself).
    model_role: ClassVar[Literal["classifier", "embedding"]] = "classifier"

    @classmethod
    def config_defaults(
        cls, spec: TaskSpec, model: nn.Module, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Constructor keyword defaults this learner derives from the task family.

        ``spec`` is the family's ``TaskSpec``, ``model`` the model already built, and
        ``options`` the ``[algorithm]`` keys the config gives (they override whatever
        this returns).  The default gives ``loss = spec.loss`` (cross-entropy for
        classification families, else MSE) when the constructor takes a ``loss``.
        """
        return {"loss": spec.loss} if constructor_accepts(cls, "loss") else {}

    @classmethod
    def model_spec(cls, spec: TaskSpec, options: Mapping[str, Any]) -> TaskSpec:
        """The spec the model is sized from (the CLI's model defaults): the family's, unless
        the learner changes what the model sees (CAVIA appends its context to the input)."""
        return spec

    @classmethod
    def needs_training_classes(cls, options: Mapping[str, Any]) -> bool:
        """Whether ``config_defaults`` reads ``spec.num_classes`` for these ``[algorithm]``
        keys: the CLI then hands it the spec of the loaded training family (the one the
        command builds anyway; ``metaloop eval`` builds it for this)."""
        return False

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """``(L, metrics)``: ``L`` a scalar whose gradient with respect to
        ``self.parameters()`` is the meta-gradient of ``batch``, metrics plain floats."""
        raise NotImplementedError

    def embed(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """The learner's embedding ``z = f_phi(x)``, ``[N, ...]`` for inputs ``x [N, ...]``,
        one row per input and independent of any task (what pair verification scores,
        ``s(a, b) = -||f(a) - f(b)||^2``, and what embedding diagnostics read).

        ``params`` (optional) replaces the embedding network's parameters by name, as
        ``named_parameters()`` of that network spells them (an adapted copy, say); ``None``
        uses the learner's own.  Metric learners return their encoder's output, the
        fine-tuning baseline its encoder's, gradient-based learners the features before
        the model's head.  Learners without a task-independent embedding raise
        ``NoEmbeddingError`` (a ``ValueError``) naming themselves.
        """
        raise NoEmbeddingError(
            f"{type(self).__name__} has no task-independent embedding: use a metric learner "
            "(protonet, matching, siamese, relation), the fine-tune baseline, or a "
            "gradient-based learner whose model has `features` before its head (conv4, resnet12)"
        )


def encoder_io_defaults(spec: TaskSpec, model: nn.Module) -> dict[str, Any]:
    """``config_defaults`` of learners that read ``(x, y)`` pairs through an encoder (the
    CNP, the sequence learners): ``x_dim`` is the encoder's ``embedding_dim``, else the
    family's flattened input size; ``y_dim`` the family's outputs (``ways`` for
    classification); ``loss`` the family's."""
    x_dim = getattr(model, "embedding_dim", None) or spec.x_dim
    return {"loss": spec.loss, "x_dim": x_dim, "y_dim": spec.y_dim}
