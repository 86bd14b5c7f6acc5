"""Tokenisation of utterances: a ``tokenizers`` vocabulary trained on the meta-training
utterances only, saved and read back as one JSON file, and ``encode`` to right-padded
token ids whose attention mask is ``ids != 0``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaloop.data.text.errors import TextDataError
from metaloop.validate import is_int

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS = (PAD, UNK, CLS)  # ids 0, 1, 2
PAD_ID = 0
TOKENIZER_KINDS = ("wordpiece", "bpe")


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as err:  # pragma: no cover - tokenizers is a dev dependency
        raise ImportError(
            "text data needs the 'tokenizers' package: pip install 'metaloop[text]'"
        ) from err
    return tokenizers


def train_tokenizer(
    utterances: Sequence[str], vocab_size: int = 4000, kind: str = "wordpiece"
) -> Any:
    """A ``tokenizers.Tokenizer`` trained on ``utterances`` (pass meta-training ones only).

    Normalisation: Unicode NFD, lower case, accents stripped; pre-tokenisation: whitespace
    and punctuation; model: WordPiece (continuation pieces prefixed ``##``) or byte-pair
    encoding, ``vocab_size`` tokens at most including ``[PAD]`` (id 0), ``[UNK]`` (1) and
    ``[CLS]`` (2).  Every encoding starts with ``[CLS]``.
    """
    tk = _require_tokenizers()
    if kind not in TOKENIZER_KINDS:
        raise TextDataError(
            f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}"
        )
    if not is_int(vocab_size) or vocab_size < 8:
        raise TextDataError(f"vocab_size must be an integer >= 8, got {vocab_size!r}")
    if not utterances:
        raise TextDataError("cannot train a tokenizer on zero utterances")
    if kind == "wordpiece":
        tokenizer = tk.Tokenizer(tk.models.WordPiece(unk_token=UNK))
        trainer = tk.trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
        )
    else:
        tokenizer = tk.Tokenizer(tk.models.BPE(unk_token=UNK))
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
        )
    tokenizer.normalizer = tk.normalizers.Sequence(
        [tk.normalizers.NFD(), tk.normalizers.Lowercase(), tk.normalizers.StripAccents()]
    )
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(list(utterances), trainer=trainer)
    tokenizer.post_processor = tk.processors.TemplateProcessing(
        single=f"{CLS} $A", special_tokens=[(CLS, tokenizer.token_to_id(CLS))]
    )
    _check_special_ids(tokenizer, "the trained tokenizer")
    return tokenizer


def _check_special_ids(tokenizer: Any, where: str) -> None:
    for expected, token in enumerate(SPECIAL_TOKENS):
        got = tokenizer.token_to_id(token)
        if got != expected:
            raise TextDataError(
                f"{where}: token {token} has id {got}, expected {expected} "
                f"({', '.join(f'{t}={i}' for i, t in enumerate(SPECIAL_TOKENS))})"
            )


def save_tokenizer(tokenizer: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Read a tokenizer saved by ``save_tokenizer`` (checks the special-token ids)."""
    tk = _require_tokenizers()
    path = Path(path)
    if not path.is_file():
        raise TextDataError(f"tokenizer file {str(path)!r} not found")
    try:
        tokenizer = tk.Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises plain Exception
        raise TextDataError(f"{path}: not a tokenizer file ({err})".splitlines()[0]) from err
    _check_special_ids(tokenizer, str(path))
    return tokenizer


@dataclass(frozen=True)
class Encoded:
    """Token ids ``[N, L]`` (``0`` = padding, ``L`` = the longest kept utterance) and the
    number of utterances cut to ``max_length`` tokens."""

    ids: Tensor
    truncated: int
    max_length: int


def encode(tokenizer: Any, utterances: Sequence[str], max_length: int = 32) -> Encoded:
    """Token ids of ``utterances``, right-padded with ``0``, cut to ``max_length`` tokens
    (``[CLS]`` included); the cut ones are counted in ``Encoded.truncated``."""
    if not is_int(max_length) or max_length < 2:
        raise TextDataError(f"max_length must be an integer >= 2 (tokens), got {max_length!r}")
    for i, u in enumerate(utterances):
        if not isinstance(u, str) or not u.strip():
            raise TextDataError(
                f"utterance {i} is empty ({u!r}); every utterance needs a non-space character"
            )
    rows = [e.ids for e in tokenizer.encode_batch(list(utterances))]
    truncated = sum(len(r) > max_length for r in rows)
    width = min(max_length, max((len(r) for r in rows), default=1))
    padded = [r[:width] + [PAD_ID] * (width - len(r[:width])) for r in rows]
    ids = torch.tensor(padded, dtype=torch.long).reshape(len(rows), width)
    return Encoded(ids, int(truncated), max_length)


def attention_mask(ids: Tensor) -> Tensor:
    """``ids != 0``: true at real tokens, false at padding."""
    return ids != PAD_ID
