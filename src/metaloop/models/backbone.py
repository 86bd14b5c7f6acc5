"""What the image backbones share: a ``features`` module that maps ``[N, C, H, W]`` to an
embedding ``[N, embedding_dim]``, then an optional linear ``head`` to ``ways`` logits.
Learners rely on the two names: ANIL and Proto-MAML adapt the ``head``, metric learners
use the embedding (``ways=None``)."""

from __future__ import annotations

from torch import Tensor, nn

from metaloop.validate import is_int


def check_ways(ways: object) -> None:
    """Raise ``ValueError`` unless ``ways`` is a positive integer or ``None`` (no head)."""
    if ways is not None and (not is_int(ways) or ways < 1):
        raise ValueError(f"ways must be a positive integer or None (no head), got {ways!r}")


class Backbone(nn.Module):
    """``x -> head(features(x))``, or ``features(x)`` when there is no head."""

    features: nn.Module
    head: nn.Linear | None

    def set_features(self, features: nn.Module, embedding_dim: int, ways: int | None) -> None:
        """Install ``features`` (output ``[N, embedding_dim]``) and, unless ``ways`` is
        ``None``, a linear head ``embedding_dim -> ways``."""
        check_ways(ways)
        self.features = features
        self.embedding_dim = embedding_dim
        self.head = nn.Linear(embedding_dim, ways) if ways is not None else None
        self.ways = ways
        self.out_features = ways if ways is not None else embedding_dim

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(x)
        return z if self.head is None else self.head(z)

    def embed(self, x: Tensor) -> Tensor:
        """The embedding ``[N, embedding_dim]`` (the input of the head)."""
        return self.features(x)
