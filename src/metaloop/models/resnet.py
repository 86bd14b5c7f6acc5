"""ResNet-12, the residual backbone of the later few-shot literature (Oreshkin et al.
2018, TADAM; Lee et al. 2019, MetaOptNet).

Four residual blocks, each

    y = maxpool2( act( N3(C3(act(N2(C2(act(N1(C1(x)))))))) + Ns(Cs(x)) ) ),

with ``C1..C3`` 3x3 convolutions (padding 1, no bias), ``Cs`` a 1x1 convolution on the
shortcut, ``N*`` normalization layers of one policy (``metaloop.models.norm``) and ``act``
LeakyReLU with slope 0.1.  The last feature map is averaged over space.  Twelve
convolutions on the main path, hence the name.

Spatial sizes: 28 -> 14 -> 7 -> 3 -> 1, 84 -> 42 -> 21 -> 10 -> 5.  The standard widths
are (64, 160, 320, 640); narrower ones, e.g. (64, 64, 128, 128), suit the 28x28 images of
Omniglot and a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from metaloop.models.backbone import Backbone, check_ways
from metaloop.models.norm import make_norm
from metaloop.validate import is_int


class ResidualBlock(nn.Module):
    """Three ``conv3x3 -> norm`` layers with a ``conv1x1 -> norm`` shortcut, summed, then
    LeakyReLU(0.1) and (``downsample``) a 2x2 max-pool."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str,
        downsample: bool = True,
        slope: float = 0.1,
        **norm_kwargs: Any,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            c_in = in_channels if i == 0 else out_channels
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=False))
            layers.append(make_norm(norm, out_channels, **norm_kwargs))
            if i < 2:
                layers.append(nn.LeakyReLU(slope))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            make_norm(norm, out_channels, **norm_kwargs),
        )
        self.act = nn.LeakyReLU(slope)
        self.pool = nn.MaxPool2d(2) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class ResNet12(Backbone):
    """ResNet-12 with an optional linear head; the same interface as ``Conv4``.

    ``x [N, in_channels, S, S] -> logits [N, ways]``, or the embedding ``[N,
    embedding_dim]`` when ``ways=None`` (metric learners).

    Args:
        in_channels: image channels (1 for Omniglot, 3 for Mini-ImageNet).
        ways: outputs of the linear head; ``None`` for no head.
        widths: channels of the four blocks (any number of blocks >= 1); the embedding has
            ``widths[-1]`` features (global average pooling).
        image_size: input side length; at least ``2**len(widths)`` (every block pools).
        norm: normalization policy (``metaloop.models.norm``; default ``"batch_episode"``).
        slope: negative slope of the LeakyReLU activations.
        norm_kwargs: passed to ``make_norm``.

    Submodules: ``features`` (blocks, pooling, flattening) and ``head`` (``nn.Linear`` or
    ``None``), as ANIL and Proto-MAML expect.
    """

    def __init__(
        self,
        in_channels: int = 1,
        ways: int | None = 5,
        widths: Sequence[int] = (64, 160, 320, 640),
        image_size: int = 84,
        norm: str = "batch_episode",
        slope: float = 0.1,
        **norm_kwargs: Any,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        for name, value in (("in_channels", in_channels), ("image_size", image_size)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not widths or any(not is_int(w) or w < 1 for w in widths):
            raise ValueError(
                f"widths must be a non-empty list of positive integers, got {widths!r}"
            )
        check_ways(ways)
        if image_size < 2 ** len(widths):
            raise ValueError(
                f"image_size={image_size} is too small for {len(widths)} pooling blocks; use "
                f"image_size >= {2 ** len(widths)} or fewer widths"
            )
        if not isinstance(slope, (int, float)) or slope < 0:
            raise ValueError(f"slope must be a number >= 0, got {slope!r}")
        blocks = [
            ResidualBlock(c_in, c_out, norm, slope=float(slope), **norm_kwargs)
            for c_in, c_out in zip((in_channels, *widths[:-1]), widths)
        ]
        features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.set_features(features, widths[-1], ways)
        self.in_channels, self.image_size = in_channels, image_size
        self.widths, self.norm = widths, norm
