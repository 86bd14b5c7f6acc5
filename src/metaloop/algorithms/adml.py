"""Adversarial Meta-Learning, ADML (Yin, Tang, Xu, Nie, Zhang and Wang, 2018).

MAML's inner and outer loops with clean *and* adversarial data, crossed: the parameters
adapted on the clean support set are judged on adversarial queries, and those adapted on
the adversarial support set on clean queries,

    min_theta (1/T) sum_i 1/2 [ L(Q_i^adv; U(theta; S_i)) + L(Q_i; U(theta; S_i^adv)) ],

where ``U`` is MAML's inner loop (``inner_steps`` steps at ``inner_lr``) and ``S^adv``,
``Q^adv`` are the FGSM examples of the support and query inputs against the current
initialisation ``theta`` (``metaloop.functional.adversarial.fgsm``, radius ``epsilon``):

    x_adv = x + epsilon * sign(grad_x L(f_theta(x), y)).

The adversarial inputs are data (detached), as in the paper, which generates them before
the meta-update.  The meta-gradient through ``U`` is exact (second order) or first order
like MAML's (``first_order=True``).  At test time ADML is MAML: ``adapt`` and evaluation
use the clean support set; ``metaloop.evaluation.AdversarialQueries`` measures the
robustness of any learner to FGSM queries.  ``epsilon = 0`` is MAML exactly (tested).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from metaloop.algorithms.maml import MAML
from metaloop.algorithms.registry import register
from metaloop.functional.adversarial import check_epsilon, fgsm
from metaloop.functional.params import split_module
from metaloop.tasks.base import TaskBatch


@register("adml")
class ADML(MAML):
    """ADML; ``epsilon`` is the FGSM radius (in input units).  Other arguments: ``MAML``."""

    def __init__(self, model: nn.Module, *args: Any, epsilon: float = 0.1, **kwargs: Any):
        super().__init__(model, *args, **kwargs)
        self.epsilon = check_epsilon(epsilon)
        if self.speed.compile_options is not None:
            raise ValueError(
                "ADML's meta-step runs two inner loops on data made inside it; compile=True "
                "is not supported: leave compile off"
            )

    def adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        """FGSM inputs ``[T, N, ...]`` against the initialisation, task by task (so that
        batch statistics, where the model uses them, are those of one task's set)."""
        params, buffers = split_module(self.model)
        params = {k: v.detach() for k, v in params.items()}
        task_loss = self.task_loss(buffers)

        def loss(inputs: Tensor) -> Tensor:
            return sum(task_loss(params, inputs[t], y[t]) for t in range(inputs.shape[0]))

        return fgsm(loss, x, self.epsilon)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """``1/2 [L(Q^adv; U(S)) + L(Q; U(S^adv))]`` averaged over tasks."""
        support_adv = self.adversarial(batch.support_x, batch.support_y)
        query_adv = self.adversarial(batch.query_x, batch.query_y)
        clean_then_adv = TaskBatch(
            batch.support_x, batch.support_y, query_adv, batch.query_y, batch.ways
        )
        adv_then_clean = TaskBatch(
            support_adv, batch.support_y, batch.query_x, batch.query_y, batch.ways
        )
        loss_a, acc_a = self.query_loss_per_task(clean_then_adv, self.gradient_mode)
        loss_b, acc_b = self.query_loss_per_task(adv_then_clean, self.gradient_mode)
        losses, accs = (loss_a + loss_b) / 2, (acc_a + acc_b) / 2
        loss = losses.mean()
        return loss, self.metrics(loss, losses, accs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, epsilon={self.epsilon}"


__all__ = ["ADML"]
