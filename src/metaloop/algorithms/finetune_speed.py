"""The speed options of the fine-tuning baseline (``finetune.py``; module docstring there):
the encoder forward through ``torch.compile`` when ``compile`` is on, and embeddings cast
back to float32 after an autocast region.  ``FineTuneBaseline`` inherits ``FineTuneSpeed``.
"""

from __future__ import annotations

from torch import Tensor, nn

from metaloop.algorithms.metric_embedding import embed_batch
from metaloop.functional.speed import SpeedOptions
from metaloop.tasks.base import TaskBatch


def _encoder_forward(encoder: nn.Module, x: Tensor) -> Tensor:
    """``f_phi(x)``: the function ``compile=`` compiles (the encoder is an argument, so the
    cached compiled function never holds the learner)."""
    return encoder(x)


class _SpeedEncoder(nn.Module):
    """The learner's encoder called through its speed options (``FineTuneBaseline._encode``):
    a view for ``embed``/``embed_batch``, which see the encoder's modules through it (batch
    statistics are detected as on the encoder itself).  Built per call, never registered."""

    def __init__(self, learner: FineTuneSpeed) -> None:
        super().__init__()
        self.encoder = learner.encoder
        object.__setattr__(self, "_learner", learner)  # not a submodule: no cycle

    def forward(self, x: Tensor) -> Tensor:
        return self._learner._encode(x)


class FineTuneSpeed:
    """The speed-option methods of ``FineTuneBaseline`` (a mixin: they read the learner's
    ``encoder`` and ``speed``)."""

    encoder: nn.Module
    speed: SpeedOptions

    def _encode(self, x: Tensor) -> Tensor:
        """``f_phi(x)``, through the compiled forward when ``compile`` is on (falling back to
        eager, with one warning, if compilation fails)."""
        compiled = self.speed.compiled(self, "encoder", _encoder_forward)
        if compiled is not None:
            try:
                return compiled(self.encoder, x)
            except Exception as err:
                self.speed.compile_failed("encoder", err)
        return self.encoder(x)

    def _unmixed(self, t: Tensor) -> Tensor:
        """``t`` back in float32 after an autocast region (unchanged without autocast)."""
        return t if self.speed.autocast_dtype is None else t.float()

    def _speed_encoder(self) -> nn.Module:
        """The encoder itself, or a view of it calling ``_encode`` when compile is on."""
        return self.encoder if self.speed.compile_options is None else _SpeedEncoder(self)

    def _embed_batch(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """``embed_batch`` under the speed options; float32 embeddings ``[T, S|Q, D]``."""
        with self.speed.context(batch.support_x):
            z_s, z_q = embed_batch(self._speed_encoder(), batch)
        return self._unmixed(z_s.flatten(2)), self._unmixed(z_q.flatten(2))
