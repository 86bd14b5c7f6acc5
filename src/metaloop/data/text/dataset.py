"""Text datasets and episodes: ``TextDataset`` (a ``ClassDataset`` over the token-id
matrix) and ``TextEpisodicFamily`` (N-way K-shot episodes of intents as token ids,
optionally with out-of-scope queries in ``info["oos_x"]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.data.dataset import ClassDataset
from metaloop.data.episodes import ClassGroups, EpisodicFamily
from metaloop.data.text.errors import TextDataError
from metaloop.data.text.tokenizer import attention_mask
from metaloop.tasks.base import TaskBatch, TaskError, check_positive
from metaloop.tasks.registry import TaskSpec
from metaloop.validate import is_int


class TextDataset(ClassDataset):
    """Tokenised utterances grouped by intent: a ``ClassDataset`` whose storage is the
    token-id matrix ``[N, L]`` (long, ``0`` = padding) instead of images.

    ``texts[i]`` is item ``i``'s utterance; ``class_info[c]`` holds ``name`` (the intent)
    and ``domain``; ``truncated`` counts items cut to the maximum length when encoded.
    """

    def __init__(
        self,
        tokens: Tensor,
        labels: Tensor | Sequence[int],
        class_info: Sequence[Mapping[str, Any]],
        texts: Sequence[str] | None = None,
        *,
        truncated: int = 0,
        vocab_size: int | None = None,
        max_length: int | None = None,
        name: str = "text",
    ) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
            got = (
                f"{tuple(tokens.shape)} {tokens.dtype}"
                if isinstance(tokens, Tensor)
                else type(tokens).__name__
            )
            raise TextDataError(f"tokens must be a LongTensor [N, L] of token ids, got {got}")
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() != tokens.shape[0]:
            raise TextDataError(f"got {tokens.shape[0]} utterances but {labels.numel()} labels")
        if texts is not None and len(texts) != tokens.shape[0]:
            raise TextDataError(f"got {tokens.shape[0]} utterances but {len(texts)} texts")
        num_classes = len(class_info)
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
            raise TextDataError(f"labels must lie in 0..{num_classes - 1}")
        self.storage = tokens
        self.labels = labels
        self.rows = torch.arange(tokens.shape[0])
        self.rotations = torch.zeros(num_classes, dtype=torch.long)
        self.class_info = tuple(_frozen(i) for i in class_info)
        self.name = name
        self.texts = list(texts) if texts is not None else None
        self.truncated = int(truncated)
        #: the id range models must embed (``None``: the largest id stored + 1)
        largest = int(tokens.max()) if tokens.numel() else 2
        self.vocab_size = vocab_size if vocab_size is not None else largest + 1
        #: the most tokens per utterance the encoding allowed (``None``: the storage width)
        self.max_length = max_length if max_length is not None else int(tokens.shape[1])
        counts = torch.bincount(labels, minlength=num_classes)
        self.class_sizes = counts
        width = int(counts.max()) if num_classes and labels.numel() else 0
        table = torch.full((num_classes, width), -1, dtype=torch.long)
        for c in range(num_classes):
            members = torch.nonzero(labels == c).reshape(-1)
            table[c, : members.numel()] = members
        self.class_items = table

    @property
    def image_shape(self) -> tuple[int]:  # type: ignore[override]
        """``(L,)``: token ids per utterance (padded width)."""
        return (int(self.storage.shape[1]),)

    def gather(self, items: Tensor | Sequence[int]) -> Tensor:
        """Token ids of the given items, ``[*items.shape, L]``."""
        items = torch.as_tensor(items, dtype=torch.long)
        return self.storage[items.reshape(-1)].reshape(*items.shape, self.storage.shape[1])

    def subset(self, classes: Sequence[int], name: str | None = None) -> TextDataset:
        classes = [int(c) for c in classes]
        for c in classes:
            self._check_class(c)
        if len(set(classes)) != len(classes):
            raise TaskError("subset classes must be distinct")
        mapping = torch.full((self.num_classes,), -1, dtype=torch.long)
        mapping[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
        keep = torch.nonzero(mapping[self.labels] >= 0).reshape(-1)
        texts = [self.texts[i] for i in keep.tolist()] if self.texts is not None else None
        return TextDataset(
            self.storage[keep],
            mapping[self.labels[keep]],
            [self.class_info[c] for c in classes],
            texts,
            truncated=self.truncated,
            vocab_size=self.vocab_size,
            max_length=self.max_length,
            name=name or self.name,
        )

    def __repr__(self) -> str:
        return (
            f"TextDataset({self.name!r}, intents={self.num_classes}, utterances={len(self)}, "
            f"max_tokens={self.storage.shape[1]}, truncated={self.truncated})"
        )


def _frozen(info: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(info))


def check_utterances_per_intent(dataset: ClassDataset, shots: int, queries: int) -> None:
    """Raise ``TextDataError`` naming the first intent with fewer than ``shots + queries``
    utterances (an episode could not draw its support and query sets from it)."""
    need = shots + queries
    short = torch.nonzero(dataset.class_sizes < need).reshape(-1).tolist()
    if short:
        c = short[0]
        raise TextDataError(
            f"intent {dataset.class_info[c].get('name', c)!r} has {int(dataset.class_sizes[c])} "
            f"utterances, fewer than shots + queries = {shots} + {queries} = {need} "
            f"({len(short)} intent(s) short); choose shots + queries <= "
            f"{int(dataset.class_sizes.min())}"
        )


def trim_padding(*ids: Tensor) -> tuple[Tensor, ...]:
    """All of ``ids`` at one width: the longest utterance among them (trailing padding
    columns cut, narrower tensors padded with ``0``)."""
    width = 1
    for t in ids:
        if t.numel():
            lengths = attention_mask(t).sum(-1)
            width = max(width, int(lengths.max()))
    return tuple(
        t[..., :width] if t.shape[-1] >= width else F.pad(t, (0, width - t.shape[-1])) for t in ids
    )


class TextEpisodicFamily(EpisodicFamily):
    """N-way K-shot episodes of intents (a ``TaskFamily``), inputs as token ids.

    ``sample(T, generator)`` gives ``support_x [T, ways*shots, L]`` and ``query_x [T,
    ways*queries, L]`` (long, ``0`` = padding, ``L`` = the longest utterance of the batch),
    labels ``0..ways-1`` freshly permuted per episode and ``info["classes"]`` (dataset
    intents behind the labels), exactly like the image families.

    With ``oos`` (token ids ``[M, L]`` of out-of-scope utterances) and ``oos_queries = m >
    0``, every episode also carries ``m`` distinct out-of-scope utterances drawn from
    ``oos`` in ``info["oos_x"] [T, m, L]`` (same width ``L``): extra queries that belong to
    none of the episode's intents (``metaloop.evaluation.oos``).  The in-scope batch is
    unchanged by them, so every learner takes it as is.

    With ``trim=False`` every batch keeps the dataset's full width ``L = max_length``
    instead: one input shape for the whole run, which ``torch.compile`` needs (each new
    width would otherwise be a recompilation, and dynamo runs eagerly after 8 of them).
    The numbers are the same (the encoders ignore padding, ``models.text``).

    Every intent must have at least ``shots + queries`` utterances (``TextDataError``
    naming the intent otherwise).
    """

    def __init__(
        self,
        dataset: TextDataset,
        ways: int,
        shots: int,
        queries: int,
        *,
        class_groups: ClassGroups = None,
        oos: Tensor | None = None,
        oos_queries: int = 0,
        trim: bool = True,
    ) -> None:
        if not isinstance(dataset, TextDataset):
            raise TextDataError(f"dataset must be a TextDataset, got {type(dataset).__name__}")
        for k, v in (("ways", ways), ("shots", shots), ("queries", queries)):
            check_positive(k, v)
        check_utterances_per_intent(dataset, shots, queries)
        super().__init__(dataset, ways, shots, queries, class_groups=class_groups)
        if not is_int(oos_queries) or oos_queries < 0:
            raise TextDataError(f"oos_queries must be an integer >= 0, got {oos_queries!r}")
        if oos_queries and oos is None:
            raise TextDataError(
                f"oos_queries = {oos_queries} needs out-of-scope utterances (oos=...)"
            )
        if oos is not None and oos_queries > oos.shape[0]:
            raise TextDataError(
                f"oos_queries = {oos_queries} exceeds the {oos.shape[0]} out-of-scope "
                f"utterances; choose oos_queries <= {oos.shape[0]}"
            )
        if not isinstance(trim, bool):
            raise TextDataError(f"trim must be True or False, got {trim!r}")
        self.oos = oos
        self.oos_queries = oos_queries
        self.trim = trim

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        classes, items = self.plan.sample(batch_size, generator)
        tokens = self.dataset.gather(items)  # [T, ways, shots + queries, L]
        oos_x = None
        if self.oos_queries:
            assert self.oos is not None
            keys = torch.rand(batch_size, self.oos.shape[0], generator=generator)
            pick = keys.topk(self.oos_queries, dim=1, largest=False).indices
            oos_x = self.oos[pick]
            tokens, oos_x = self._width(tokens, oos_x)
        else:
            (tokens,) = self._width(tokens)
        T, ways, shots = batch_size, self.ways, self.shots
        queries = self.queries
        labels = torch.arange(ways)
        info: dict[str, Any] = {"classes": classes}
        if oos_x is not None:
            info["oos_x"] = oos_x
        return TaskBatch(
            tokens[:, :, :shots].reshape(T, ways * shots, -1),
            labels.repeat_interleave(shots).expand(T, -1).contiguous(),
            tokens[:, :, shots:].reshape(T, ways * queries, -1),
            labels.repeat_interleave(queries).expand(T, -1).contiguous(),
            ways,
            info=info,
        )

    def _width(self, *ids: Tensor) -> tuple[Tensor, ...]:
        """``ids`` cut to the batch's longest utterance, or (``trim=False``) all at the
        dataset's ``max_length``."""
        if self.trim:
            return trim_padding(*ids)
        width = self.dataset.max_length
        return tuple(F.pad(t[..., :width], (0, width - min(t.shape[-1], width))) for t in ids)

    def with_shape(
        self,
        ways: int | None = None,
        shots: int | None = None,
        queries: int | None = None,
        **overrides: Any,
    ) -> TextEpisodicFamily:
        """The same intents with other episode sizes; ``overrides`` may replace
        ``class_groups``, ``oos`` or ``oos_queries``."""
        kwargs: dict[str, Any] = {
            "class_groups": self.class_groups,
            "oos": self.oos,
            "oos_queries": self.oos_queries,
            "trim": self.trim,
        }
        unknown = set(overrides) - set(kwargs)
        if unknown:
            raise TypeError(
                f"with_shape got unknown overrides {sorted(unknown)}; allowed: {sorted(kwargs)}"
            )
        kwargs.update(overrides)
        return TextEpisodicFamily(
            self.dataset,  # type: ignore[arg-type]
            self.ways if ways is None else ways,
            self.shots if shots is None else shots,
            self.queries if queries is None else queries,
            **kwargs,
        )

    @property
    def spec(self) -> TaskSpec:
        """Token ids ``[max_length]`` in, ``ways`` class scores out, the part's intents as
        ``num_classes``; ``model_hints`` size the text models (vocabulary, positions)."""
        ds = self.dataset
        return _text_spec(self.ways, ds.max_length, ds.vocab_size, self.num_classes)

    def __repr__(self) -> str:
        oos = f", oos_queries={self.oos_queries}" if self.oos_queries else ""
        trim = "" if self.trim else ", trim=False"
        return (
            f"TextEpisodicFamily({self.dataset.name!r}, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, intents={self.usable_classes}{oos}{trim})"
        )


def _text_spec(ways: int, max_length: int, vocab_size: int, num_classes: int | None) -> TaskSpec:
    sizes = {"vocab_size": vocab_size}
    return TaskSpec(
        input_shape=(max_length,),
        y_dim=ways,
        classification=True,
        ways=ways,
        num_classes=num_classes,
        model_hints={
            "text_bag": sizes,
            "text_cnn": sizes,
            "text_transformer": {**sizes, "max_length": max_length},
        },
    )
