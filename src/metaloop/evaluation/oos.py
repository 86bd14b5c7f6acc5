"""Out-of-scope rejection: a learner that can say "none of these".

Evaluation episodes carry, besides the in-scope query set, ``m`` out-of-scope queries per
episode in ``batch.info["oos_x"]`` (``metaloop.data.text.TextEpisodicFamily`` with
``oos_queries = m``; CLINC150's ``oos_val`` utterances for validation episodes and
``oos_test`` for test episodes).  Any learner is adapted on the support set as usual; its
predictor's scores ``s_k(x)`` (logits) for a query give a confidence

* ``"max_probability"``: ``c(x) = max_k softmax(s(x))_k`` (Hendrycks and Gimpel's
  baseline, the score of Larson et al.'s CLINC150 paper), or
* ``"max_logit"``: ``c(x) = max_k s_k(x)``; for ProtoNet that is the negative distance to
  the nearest prototype, ``-min_k d(f(x), c_k) / tau``.

The learner **abstains** (predicts out-of-scope) when ``c(x) < threshold``
(``with_rejection``).  Reported, per episode then mean +- 95% CI over episodes:

* in-scope accuracy: the share of in-scope queries accepted *and* classified correctly
  (a rejected in-scope query counts as an error, as in CLINC150's protocol);
* out-of-scope recall: the share of out-of-scope queries rejected;
* AUROC: the probability that a random in-scope query gets a higher confidence than a
  random out-of-scope one (ties count 1/2; threshold-free), ``P(c(x_in) > c(x_oos))``;
* closed-set accuracy: accuracy on the in-scope queries without rejection (reference).

The threshold is chosen on **validation episodes only** (``choose_threshold``): the one
maximising ``(in-scope accuracy + out-of-scope recall) / 2`` over the validation queries
pooled, searched over every observed confidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from metaloop.algorithms.base import MetaLearner, Predictor
from metaloop.evaluation.evaluate import Estimate, estimate, evaluation_batches
from metaloop.tasks.base import TaskError, TaskFamily

SCORES = ("max_probability", "max_logit")
OOS_KEY = "oos_x"


def confidence(logits: Tensor, score: str = "max_probability") -> Tensor:
    """``c(x)`` per row of ``logits [..., ways]`` (module docstring)."""
    if score == "max_probability":
        return logits.float().softmax(-1).amax(-1)
    if score == "max_logit":
        return logits.float().amax(-1)
    raise ValueError(f"unknown out-of-scope score {score!r}; choose one of {', '.join(SCORES)}")


def with_rejection(
    predictor: Predictor, threshold: float, score: str = "max_probability"
) -> Callable[[Tensor], Tensor]:
    """A predictor of labels that abstains: ``argmax_k s_k(x)``, or ``-1`` (out of scope)
    where ``c(x) < threshold``."""
    confidence(torch.zeros(1, 2), score)  # validates the score name now

    def predict(x: Tensor) -> Tensor:
        logits = predictor(x)
        labels = logits.argmax(-1)
        return torch.where(confidence(logits, score) < threshold, -1, labels)

    return predict


def auroc(positive: Tensor, negative: Tensor) -> Tensor:
    """``P(positive > negative) + P(tie) / 2`` (Mann-Whitney), over all pairs."""
    if positive.numel() == 0 or negative.numel() == 0:
        raise ValueError("AUROC needs at least one in-scope and one out-of-scope score")
    p = positive.double().reshape(-1, 1)
    n = negative.double().reshape(1, -1)
    return (p > n).double().mean() + 0.5 * (p == n).double().mean()


@dataclass
class OOSScores:
    """Per-episode confidences: in-scope ``[E, Q]`` with whether the closed-set prediction
    was right ``[E, Q]``, out-of-scope ``[E, M]``."""

    in_scope: Tensor
    correct: Tensor
    out_of_scope: Tensor

    def rates(self, threshold: float) -> tuple[Tensor, Tensor]:
        """Per-episode (in-scope accuracy, out-of-scope recall) at ``threshold``."""
        accepted = self.in_scope >= threshold
        in_acc = (accepted & self.correct).double().mean(-1)
        recall = (self.out_of_scope < threshold).double().mean(-1)
        return in_acc, recall


def collect_scores(
    learner: MetaLearner,
    family: TaskFamily,
    episodes: int,
    seed: int,
    *,
    score: str = "max_probability",
    steps: int | None = None,
    batch_size: int = 25,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> OOSScores:
    """Adapt ``learner`` on ``episodes`` episodes of ``family`` (which must put out-of-scope
    queries in ``info["oos_x"]``) and score every in-scope and out-of-scope query."""
    confidence(torch.zeros(1, 2), score)
    ins, correct, outs = [], [], []
    batches = evaluation_batches(learner, family, episodes, seed, batch_size, device, progress)
    for batch in batches:
        if OOS_KEY not in (batch.info or {}):
            raise TaskError(
                "out-of-scope evaluation needs episodes with out-of-scope queries in "
                f"info[{OOS_KEY!r}] (a text family built with oos_queries > 0)"
            )
        for task in batch:
            with torch.enable_grad():
                predictor = learner.adapt(task.support, steps=steps)
            with torch.no_grad():
                logits_in = predictor(task.query_x)
                logits_out = predictor(task.info[OOS_KEY].to(task.query_x.device))
            ins.append(confidence(logits_in, score).cpu())
            correct.append((logits_in.argmax(-1) == task.query_y).cpu())
            outs.append(confidence(logits_out, score).cpu())
    return OOSScores(torch.stack(ins), torch.stack(correct), torch.stack(outs))


def choose_threshold(scores: OOSScores) -> float:
    """The threshold maximising ``(in-scope accuracy + out-of-scope recall) / 2`` on the
    pooled queries of ``scores`` (validation episodes), searched over every observed
    confidence and ``+inf`` (reject everything); the smallest maximiser is returned."""
    ok = scores.in_scope[scores.correct].double().sort().values
    oos = scores.out_of_scope.double().reshape(-1).sort().values
    n_in, n_oos = scores.in_scope.numel(), oos.numel()
    if n_in == 0 or n_oos == 0:
        raise ValueError("choosing a threshold needs in-scope and out-of-scope queries")
    candidates = torch.cat(
        [scores.in_scope.double().reshape(-1), oos, torch.tensor([float("inf")])]
    ).unique()  # sorted
    # accepted and correct: correct scores >= t; rejected out-of-scope: scores < t
    accepted_correct = ok.numel() - torch.searchsorted(ok, candidates, right=False)
    rejected = torch.searchsorted(oos, candidates, right=False)
    objective = accepted_correct.double() / n_in + rejected.double() / n_oos
    best = int(torch.argmax(objective))  # first (smallest) maximiser
    return float(candidates[best])


@dataclass
class OOSResult:
    """Out-of-scope metrics on test episodes at a threshold chosen on validation episodes."""

    threshold: float
    score: str
    in_scope_accuracy: Estimate
    oos_recall: Estimate
    auroc: Estimate
    closed_set_accuracy: Estimate
    validation: dict[str, float]
    episodes: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["threshold"] = self.threshold
        return out

    def __str__(self) -> str:
        def pct(e: Estimate) -> str:
            return f"{100 * e.mean:.2f} +- {100 * e.ci95:.2f}%"

        return "\n".join(
            [
                f"{self.episodes} test episodes, mean +- 95% CI; score {self.score}, threshold "
                f"{self.threshold:.4g} (chosen on {self.validation['episodes']:.0f} "
                "validation episodes)",
                f"  in-scope accuracy   {pct(self.in_scope_accuracy)}",
                f"  out-of-scope recall {pct(self.oos_recall)}",
                f"  AUROC               {pct(self.auroc)}",
                f"  closed-set accuracy {pct(self.closed_set_accuracy)} (no rejection)",
            ]
        )


def summarize(
    scores: OOSScores,
    threshold: float,
    score: str,
    validation: dict[str, float],
    seed: int,
) -> OOSResult:
    """Metrics of test-episode ``scores`` at ``threshold`` (module docstring)."""
    in_acc, recall = scores.rates(threshold)
    aurocs = torch.stack([auroc(i, o) for i, o in zip(scores.in_scope, scores.out_of_scope)])
    return OOSResult(
        threshold=threshold,
        score=score,
        in_scope_accuracy=estimate(in_acc),
        oos_recall=estimate(recall),
        auroc=estimate(aurocs),
        closed_set_accuracy=estimate(scores.correct.double().mean(-1)),
        validation=validation,
        episodes=scores.in_scope.shape[0],
        seed=seed,
    )


def evaluate_oos(
    learner: MetaLearner,
    validation_family: TaskFamily,
    test_family: TaskFamily,
    episodes: int = 600,
    validation_episodes: int = 200,
    seed: int = 12345,
    *,
    score: str = "max_probability",
    steps: int | None = None,
    batch_size: int = 25,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> OOSResult:
    """Choose the abstention threshold on ``validation_episodes`` episodes of
    ``validation_family`` (meta-validation intents, validation out-of-scope utterances),
    then report the metrics on ``episodes`` episodes of ``test_family``."""
    kw: dict[str, Any] = dict(
        score=score, steps=steps, batch_size=batch_size, device=device, progress=progress
    )
    val = collect_scores(learner, validation_family, validation_episodes, seed + 1, **kw)
    threshold = choose_threshold(val)
    val_acc, val_recall = val.rates(threshold)
    validation = {
        "episodes": float(validation_episodes),
        "in_scope_accuracy": float(val_acc.mean()),
        "oos_recall": float(val_recall.mean()),
    }
    test = collect_scores(learner, test_family, episodes, seed, **kw)
    return summarize(test, threshold, score, validation, seed)
