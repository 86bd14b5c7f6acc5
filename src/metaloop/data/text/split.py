"""CLINC150 in one call: ``clinc150_split`` reads the data, splits the intents, trains
(or reads) the tokenizer and encodes every part, returning a ``TextSplit``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from metaloop.data.splits import ClassSplit, check_disjoint
from metaloop.data.text.clinc_reader import (
    CLINC_PARTS,
    Clinc150,
    Protocol,
    read_clinc150,
    split_intents,
)
from metaloop.data.text.dataset import TextDataset
from metaloop.data.text.errors import TextDataError
from metaloop.data.text.tokenizer import (
    encode,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)


@dataclass(frozen=True)
class TextSplit(ClassSplit):
    """A ``ClassSplit`` of ``TextDataset`` parts plus the out-of-scope token ids of each
    part (``oos["val"]`` from CLINC's ``oos_val``, ``oos["test"]`` from ``oos_test``), the
    tokenizer and how many utterances were truncated per part."""

    oos: Mapping[str, Tensor] = field(default_factory=dict)
    tokenizer: Any = None
    truncated: Mapping[str, int] = field(default_factory=dict)
    intents: Mapping[str, list[str]] = field(default_factory=dict)

    def report(self) -> str:
        """One line per part: intents, utterances, truncated count."""
        lines = [self.description]
        for name, ds in self.parts():
            extra = f", {self.oos[name].shape[0]} out-of-scope" if name in self.oos else ""
            lines.append(
                f"  {name}: {ds.num_classes} intents, {len(ds)} utterances{extra}, "
                f"{self.truncated.get(name, 0)} truncated to max_length"
            )
        return "\n".join(lines)


def _build_part(
    data: Clinc150,
    intents: list[str],
    tokenizer: Any,
    max_length: int,
    name: str,
    vocab_size: int,
) -> TextDataset:
    texts: list[str] = []
    labels: list[int] = []
    for c, intent in enumerate(intents):
        us = data.utterances[intent]
        texts.extend(us)
        labels.extend([c] * len(us))
    enc = encode(tokenizer, texts, max_length)
    info = [{"name": i, "intent": i, "domain": data.domain_of(i)} for i in intents]
    return TextDataset(
        enc.ids,
        labels,
        info,
        texts,
        truncated=enc.truncated,
        vocab_size=max(vocab_size, tokenizer.get_vocab_size()),
        max_length=max_length,
        name=name,
    )


def meta_training_utterances(data: Clinc150, intents: Sequence[str]) -> list[str]:
    """The utterances a tokenizer may learn from: those of the meta-training intents."""
    return [u for i in intents for u in data.utterances[i]]


def clinc150_split(
    root: str | os.PathLike[str] | Clinc150 | None = None,
    protocol: Protocol = "random",
    seed: int = 0,
    *,
    tokenizer: Any = None,
    tokenizer_path: str | os.PathLike[str] | None = None,
    tokenizer_kind: str = "wordpiece",
    vocab_size: int = 4000,
    max_length: int = 32,
    **split_kwargs: Any,
) -> TextSplit:
    """CLINC150 split by intent, tokenised, ready for ``TextEpisodicFamily``.

    The tokenizer is, in order: ``tokenizer`` if given; the file ``tokenizer_path`` if it
    exists (evaluation reads the run's own); else trained on the meta-training intents'
    utterances only (``train_tokenizer``) and, with ``tokenizer_path``, saved there.
    ``split_kwargs`` go to ``split_intents`` (``train``, ``val``, ``train_domains``,
    ``val_domains``).
    """
    data = root if isinstance(root, Clinc150) else read_clinc150(root)
    intents = split_intents(data, protocol, seed, **split_kwargs)
    if tokenizer is None:
        if tokenizer_path is not None and Path(tokenizer_path).is_file():
            tokenizer = load_tokenizer(tokenizer_path)
            if tokenizer.get_vocab_size() > vocab_size:
                raise TextDataError(
                    f"{tokenizer_path} holds {tokenizer.get_vocab_size()} tokens but "
                    f"vocab_size = {vocab_size}; use the run's own settings or a new run"
                )
        else:
            corpus = meta_training_utterances(data, intents["train"])
            tokenizer = train_tokenizer(corpus, vocab_size, tokenizer_kind)
            if tokenizer_path is not None:
                save_tokenizer(tokenizer, tokenizer_path)
    parts: dict[str, TextDataset | None] = {}
    for part in CLINC_PARTS:
        parts[part] = (
            _build_part(data, intents[part], tokenizer, max_length, f"clinc150:{part}", vocab_size)
            if intents[part]
            else None
        )
    oos: dict[str, Tensor] = {}
    for part in ("val", "test"):
        if data.oos.get(part):
            oos[part] = encode(tokenizer, data.oos[part], max_length).ids
    truncated = {p: d.truncated for p, d in parts.items() if d is not None}
    domains = {p: sorted({data.domain_of(i) for i in intents[p]}) for p in CLINC_PARTS}
    description = (
        f"CLINC150 {protocol} split (seed {seed}): "
        + "; ".join(
            f"{p} {len(intents[p])} intents"
            + (f" ({', '.join(domains[p])})" if protocol == "domain" else "")
            for p in CLINC_PARTS
        )
        + f"; tokenizer {tokenizer_kind}, {tokenizer.get_vocab_size()} tokens, trained on the "
        "meta-training utterances"
    )
    split = TextSplit(
        parts["train"],  # type: ignore[arg-type]
        parts["val"],
        parts["test"],  # type: ignore[arg-type]
        f"clinc150-{protocol}",
        description,
        oos=oos,
        tokenizer=tokenizer,
        truncated=truncated,
        intents=intents,
    )
    check_disjoint(split, "intent")
    return split
