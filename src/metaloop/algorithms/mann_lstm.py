"""An LSTM meta-learner that reads the label one step late (Santoro et al. 2016).

The support set is read as a sequence in which each input arrives with the *previous*
input's label, as in memory-augmented neural networks' episodes:

    u_t = [phi(x_t), e(y_{t-1})]   (e(y_0) = 0),    (h_t, c_t) = LSTM(u_t, (h_{t-1}, c_{t-1})),

so at step ``t`` the network must predict ``y_t`` before it is told, and is told at step
``t + 1``.  Every query is the step after the support set, read from the same state,

    u_q = [phi(x_q), e(y_S)],   h_q = LSTM(u_q, (h_S, c_S)),   out(x_q) = W_o h_q,

so queries are predicted in parallel, each from the support set alone.  The prediction
depends on the order of the support set (the recurrence is not symmetric; tested).
``e`` is one-hot for classification (``ways`` logits out) and the target for regression.
Santoro et al.'s LSTM baseline is this network; their MANN adds an external memory.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaloop.algorithms.registry import register
from metaloop.algorithms.sequence import SequenceLearner, check_size
from metaloop.functional.losses import LossFn


@register("mann_lstm")
class LabelDelayLSTM(SequenceLearner):
    """LSTM over ``(x_t, y_{t-1})`` (see the module docstring).

    Args:
        encoder, x_dim, y_dim: as for every ``SequenceLearner``.
        hidden: LSTM state size.
        layers: stacked LSTM layers.
        loss, min_support, channels_last, shuffle_support: as for every
            ``SequenceLearner``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        x_dim: int,
        y_dim: int,
        hidden: int = 64,
        layers: int = 1,
        loss: str | LossFn = "mse",
        min_support: int | None = None,
        channels_last: bool = False,
        shuffle_support: bool = False,
    ) -> None:
        super().__init__(encoder, x_dim, y_dim, loss, min_support, channels_last, shuffle_support)
        self.hidden = check_size("hidden", hidden)
        self.layers = check_size("layers", layers)
        self.lstm = nn.LSTM(x_dim + y_dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, y_dim)

    def predict(self, zs: Tensor, es: Tensor, zq: Tensor) -> Tensor:
        t = zs.shape[0]
        q = zq.shape[1]
        delayed = torch.cat([torch.zeros_like(es[:, :1]), es[:, :-1]], 1)  # e(y_{t-1})
        _, (h, c) = self.lstm(torch.cat([zs, delayed], -1))  # state after the support set
        last = es[:, -1:].expand(t, q, -1)
        u = torch.cat([zq, last], -1).reshape(t * q, 1, -1)
        h0 = h.unsqueeze(2).expand(-1, -1, q, -1).reshape(self.layers, t * q, self.hidden)
        c0 = c.unsqueeze(2).expand(-1, -1, q, -1).reshape(self.layers, t * q, self.hidden)
        out, _ = self.lstm(u, (h0.contiguous(), c0.contiguous()))
        return self.head(out.reshape(t, q, self.hidden))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.hidden}, layers={self.layers}"


__all__ = ["LabelDelayLSTM"]
