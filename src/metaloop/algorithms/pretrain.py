"""Joint training ("pretrained on all tasks, then fine-tuned"): the baseline of MAML's paper.

Meta-training minimises the plain loss over the pooled data of all tasks,
``(1/T) sum_i L_i(theta)`` on support and query together, with no inner loop; at test time
the model is fine-tuned on each task's support set with ``inner_steps`` steps of SGD at
``inner_lr``, exactly as MAML is evaluated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaloop.algorithms.gradient import GradientMetaLearner
from metaloop.algorithms.registry import register
from metaloop.functional.params import call
from metaloop.tasks.base import TaskBatch


@register("joint")
class JointTraining(GradientMetaLearner):
    adapts_by_steps = True

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1).flatten(0, 1)
        prediction = call(
            self.model, dict(self.model.named_parameters()), dict(self.model.named_buffers()), x
        )
        loss = self.loss_fn(prediction, y)
        return loss, {"loss": float(loss.detach())}
