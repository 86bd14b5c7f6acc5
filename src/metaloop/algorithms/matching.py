"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, 2016).

A query ``x`` is classified by attention over the support set ``S = {(x_i, y_i)}``:

    P(y = k | x, S) = sum_i a(x, x_i) 1[y_i = k],
    a(x, x_i) = softmax_i( cos(f(x, S), g(x_i, S)) / tau ),

and the meta-loss is the query negative log-likelihood ``-(1/N) sum log P(y_q | x_q, S)``.
``log P`` is computed stably as ``logsumexp_{i: y_i = k} l_i - logsumexp_i l_i`` with
``l_i = cos(.,.) / tau`` (``tau = 1`` is the paper's plain cosine).

Without full-context embeddings (``fce=False``) ``f = g = f'``, the encoder.  With
``fce=True`` (the paper's appendix):

* ``g(x_i, S) = g'(x_i) + h_fwd_i + h_bwd_i``: a bidirectional LSTM over the support
  embeddings ``g'(x_1) .. g'(x_S)`` (in the order given), with a skip connection;
* ``f(x, S) = attLSTM(f'(x), g(S), K)``: ``K`` steps of an LSTM that reads the support,

      h^_k, c_k = LSTM(f'(x), h_{k-1} + r_{k-1}, c_{k-1}),
      h_k = h^_k + f'(x),
      r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i),

  starting from ``h_0 = r_0 = c_0 = 0``; ``f(x, S) = h_K``.  The paper writes the hidden
  state as the concatenation ``[h_{k-1}, r_{k-1}]``, which does not fit the residual
  ``h_k = h^_k + f'(x)`` dimensionally; the sum keeps the hidden size equal to the embedding
  size, as common re-implementations do.

Support and query of the whole meta-batch go through the encoder in one forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.metric import MetricMetaLearner, cosine_similarity
from metaloop.algorithms.registry import register


def log_probabilities(logits: Tensor, y_support: Tensor, ways: int) -> Tensor:
    """``log sum_{i: y_i = k} softmax_i(logits)`` for ``logits [T, Q, S]`` -> ``[T, Q, ways]``."""
    member = F.one_hot(y_support, ways).bool().unsqueeze(1)  # [T, 1, S, ways]
    masked = logits.unsqueeze(-1).masked_fill(~member, float("-inf"))
    return torch.logsumexp(masked, dim=2) - torch.logsumexp(logits, dim=2, keepdim=True)


def nll(log_probs: Tensor, labels: Tensor) -> Tensor:
    """Mean negative log-likelihood ``-mean log p_y`` of log-probabilities."""
    return F.nll_loss(log_probs, labels)


class FullContextEmbedding(nn.Module):
    """The bidirectional support LSTM ``g`` and the attention LSTM ``f`` of the paper."""

    def __init__(self, embedding_dim: int, steps: int = 5) -> None:
        super().__init__()
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"fce_steps must be a positive integer, got {steps!r}")
        self.embedding_dim, self.steps = embedding_dim, steps
        self.support_lstm = nn.LSTM(
            embedding_dim, embedding_dim, batch_first=True, bidirectional=True
        )
        self.query_cell = nn.LSTMCell(embedding_dim, embedding_dim)

    def embed_support(self, z_support: Tensor) -> Tensor:
        """``g``: ``[T, S, D]`` -> ``[T, S, D]``."""
        out, _ = self.support_lstm(z_support)
        d = self.embedding_dim
        return z_support + out[..., :d] + out[..., d:]

    def embed_query(self, z_query: Tensor, g: Tensor) -> Tensor:
        """``f``: query ``[T, Q, D]`` attending to ``g [T, S, D]`` -> ``[T, Q, D]``."""
        t, q, d = z_query.shape
        x = z_query.reshape(t * q, d)
        h = torch.zeros_like(x)
        c = torch.zeros_like(x)
        r = torch.zeros_like(x)
        for _ in range(self.steps):
            h_hat, c = self.query_cell(x, (h + r, c))
            h = h_hat + x
            attention = torch.softmax(h.view(t, q, d) @ g.transpose(1, 2), dim=-1)  # [T,Q,S]
            r = (attention @ g).reshape(t * q, d)
        return h.view(t, q, d)


@register("matching")
class MatchingNet(MetricMetaLearner):
    """Matching network over any encoder.

    Args:
        encoder: ``nn.Module`` mapping ``[N, *input]`` to ``[N, *E]`` embeddings (flattened to
            ``D`` features).
        fce: use full-context embeddings (bidirectional support LSTM, attention LSTM for
            queries); needs ``embedding_dim`` (= ``D``).
        embedding_dim: size of the flattened embedding, required with ``fce=True`` (default:
            ``encoder.embedding_dim`` when the encoder has it, as ``Conv4`` does).
        fce_steps: ``K``, the attention LSTM's number of reads (default 5).
        temperature: ``tau`` dividing the cosine similarities (1 = the paper).

    Predictors return log-probabilities ``[Q, ways]``; the loss is their NLL.
    """

    def __init__(
        self,
        encoder: nn.Module,
        fce: bool = False,
        embedding_dim: int | None = None,
        fce_steps: int = 5,
        temperature: float = 1.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__(encoder, nll, channels_last)
        self.loss_name = "nll"
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)
        self.fce_module: FullContextEmbedding | None = None
        if fce:
            embedding_dim = embedding_dim or getattr(encoder, "embedding_dim", None)
            if embedding_dim is None:
                raise ValueError(
                    "MatchingNet(fce=True) needs embedding_dim, the size of the encoder's "
                    "flattened output, to build the LSTMs"
                )
            self.fce_module = FullContextEmbedding(embedding_dim, fce_steps)

    @property
    def fce(self) -> bool:
        return self.fce_module is not None

    def embeddings(self, z_support: Tensor, z_query: Tensor) -> tuple[Tensor, Tensor]:
        """``g(x_i, S)`` ``[T, S, D]`` and ``f(x, S)`` ``[T, Q, D]``."""
        z_support, z_query = z_support.flatten(2), z_query.flatten(2)
        if self.fce_module is None:
            return z_support, z_query
        d = self.fce_module.embedding_dim
        if z_support.shape[-1] != d:
            raise ValueError(
                f"the encoder outputs {z_support.shape[-1]} features but the full-context "
                f"embedding was built for embedding_dim={d}"
            )
        g = self.fce_module.embed_support(z_support)
        return g, self.fce_module.embed_query(z_query, g)

    def scores(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        """``log P(y = k | x, S)``, ``[T, Q, ways]``."""
        g, f = self.embeddings(z_support, z_query)
        logits = cosine_similarity(f, g) / self.temperature  # [T, Q, S]
        return log_probabilities(logits, y_support, ways)

    def extra_repr(self) -> str:
        return f"fce={self.fce}, temperature={self.temperature}"
