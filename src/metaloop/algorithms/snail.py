"""SNAIL: temporal convolutions interleaved with causal attention (Mishra et al. 2018).

A task is read as the sequence of its support pairs followed by one query with an empty
label, as in the paper's few-shot setup,

    u_1..u_S = [phi(x_i), e(y_i)],    u_{S+1} = [phi(x_q), 0],

and the network is a stack of the paper's two blocks, each of which appends channels:

* ``DenseBlock(d, F)``: a causal convolution of kernel 2 and dilation ``d``,
  ``a_t = W_0 u_{t-d} + W_1 u_t + b`` (``u_{t-d} = 0`` before the start), split into
  ``(a_f, a_g)`` and gated, ``o_t = tanh(a_f) * sigmoid(a_g)``; output ``[u_t, o_t]``.
* ``TCBlock(L, F)``: dense blocks with dilations ``1, 2, 4, ..., 2^(ceil(log2 L) - 1)``,
  so the last step sees the whole sequence of length ``L``.
* ``AttentionBlock(K, V)``: causal single-head attention,
  ``read_t = sum_{j <= t} softmax_j(<q_t, k_j> / sqrt(K)) v_j``; output ``[u_t, read_t]``.

The paper's few-shot network is ``Attention(64, 32), TC(128), Attention(256, 128),
TC(128), Attention(512, 256)`` and a final ``1x1`` convolution; here the sizes are
arguments (``key_size``, ``value_size``, ``filters``) and the layout is the same.  The
output at step ``S + 1`` is the query's prediction.  Every query gets its own sequence
(the support set then that query), so none sees another; since the network is causal,
the support steps are computed once and each query is one more step reading their cached
activations, all queries in one batched pass.  Causality makes the prediction depend on
the order of the support set (tested).

``similarity_init = c`` starts every attention block's key projection equal to its query
projection scaled by ``c`` (no biases), so that attention starts as a sharpened similarity
between steps, as for the in-context transformer (``incontext.py`` explains the 1-shot
plateau it avoids); ``None`` keeps PyTorch's default init.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.registry import register
from metaloop.algorithms.sequence import SequenceLearner, check_similarity_init, check_size
from metaloop.functional.losses import LossFn


class DenseBlock(nn.Module):
    """Gated causal convolution (kernel 2, ``dilation``), its output appended: ``C -> C + F``."""

    def __init__(self, channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * filters, kernel_size=2, dilation=dilation)

    def forward(self, u: Tensor) -> Tensor:  # u [B, L, C]
        x = F.pad(u.transpose(1, 2), (self.dilation, 0))  # zeros before the start
        a_f, a_g = self.conv(x).transpose(1, 2).chunk(2, -1)
        return torch.cat([u, torch.tanh(a_f) * torch.sigmoid(a_g)], -1)

    def query_step(self, us: Tensor, uq: Tensor) -> Tensor:
        """The block at one step appended after ``us [T, S, C]``, for each of the queries
        ``uq [T, Q, C]`` separately: ``a = W_0 u_{S+1-d} + W_1 u_q + b``."""
        w = self.conv.weight  # [2F, C, 2]: tap 0 reads t - d, tap 1 reads t
        a = uq @ w[:, :, 1].T + self.conv.bias
        s = us.shape[1]
        if s - self.dilation >= 0:  # 0-based: the query sits at index s, reads s - d
            a = a + (us[:, s - self.dilation] @ w[:, :, 0].T).unsqueeze(1)
        a_f, a_g = a.chunk(2, -1)
        return torch.cat([uq, torch.tanh(a_f) * torch.sigmoid(a_g)], -1)


class TCBlock(nn.Module):
    """Dense blocks with dilations ``1, 2, ..., 2^(ceil(log2 L) - 1)``: ``C -> C + n F``."""

    def __init__(self, channels: int, length: int, filters: int) -> None:
        super().__init__()
        n = max(1, math.ceil(math.log2(length)))
        self.blocks = nn.Sequential(
            *(DenseBlock(channels + i * filters, filters, 2**i) for i in range(n))
        )
        self.out_channels = channels + n * filters

    def forward(self, u: Tensor) -> Tensor:
        return self.blocks(u)

    def query_step(self, us: Tensor, uq: Tensor) -> Tensor:
        for block in self.blocks:
            us, uq = block(us), block.query_step(us, uq)
        return uq


class AttentionBlock(nn.Module):
    """Causal single-head attention, the read appended: ``C -> C + V``."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(channels, key_size)
        self.key = nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)
        self.scale = 1.0 / math.sqrt(key_size)

    def forward(self, u: Tensor) -> Tensor:
        n = u.shape[1]
        scores = self.query(u) @ self.key(u).transpose(1, 2) * self.scale
        causal = torch.ones(n, n, dtype=torch.bool, device=u.device).tril()
        weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
        return torch.cat([u, weights @ self.value(u)], -1)

    def query_step(self, us: Tensor, uq: Tensor) -> Tensor:
        """The block at one step after ``us [T, S, C]`` for each query ``uq [T, Q, C]``:
        the query attends to the ``S`` support steps and to itself."""
        q = self.query(uq)
        scores = torch.cat(
            [q @ self.key(us).transpose(1, 2), (q * self.key(uq)).sum(-1, keepdim=True)], -1
        )
        weights = torch.softmax(scores * self.scale, -1)  # [T, Q, S + 1]
        s = us.shape[1]
        read = weights[..., :s] @ self.value(us) + weights[..., s:] * self.value(uq)
        return torch.cat([uq, read], -1)


@register("snail")
class SNAIL(SequenceLearner):
    """SNAIL over ``(x_1, y_1), ..., (x_S, y_S), (x_q, 0)`` (see the module docstring).

    Args:
        encoder, x_dim, y_dim: as for every ``SequenceLearner``.
        max_support: the longest support set the TC blocks are sized for (their depth is
            ``ceil(log2(max_support + 1))``); shorter sets work too.
        filters: ``F`` of every dense block.
        key_size, value_size: of the first attention block; the second and third double
            them and quadruple them, as in the paper's layout.
        similarity_init: ``c`` of the module docstring (``None``: default init).
        loss, min_support, channels_last, shuffle_support: as for every
            ``SequenceLearner``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        x_dim: int,
        y_dim: int,
        max_support: int = 20,
        filters: int = 32,
        key_size: int = 16,
        value_size: int = 16,
        similarity_init: float | None = None,
        loss: str | LossFn = "mse",
        min_support: int | None = None,
        channels_last: bool = False,
        shuffle_support: bool = False,
    ) -> None:
        super().__init__(encoder, x_dim, y_dim, loss, min_support, channels_last, shuffle_support)
        self.max_support = check_size("max_support", max_support)
        check_size("filters", filters)
        check_size("key_size", key_size)
        check_size("value_size", value_size)
        length = max_support + 1
        c = x_dim + y_dim
        layers: list[nn.Module] = []
        for i, scale in enumerate((1, 2, 4)):
            layers.append(AttentionBlock(c, scale * key_size, scale * value_size))
            c += scale * value_size
            if i < 2:
                tc = TCBlock(c, length, filters)
                layers.append(tc)
                c = tc.out_channels
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, y_dim)
        self.similarity_init = similarity_init
        if similarity_init is not None:
            check_similarity_init(similarity_init)
            with torch.no_grad():
                for block in layers:
                    if isinstance(block, AttentionBlock):
                        block.query.weight.mul_(similarity_init)
                        block.key.weight.copy_(block.query.weight)
                        block.query.bias.zero_()
                        block.key.bias.zero_()

    def predict(self, zs: Tensor, es: Tensor, zq: Tensor) -> Tensor:
        """Support steps through the whole stack once; each query as the step after them,
        reading the cached support activations of every block (exactly ``sequences``'s
        last step, without running the support set once per query; tested)."""
        self._check_length(zs.shape[1])
        us = torch.cat([zs, es], -1)
        uq = torch.cat([zq, zq.new_zeros(*zq.shape[:2], self.y_dim)], -1)
        for block in self.body:
            us, uq = block(us), block.query_step(us, uq)
        return self.head(uq)

    def sequences(self, zs: Tensor, es: Tensor, zq: Tensor) -> Tensor:
        """The reference computation: one full causal sequence (support, then the query)
        per query, ``[T, Q, y_dim]`` from the last step of each."""
        self._check_length(zs.shape[1])
        t, s, _ = zs.shape
        q = zq.shape[1]
        support = torch.cat([zs, es], -1).unsqueeze(1).expand(t, q, s, -1)
        query = torch.cat([zq, zq.new_zeros(t, q, self.y_dim)], -1)
        seqs = torch.cat([support, query.unsqueeze(2)], 2).reshape(t * q, s + 1, -1)
        return self.head(self.body(seqs)[:, -1]).reshape(t, q, self.y_dim)

    def _check_length(self, s: int) -> None:
        if s > self.max_support:
            raise ValueError(
                f"the support set has {s} points but SNAIL was built for max_support="
                f"{self.max_support}: raise max_support"
            )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_support={self.max_support}"


__all__ = ["SNAIL", "AttentionBlock", "DenseBlock", "TCBlock"]
