"""In-context transformer learner: the support set and the queries as tokens.

Every support pair becomes one token and every query one token,

    h_i = W_x phi(x_i) + W_y e(y_i)        support token (input plus label embedding)
    h_q = W_x phi(x_q) + u                 query token (``u`` learned: "label unknown")

and ``depth`` pre-norm transformer blocks update them,

    h <- h + MHA(LN(h); mask),    h <- h + W_2 gelu(W_1 LN(h)),

with multi-head attention ``softmax(Q K^T / sqrt(d_head) + M) V`` under the
support-to-query mask ``M``: a support token attends to every support token, a query token
attends to every support token and to itself, and nothing attends to another query.  The
output head reads the query tokens, ``out(x_q) = W_o LN(h_q)``.

There is no positional encoding, so permuting the support set permutes the support tokens
and leaves every query's output unchanged (the learner is a set function of the support
set; tested), and a query's output does not depend on the other queries.  All queries are
predicted in one pass.  Classification decodes ``ways`` logits, regression ``y_dim``
values (MSE).

``similarity_init = c`` starts every block's key projection equal to its query projection
scaled by ``c`` (``W_k = W_q <- c W_q``, no biases), so that the initial attention scores
``(c W_q LN(h_i)) . (c W_q LN(h_j))`` are a sharpened similarity between tokens.  This
breaks the plateau of 1-shot classification: with scores that do not depend on the inputs
a query reads every support label equally (each label once), so neither the attention nor
the label read-out gets a signal until the other does, and training sat at chance for
1,150 Omniglot iterations (docs/sequence-rl.md); a similarity-based start reads the most
similar support image's label from the first step.  ``None`` keeps PyTorch's default init.
A query's similarity to itself is the largest score, so with many support tokens (20-way)
``query_self_attention=False`` (queries attend to the support tokens only; the residual
stream still carries the query itself) makes that start read the nearest support label.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metaloop.algorithms.registry import register
from metaloop.algorithms.sequence import SequenceLearner, check_similarity_init, check_size
from metaloop.functional.losses import LossFn
from metaloop.models.norm import LayerNorm


def support_query_mask(
    support: int, queries: int, device=None, query_sees_itself: bool = True
) -> Tensor:
    """Boolean ``[S + Q, S + Q]``, ``True`` where row may attend to column: all rows see
    the ``S`` support columns, and each query row also sees itself (unless
    ``query_sees_itself=False``)."""
    n = support + queries
    allowed = torch.zeros(n, n, dtype=torch.bool, device=device)
    allowed[:, :support] = True
    if query_sees_itself:
        idx = torch.arange(support, n, device=device)
        allowed[idx, idx] = True
    return allowed


class TransformerBlock(nn.Module):
    """One pre-norm block: masked multi-head self-attention then a GELU feed-forward."""

    def __init__(self, width: int, heads: int, ff: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm1, self.norm2 = LayerNorm(width), LayerNorm(width)  # exact under vmap
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, ff), nn.GELU(), nn.Linear(ff, width))

    def attention(self, h: Tensor, allowed: Tensor) -> Tensor:
        """``softmax(Q K^T / sqrt(d_head) + M) V`` per head, ``h [B, N, width]``."""
        b, n, w = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(w // self.heads)
        scores = scores.masked_fill(~allowed, float("-inf"))
        read = torch.softmax(scores, -1) @ v  # [B, heads, N, d_head]
        return self.out(read.transpose(1, 2).reshape(b, n, w))

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        h = h + self.attention(self.norm1(h), allowed)
        return h + self.ff(self.norm2(h))


@register("incontext")
class InContextTransformer(SequenceLearner):
    """Transformer over support and query tokens (see the module docstring).

    Args:
        encoder: ``phi`` (``nn.Identity()`` for vectors, a ``Conv4`` embedding for images).
        x_dim, y_dim: features of ``phi(x)``; target dimension or ``ways``.
        width: token size.
        depth: number of transformer blocks.
        heads: attention heads (must divide ``width``).
        ff: hidden size of the feed-forward layers (default ``2 * width``).
        similarity_init: ``c`` of the module docstring (``None``: default init).
        query_self_attention: whether a query token attends to itself as well as to the
            support tokens.
        loss, min_support, channels_last, shuffle_support: as for every
            ``SequenceLearner``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        x_dim: int,
        y_dim: int,
        width: int = 64,
        depth: int = 3,
        heads: int = 4,
        ff: int | None = None,
        similarity_init: float | None = None,
        query_self_attention: bool = True,
        loss: str | LossFn = "mse",
        min_support: int | None = None,
        channels_last: bool = False,
        shuffle_support: bool = False,
    ) -> None:
        super().__init__(encoder, x_dim, y_dim, loss, min_support, channels_last, shuffle_support)
        self.width = check_size("width", width)
        self.depth = check_size("depth", depth)
        self.heads = check_size("heads", heads)
        ff = check_size("ff", ff) if ff is not None else 2 * width
        self.embed_x = nn.Linear(x_dim, width)
        self.embed_y = nn.Linear(y_dim, width, bias=False)
        self.unknown_label = nn.Parameter(torch.zeros(width))
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, ff) for _ in range(depth))
        self.norm = LayerNorm(width)
        self.head = nn.Linear(width, y_dim)
        self.similarity_init = similarity_init
        if not isinstance(query_self_attention, bool):
            raise ValueError(
                f"query_self_attention must be true or false, got {query_self_attention!r}"
            )
        self.query_self_attention = query_self_attention
        if similarity_init is not None:
            check_similarity_init(similarity_init)
            with torch.no_grad():
                for block in self.blocks:
                    w_q, w_k, _ = block.qkv.weight.chunk(3)
                    b_q, b_k, _ = block.qkv.bias.chunk(3)
                    w_q.mul_(similarity_init)
                    w_k.copy_(w_q)
                    b_q.zero_()
                    b_k.zero_()

    def predict(self, zs: Tensor, es: Tensor, zq: Tensor) -> Tensor:
        support = self.embed_x(zs) + self.embed_y(es)
        queries = self.embed_x(zq) + self.unknown_label
        h = torch.cat([support, queries], 1)
        allowed = support_query_mask(
            zs.shape[1], zq.shape[1], device=h.device, query_sees_itself=self.query_self_attention
        )
        for block in self.blocks:
            h = block(h, allowed)
        return self.head(self.norm(h[:, zs.shape[1] :]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, width={self.width}, depth={self.depth}, heads={self.heads}"


__all__ = ["InContextTransformer", "TransformerBlock", "support_query_mask"]
