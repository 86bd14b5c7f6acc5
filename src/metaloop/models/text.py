"""Text encoders built from scratch: embedding bag, 1-D CNN, small transformer.

Inputs are token ids ``x [N, L]`` (long) with ``0`` as padding, so the attention mask is
``m = (x != 0)`` and an episode stays a plain tensor through the engine.  Every encoder is
**padding-aware**: appending padding to a batch (a longer ``L``) does not change any
output, because padded positions are zeroed before any mixing and excluded from every
pooling and attention.

All three are ``Backbone``s: ``features`` maps ``[N, L]`` to ``[N, embedding_dim]``, and
``ways`` adds a linear ``head`` to ``ways`` logits, so embedding learners (ProtoNet,
Matching, Relation, the fine-tune baseline: ``ways=None``) and classifier learners (MAML,
ANIL, Proto-MAML: ``ways`` set) take them with no learner code changed.  No batch
statistics, dropout off by default: they run under ``torch.func.functional_call`` and
``vmap`` (MAML's batched inner loop) and in float64 for gradient checks.

Equations (``E`` the token embedding table, ``e_t = E[x_t] m_t``, ``n = sum_t m_t``):

* ``EmbeddingBag``: ``z = (1/n) sum_t e_t`` (fastText's bag of embeddings).
* ``TextCNN``: per kernel width ``k``, ``h_t = ReLU(b + sum_j W_j e_{t+j})`` ("same"
  padding, Kim 2014), ``z_k = max_{t: m_t} h_t``; ``z`` concatenates the widths.
* ``TextTransformer``: ``h^0_t = e_t + P_t`` (learned positions), then ``layers`` pre-norm
  blocks ``h <- h + MHA(LN(h))``, ``h <- h + W_2 GELU(W_1 LN(h))`` with attention weights
  ``softmax_s(q_t . k_s / sqrt(d) + log m_s)`` (padded keys get weight 0); ``z = LN(h)``
  averaged over real tokens (``pooling="mean"``) or read at position 0, the ``[CLS]``
  token the text family puts first (``pooling="cls"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.models.backbone import Backbone
from metaloop.models.norm import LayerNorm  # written out: exact under vmap (see norm.py)
from metaloop.validate import is_int

PAD_ID = 0
POOLINGS = ("mean", "cls")


def _check_int(name: str, value: object, low: int = 1) -> int:
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_ids(x: Tensor) -> Tensor:
    """``x`` as long ``[N, L]`` token ids; a one-line error for anything else.  Floating
    point ids are cast (so a shape dry run with ``torch.zeros(2, L)``, all padding, works)."""
    if x.dim() != 2 or x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"text encoders take token ids [N, L], got {tuple(x.shape)} {x.dtype}")
    return x if x.dtype == torch.long else x.long()


class _Embed(nn.Module):
    """``e_t = E[x_t] m_t`` and ``m``, in the table's dtype."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.vocab_size = _check_int("vocab_size", vocab_size, 3)
        self.table = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        nn.init.normal_(self.table.weight, std=dim**-0.5)
        with torch.no_grad():
            self.table.weight[PAD_ID].zero_()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = _check_ids(x)
        e = self.table(x)
        m = (x != PAD_ID).to(e.dtype)
        return e * m.unsqueeze(-1), m


def masked_mean(h: Tensor, m: Tensor) -> Tensor:
    """``(sum_t m_t h_t) / max(sum_t m_t, 1)`` over dimension 1."""
    return (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)


class BagBody(nn.Module):
    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embed = _Embed(vocab_size, dim)

    def forward(self, x: Tensor) -> Tensor:
        e, m = self.embed(x)
        return masked_mean(e, m)


class CNNBody(nn.Module):
    def __init__(
        self, vocab_size: int, dim: int, channels: int, kernel_sizes: Sequence[int]
    ) -> None:
        super().__init__()
        self.embed = _Embed(vocab_size, dim)
        self.kernel_sizes = tuple(kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, k) for k in kernel_sizes)

    def forward(self, x: Tensor) -> Tensor:
        e, m = self.embed(x)  # [N, L, D], padded positions already 0
        e = e.transpose(1, 2)  # [N, D, L]
        invalid = (m == 0).unsqueeze(1)  # [N, 1, L]
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            # "same" padding by hand (zeros, like the masked padding): (k-1)//2 left, k//2 right
            h = F.relu(conv(F.pad(e, ((k - 1) // 2, k // 2))))
            # max over real positions only: ReLU outputs are >= 0, so padding set to 0
            # never exceeds the real maximum (and an all-padding row pools to 0)
            h = h.masked_fill(invalid, 0.0)
            pooled.append(h.amax(-1))
        return torch.cat(pooled, dim=-1)


class TransformerBlock(nn.Module):
    """One pre-norm encoder block with key-padding-masked multi-head attention."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ff_dim)
        self.ff2 = nn.Linear(ff_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, m: Tensor) -> Tensor:
        n, length, dim = h.shape
        d = dim // self.heads
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, self.heads, d).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # [N, heads, L, L]
        scores = scores.masked_fill((m == 0)[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = self.dropout(scores.softmax(-1))
        a = (attn @ v).transpose(1, 2).reshape(n, length, dim)
        h = h + self.dropout(self.out(a))
        return h + self.dropout(self.ff2(F.gelu(self.ff1(self.norm2(h)))))


class TransformerBody(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        dim: int,
        layers: int,
        heads: int,
        ff_dim: int,
        max_length: int,
        pooling: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed = _Embed(vocab_size, dim)
        self.max_length = max_length
        self.positions = nn.Embedding(max_length, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, ff_dim, dropout) for _ in range(layers)
        )
        self.norm = LayerNorm(dim)
        self.pooling = pooling

    def forward(self, x: Tensor) -> Tensor:
        e, m = self.embed(x)
        length = x.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"the transformer was built for at most max_length = {self.max_length} tokens, "
                f"got inputs of {length}; raise model.max_length or encode shorter"
            )
        h = e + self.positions.weight[:length]
        for block in self.blocks:
            h = block(h, m)
        h = self.norm(h)
        return h[:, 0] if self.pooling == "cls" else masked_mean(h, m)


class EmbeddingBag(Backbone):
    """Mean of the token embeddings (module docstring), ``embedding_dim = dim``.

    Args:
        vocab_size: token ids lie in ``0 .. vocab_size-1`` (0 = padding).
        dim: embedding size.
        ways: ``None`` (an embedding) or the size of a linear classification head.
    """

    def __init__(self, vocab_size: int, dim: int = 128, ways: int | None = None) -> None:
        super().__init__()
        _check_int("dim", dim)
        self.set_features(BagBody(vocab_size, dim), dim, ways)


class TextCNN(Backbone):
    """1-D convolutions over token embeddings, max-pooled over real tokens (module
    docstring); ``embedding_dim = channels * len(kernel_sizes)``."""

    def __init__(
        self,
        vocab_size: int,
        dim: int = 128,
        channels: int = 128,
        kernel_sizes: Sequence[int] = (3, 4, 5),
        ways: int | None = None,
    ) -> None:
        super().__init__()
        _check_int("dim", dim)
        _check_int("channels", channels)
        kernel_sizes = tuple(kernel_sizes)
        if not kernel_sizes:
            raise ValueError("kernel_sizes must name at least one kernel width")
        for k in kernel_sizes:
            _check_int("every kernel size", k)
        body = CNNBody(vocab_size, dim, channels, kernel_sizes)
        self.set_features(body, channels * len(kernel_sizes), ways)


class TextTransformer(Backbone):
    """A small pre-norm transformer encoder (module docstring), ``embedding_dim = dim``.

    Args:
        vocab_size: token ids lie in ``0 .. vocab_size-1`` (0 = padding).
        dim: model width (divisible by ``heads``).
        layers: encoder blocks (the issue asks for 2-4; any positive number works).
        heads: attention heads.
        ff_dim: hidden size of the feed-forward sublayer (default ``2 * dim``).
        max_length: most tokens per input (the size of the position table).
        pooling: ``"mean"`` over real tokens or ``"cls"`` (position 0).
        dropout: dropout rate in attention and sublayers (0: deterministic).
        ways: ``None`` (an embedding) or the size of a linear classification head.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 128,
        layers: int = 2,
        heads: int = 4,
        ff_dim: int | None = None,
        max_length: int = 64,
        pooling: Literal["mean", "cls"] = "mean",
        dropout: float = 0.0,
        ways: int | None = None,
    ) -> None:
        super().__init__()
        _check_int("dim", dim)
        _check_int("layers", layers)
        _check_int("heads", heads)
        _check_int("max_length", max_length)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        ff_dim = 2 * dim if ff_dim is None else _check_int("ff_dim", ff_dim)
        body = TransformerBody(vocab_size, dim, layers, heads, ff_dim, max_length, pooling, dropout)
        self.set_features(body, dim, ways)
