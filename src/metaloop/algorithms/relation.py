"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr and Hospedales, 2018).

An embedding module ``f_phi`` maps every example to a feature map (or a vector).  A
class's representation is the element-wise sum (the paper, for K-shot) or mean of its
support feature maps,

    s_k = sum_{i: y_i = k} f_phi(x_i),

and a learned relation module ``g_psi`` scores every (class, query) pair from the
channel-wise concatenation of the two feature maps:

    r_{q,k} = sigmoid( g_psi( concat(s_k, f_phi(x_q)) ) )  in [0, 1].

The paper regresses the relation scores onto the one-hot match with the mean squared
error, ``(1/(N ways)) sum_{q,k} (r_{q,k} - 1[y_q = k])^2`` (``loss="mse"``).  With
``loss="cross_entropy"`` the raw outputs ``g_psi(.)`` are used as class logits instead.
The relation module must output one unbounded number per pair (shape ``[P]`` or
``[P, 1]``); ``RelationNet`` applies the sigmoid.

``relation_embedding`` and ``relation_module`` build the paper's Omniglot modules: the
embedding is four 3x3 conv blocks (64 channels, batch norm, ReLU; 2x2 max-pooling in the
first two only, the first two unpadded), giving ``64 x 5 x 5`` maps on 28x28 inputs; the
relation module is two conv blocks with pooling then ``FC(8) - ReLU - FC(1)``.  Any encoder
that outputs feature maps works (e.g. a Conv4 without its final flatten), and one that
outputs vectors works with ``relation_mlp``.  Without a ``relation_module`` argument,
``RelationNet`` builds the matching one of the two by a dry run of the encoder
(``default_relation_module``), so ``RelationNet(Conv4(ways=None))`` works as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaloop.algorithms.metric import MetricMetaLearner, class_sums
from metaloop.algorithms.registry import register

Aggregate = Literal["sum", "mean"]


def relation_mse(scores: Tensor, labels: Tensor) -> Tensor:
    """``mean (r_{q,k} - 1[y_q = k])^2`` for scores ``[N, ways]`` in ``[0, 1]``."""
    return F.mse_loss(scores, F.one_hot(labels, scores.shape[-1]).to(scores.dtype))


def _conv_block(cin: int, cout: int, padding: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=padding),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def relation_embedding(in_channels: int = 1, hidden: int = 64) -> nn.Sequential:
    """The paper's embedding module ``f_phi``: feature maps ``[N, hidden, 5, 5]`` on 28x28
    (``[N, hidden, 19, 19]`` on 84x84)."""
    return nn.Sequential(
        _conv_block(in_channels, hidden, padding=0, pool=True),
        _conv_block(hidden, hidden, padding=0, pool=True),
        _conv_block(hidden, hidden, padding=1, pool=False),
        _conv_block(hidden, hidden, padding=1, pool=False),
    )


def relation_module(
    in_channels: int = 64,
    feature_size: int | Sequence[int] = 5,
    hidden: int = 64,
    fc_hidden: int = 8,
) -> nn.Sequential:
    """The paper's relation module ``g_psi`` for ``in_channels x H x W`` feature maps.

    Input: the concatenated pair ``[P, 2 * in_channels, H, W]``; two 3x3 conv blocks
    (``hidden`` channels, padding 1, batch norm, ReLU, 2x2 max-pooling where the map is
    still at least 2 wide), then ``FC(fc_hidden) - ReLU - FC(1)``; output ``[P, 1]``
    (unbounded: ``RelationNet`` applies the sigmoid).
    """
    h, w = (feature_size, feature_size) if isinstance(feature_size, int) else feature_size
    if h < 1 or w < 1:
        raise ValueError(f"feature_size must be positive, got {feature_size!r}")
    blocks: list[nn.Module] = []
    cin = 2 * in_channels
    for _ in range(2):
        pool = h >= 2 and w >= 2
        blocks.append(_conv_block(cin, hidden, padding=1, pool=pool))
        if pool:
            h, w = h // 2, w // 2
        cin = hidden
    return nn.Sequential(
        *blocks,
        nn.Flatten(),
        nn.Linear(hidden * h * w, fc_hidden),
        nn.ReLU(),
        nn.Linear(fc_hidden, 1),
    )


def relation_mlp(embedding_dim: int, hidden: int = 8) -> nn.Sequential:
    """Relation module for vector embeddings: ``[P, 2 D] -> FC(hidden) - ReLU - FC(1)``."""
    return nn.Sequential(nn.Linear(2 * embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def encoder_output_shape(encoder: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Per-example output shape of ``encoder`` on inputs of ``input_shape`` (a dry run in
    eval mode, without gradients; the encoder's mode is restored)."""
    param = next(iter(encoder.parameters()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else None
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(torch.zeros(2, *input_shape, dtype=dtype, device=device))
    finally:
        encoder.train(was_training)
    return tuple(out.shape[1:])


def default_relation_module(
    encoder: nn.Module,
    input_shape: Sequence[int] | None = None,
    hidden: int = 64,
    fc_hidden: int = 8,
) -> nn.Module:
    """``relation_module`` for feature maps ``[C, H, W]`` or ``relation_mlp`` for vectors
    ``[D]``, sized by a dry run of ``encoder`` on ``input_shape``.

    ``input_shape`` defaults to ``(encoder.in_channels, encoder.image_size,
    encoder.image_size)`` when the encoder has those attributes (``Conv4`` does; its
    flattened 28x28 output is a vector, since four poolings leave 1x1 maps).
    """
    if input_shape is None:
        channels = getattr(encoder, "in_channels", None)
        size = getattr(encoder, "image_size", None)
        if not isinstance(channels, int) or not isinstance(size, int):
            raise ValueError(
                "RelationNet without a relation_module needs input_shape=(C, H, W) to size "
                "the default relation module (or an encoder with in_channels and image_size)"
            )
        input_shape = (channels, size, size)
    shape = encoder_output_shape(encoder, input_shape)
    if len(shape) == 3:
        return relation_module(shape[0], (shape[1], shape[2]), hidden, fc_hidden)
    if len(shape) == 1:
        return relation_mlp(shape[0], fc_hidden)
    raise ValueError(
        f"the encoder outputs per-example shape {shape}; the default relation module needs "
        "feature maps [C, H, W] or vectors [D] (pass relation_module for other shapes)"
    )


@register("relation")
class RelationNet(MetricMetaLearner):
    """Relation network: learned similarity between class and query feature maps.

    Args:
        encoder: embedding module ``f_phi``; outputs feature maps ``[N, C, H, W]`` (or
            vectors ``[N, D]``).
        relation_module: ``g_psi`` mapping concatenated pairs ``[P, 2C, H, W]`` (or
            ``[P, 2D]``) to ``[P]`` or ``[P, 1]`` unbounded scores.
        aggregate: ``"sum"`` (the paper) or ``"mean"`` of the support feature maps per class.
        loss: ``"mse"`` (the paper: sigmoid scores regressed onto one-hot targets) or
            ``"cross_entropy"`` (raw scores as logits).

        input_shape: ``(C, H, W)`` of one input, used only when ``relation_module`` is
            ``None`` to build the default module for the encoder's output shape (see
            ``default_relation_module``); read from ``encoder.in_channels`` and
            ``encoder.image_size`` when the encoder has them (as ``Conv4`` does).
        hidden, fc_hidden: channels and hidden units of that default module.

    Predictors return ``[Q, ways]`` relation scores (in ``[0, 1]`` for ``"mse"``, logits
    for ``"cross_entropy"``); the predicted class is the arg-max either way.
    """

    def __init__(
        self,
        encoder: nn.Module,
        relation_module: nn.Module | None = None,
        aggregate: Aggregate = "sum",
        loss: Literal["mse", "cross_entropy"] = "mse",
        input_shape: Sequence[int] | None = None,
        hidden: int = 64,
        fc_hidden: int = 8,
        channels_last: bool = False,
    ) -> None:
        if loss not in ("mse", "cross_entropy"):
            raise ValueError(f"RelationNet loss must be 'mse' or 'cross_entropy', got {loss!r}")
        if aggregate not in ("sum", "mean"):
            raise ValueError(f"aggregate must be 'sum' or 'mean', got {aggregate!r}")
        super().__init__(encoder, relation_mse if loss == "mse" else "cross_entropy", channels_last)
        self.loss_name = loss
        if relation_module is None:
            relation_module = default_relation_module(encoder, input_shape, hidden, fc_hidden)
        self.relation = relation_module
        self.aggregate = aggregate
        self.use_sigmoid = loss == "mse"

    def class_representations(self, z_support: Tensor, y_support: Tensor, ways: int) -> Tensor:
        """``s_k``, ``[T, ways, *E]``."""
        return class_sums(z_support, y_support, ways, mean=self.aggregate == "mean")

    def relation_scores(self, classes: Tensor, z_query: Tensor) -> Tensor:
        """``g_psi(concat(s_k, f(x_q)))`` for every pair: ``[T, Q, ways]`` (before sigmoid)."""
        t, ways, q = classes.shape[0], classes.shape[1], z_query.shape[1]
        if classes.shape[2:] != z_query.shape[2:]:
            raise ValueError(
                f"class and query embeddings differ in shape: {tuple(classes.shape[2:])} vs "
                f"{tuple(z_query.shape[2:])}"
            )
        feat = z_query.shape[2:]
        left = classes.unsqueeze(1).expand(t, q, ways, *feat)
        right = z_query.unsqueeze(2).expand(t, q, ways, *feat)
        pairs = torch.cat([left, right], dim=3).reshape(t * q * ways, 2 * feat[0], *feat[1:])
        out = self.relation(pairs)
        if out.numel() != t * q * ways or out.shape[0] != t * q * ways:
            raise ValueError(
                f"the relation module must output one score per pair, shape [{t * q * ways}] "
                f"or [{t * q * ways}, 1], got {tuple(out.shape)} for input "
                f"{tuple(pairs.shape)}"
            )
        return out.reshape(t, q, ways)

    def scores(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        out = self.relation_scores(self.class_representations(z_support, y_support, ways), z_query)
        return torch.sigmoid(out) if self.use_sigmoid else out

    def extra_repr(self) -> str:
        return f"aggregate={self.aggregate}, loss={self.loss_name}"
