"""The four-block convolutional backbone of the few-shot literature ("Conv-4").

Vinyals et al. (2016), Finn et al. (MAML, 2017) and Snell et al. (ProtoNet, 2017) use
four blocks of ``3x3 conv (padding 1) -> normalization -> ReLU -> 2x2 max-pool`` with 64
channels (MAML on Mini-ImageNet: 32).  MAML's Omniglot variant replaces the pooling by
stride-2 convolutions and averages the last feature map over space.

Spatial sizes (floor division, PyTorch's pooling): 28 -> 14 -> 7 -> 3 -> 1 (64 features),
84 -> 42 -> 21 -> 10 -> 5 (1,600 features at 64 channels); strided (ceil):
28 -> 14 -> 7 -> 4 -> 2.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from metaloop.models.backbone import Backbone, check_ways
from metaloop.models.norm import make_norm
from metaloop.validate import is_int


class ConvBlock(nn.Module):
    """``conv3x3 -> norm -> ReLU -> maxpool2`` (or ``conv3x3 stride 2 -> norm -> ReLU``);
    ``downsample=False`` keeps the spatial size (no pooling, stride 1).  ``convs > 1``
    inserts ``convs - 1`` more ``conv3x3 -> norm -> ReLU`` layers (stride 1) before the
    pooling: a deeper block at the same resolution (VGG's pattern)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str,
        strided: bool,
        downsample: bool = True,
        convs: int = 1,
        **norm_kwargs: Any,
    ) -> None:
        super().__init__()
        stride = 2 if strided and downsample else 1
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm = make_norm(norm, out_channels, **norm_kwargs)
        self.act = nn.ReLU()
        # at convs = 1 an Identity: no parameters, so one-conv checkpoints keep their names
        self.more = (
            nn.Sequential(
                *(
                    layer
                    for _ in range(convs - 1)
                    for layer in (
                        nn.Conv2d(out_channels, out_channels, 3, padding=1),
                        make_norm(norm, out_channels, **norm_kwargs),
                        nn.ReLU(),
                    )
                )
            )
            if convs > 1
            else nn.Identity()
        )
        self.pool = nn.MaxPool2d(2) if downsample and not strided else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.more(self.act(self.norm(self.conv(x)))))


class Conv4(Backbone):
    """Conv-4 backbone with an optional linear head (``metaloop.models.Backbone``).

    ``x [N, in_channels, S, S] -> logits [N, ways]`` (or the embedding ``[N,
    embedding_dim]`` when ``ways=None``, as Prototypical Networks need).

    Args:
        in_channels: image channels (1 for Omniglot, 3 for Mini-ImageNet).
        ways: outputs of the linear head; ``None`` for no head.
        hidden: channels of every block (64; MAML Mini-ImageNet uses 32).
        image_size: input side length, fixes the embedding size (with pooling at least
            ``2**blocks``, i.e. 16; any size when strided).
        norm: normalization policy (see ``metaloop.models.norm``): ``"batch_episode"``
            (default, MAML's transductive batch norm), ``"batch_running"``,
            ``"batch_per_step"``, ``"layer"``, ``"instance"``, ``"group"``, ``"none"``.
        strided: stride-2 convolutions instead of max-pooling (MAML's Omniglot model).
        global_pool: average the last feature map over space (embedding = ``hidden``
            features).  ``None``: ``True`` when ``strided`` (as MAML), else ``False``
            (flatten, as ProtoNet).
        blocks: number of blocks (4).
        pool_blocks: how many of the leading blocks halve the spatial size (max-pool or
            stride 2); the others keep it.  ``None``: all.  ``pool_blocks=3`` at 28x28
            keeps a 3x3 map (576 features at 64 channels instead of 64): a larger
            embedding for metric learners at the same convolution cost.
        convs_per_block: convolutions per block (1; 2 doubles the depth, "Conv-8", at
            twice the convolution cost of the blocks after the first).
        norm_kwargs: passed to ``make_norm`` (``groups``, ``steps``, ``momentum``, ...).

    Submodules: ``features`` (blocks and flattening; ANIL keeps it fixed in the inner
    loop) and ``head`` (``nn.Linear`` or ``None``; ANIL adapts only this, by the name
    prefix ``"head"``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        ways: int | None = 5,
        hidden: int = 64,
        image_size: int = 28,
        norm: str = "batch_episode",
        strided: bool = False,
        global_pool: bool | None = None,
        blocks: int = 4,
        pool_blocks: int | None = None,
        convs_per_block: int = 1,
        **norm_kwargs: Any,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("hidden", hidden),
            ("image_size", image_size),
            ("blocks", blocks),
            ("convs_per_block", convs_per_block),
        ):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_ways(ways)
        pool_blocks = blocks if pool_blocks is None else pool_blocks
        if (
            isinstance(pool_blocks, bool)
            or not isinstance(pool_blocks, int)
            or not (0 <= pool_blocks <= blocks)
        ):
            raise ValueError(
                f"pool_blocks must be an integer from 0 to blocks={blocks}, got {pool_blocks!r}"
            )
        global_pool = strided if global_pool is None else global_pool
        size = image_size
        for _ in range(pool_blocks):
            size = (size + 1) // 2 if strided else size // 2
            if size < 1:  # only pooling can shrink a map to nothing
                raise ValueError(
                    f"image_size={image_size} is too small for {pool_blocks} pooling blocks; "
                    f"use image_size >= {2**pool_blocks} (or strided=True)"
                )
        layers: list[nn.Module] = [
            ConvBlock(
                in_channels if i == 0 else hidden,
                hidden,
                norm,
                strided,
                downsample=i < pool_blocks,
                convs=convs_per_block,
                **norm_kwargs,
            )
            for i in range(blocks)
        ]
        if global_pool:
            layers.append(nn.AdaptiveAvgPool2d(1))
            size = 1
        layers.append(nn.Flatten())
        self.set_features(nn.Sequential(*layers), hidden * size * size, ways)
        self.in_channels, self.image_size, self.norm = in_channels, image_size, norm
