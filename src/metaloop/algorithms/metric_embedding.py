"""Embedding a task's support and query examples with a shared encoder (``metric.py``):
one forward pass per batch, or per episode when the encoder normalises with batch
statistics, optionally averaged over translated views (test-time shift).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from metaloop.data.transforms import shift_views, translate
from metaloop.functional.params import call
from metaloop.functional.speed import uses_batch_statistics
from metaloop.tasks.base import TaskBatch, TaskError

# -- embedding ---------------------------------------------------------------------------


def _check_images(example_shape: torch.Size) -> None:
    if len(example_shape) != 3:
        raise TaskError(
            "test-time shift translates images: examples must be [C, H, W], got shape "
            f"{tuple(example_shape)}"
        )


def embed(encoder: nn.Module, x: Tensor, test_time_shift: int = 0) -> Tensor:
    """``encoder(x)`` with a clear error when the output does not have one row per input;
    with ``test_time_shift`` the mean over translated views (see ``embed_batch``)."""
    if test_time_shift:
        _check_images(x.shape[1:])
        views = shift_views(test_time_shift)
        return torch.stack([embed(encoder, translate(x, dx, dy)) for dx, dy in views]).mean(0)
    z = encoder(x)
    if not isinstance(z, Tensor) or z.dim() < 2 or z.shape[0] != x.shape[0]:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(
            f"the encoder must map {x.shape[0]} inputs of shape {tuple(x.shape[1:])} to "
            f"[{x.shape[0]}, ...] embeddings, got {shape}"
        )
    return z


def encoder_embedding(
    encoder: nn.Module,
    x: Tensor,
    params: Mapping[str, Tensor] | None = None,
    test_time_shift: int = 0,
) -> Tensor:
    """``f_phi(x)`` of ``encoder`` (``embed``), with ``params`` in place of the encoder's
    own parameters of those names when given (``MetaLearner.embed``).  A name the encoder
    does not have is an error naming it."""
    if params is None:
        return embed(encoder, x, test_time_shift)
    own = dict(encoder.named_parameters())
    unknown = sorted(set(params) - set(own))
    if unknown:
        raise ValueError(
            f"{type(encoder).__name__} has no parameter {unknown[0]!r}; its parameters are: "
            f"{', '.join(own)}"
        )
    buffers = dict(encoder.named_buffers())

    def substituted(inputs: Tensor) -> Tensor:
        return call(encoder, params, buffers, inputs)

    return embed(substituted, x, test_time_shift)  # type: ignore[arg-type]


def _check_same_features(support_shape: torch.Size, query_shape: torch.Size) -> None:
    if support_shape != query_shape:
        raise TaskError(
            f"support and query features differ in shape: {tuple(support_shape)} vs "
            f"{tuple(query_shape)}"
        )


def embed_episode(
    encoder: nn.Module, support_x: Tensor, query_x: Tensor, test_time_shift: int = 0
) -> tuple[Tensor, Tensor]:
    """``(z_support, z_query)`` of one episode from one forward pass over both sets.

    With batch-statistics normalisation (``batch_episode``) every embedding is then
    normalised with the statistics of its own episode, support and query together: the
    convention of training (``meta_loss``), evaluation (``embed_batch``) and ``adapt``.
    """
    _check_same_features(support_x.shape[1:], query_x.shape[1:])
    z = embed(encoder, torch.cat([support_x, query_x]), test_time_shift)
    return z[: support_x.shape[0]], z[support_x.shape[0] :]


def embed_batch(
    encoder: nn.Module, batch: TaskBatch, test_time_shift: int = 0
) -> tuple[Tensor, Tensor]:
    """Embed all support and query examples of a batch.

    Returns ``z_support [T, S, *E]`` and ``z_query [T, Q, *E]`` where ``E`` is the
    encoder's output shape per example (a vector or a feature map).  One forward pass for
    the whole batch when the encoder treats inputs independently; one per episode
    (``embed_episode``) when it normalises with batch statistics, so that no episode's
    embeddings depend on the other episodes of the batch.

    ``test_time_shift = s > 0`` (images only) averages the embeddings of the
    ``(2s + 1)^2`` translations of every image by up to ``s`` pixels per axis,
    ``z(x) = mean_{(dx, dy)} f(translate(x, dx, dy))``, one forward pass per translation
    (test-time augmentation; the border is filled with 0, Omniglot's background).
    """
    sx, qx = batch.support_x, batch.query_x
    t, s, q = sx.shape[0], sx.shape[1], qx.shape[1]
    _check_same_features(sx.shape[2:], qx.shape[2:])
    if t > 1 and uses_batch_statistics(encoder):
        pairs = [embed_episode(encoder, sx[i], qx[i], test_time_shift) for i in range(t)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    x = torch.cat([sx.reshape(t * s, *sx.shape[2:]), qx.reshape(t * q, *qx.shape[2:])])
    z = embed(encoder, x, test_time_shift)
    return z[: t * s].reshape(t, s, *z.shape[1:]), z[t * s :].reshape(t, q, *z.shape[1:])
