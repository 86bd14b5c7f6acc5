"""Few-shot text classification: CLINC150 intents as classes, token ids as inputs.

The pieces, in the order data flows through them:

* ``read_clinc150(path)``: CLINC150's ``data_full.json`` (``train``, ``val``, ``test``,
  ``oos_train``, ``oos_val``, ``oos_test``: lists of ``[utterance, intent]``) and
  ``domains.json`` (domain -> its 15 intents), validated with one-line errors.  Few-shot
  intent detection splits *classes*, not utterances, so the 100 + 20 + 30 utterances of an
  intent are pooled: each intent is one class of 150 utterances.
* ``split_intents(data, protocol)``: which intents meta-train, meta-validate and test.
  ``"random"``: a seeded shuffle of the 150 intents, 100 / 20 / 30; ``"domain"``: a seeded
  shuffle of the 10 domains, the intents of 5 / 2 / 3 domains (75 / 30 / 45 intents: the
  test topics were never seen in training).
* ``train_tokenizer(utterances)``: a WordPiece (or BPE) vocabulary of the ``tokenizers``
  package, trained on the **meta-training utterances only** (lower-cased, accents
  stripped, split on whitespace and punctuation).  Ids ``0, 1, 2`` are ``[PAD]``, ``[UNK]``
  and ``[CLS]``; every encoded utterance starts with ``[CLS]``.  The tokenizer is saved as
  one JSON file (in the run directory) and read back for evaluation.
* ``encode(tokenizer, utterances, max_length)``: a LongTensor ``[N, L]`` of token ids,
  right-padded with ``0``; the attention mask is ``ids != 0`` (``attention_mask``), so an
  episode stays four plain tensors through the engine (``vmap``, ``functional_call``).
  Utterances longer than ``max_length`` tokens are cut and *counted*
  (``Encoded.truncated``), never silently.
* ``TextDataset``: a ``ClassDataset`` whose storage is the ``[N, L]`` token matrix, so the
  image families' episode sampler (``EpisodePlan``) draws N-way K-shot episodes from it
  unchanged; ``TextEpisodicFamily`` turns the drawn items into a ``TaskBatch`` (token ids
  ``[T, ways*shots, L]``, ``L`` cut to the longest utterance in the batch) and may add
  out-of-scope utterances per episode in ``info["oos_x"]`` (``metaloop.evaluation.oos``).
* ``clinc150_split(...)``: all of it in one call, returning a ``TextSplit`` (the three
  ``TextDataset`` parts, the out-of-scope utterances of each part, the tokenizer).

One job per module: ``clinc_reader`` (reading, validation, intent splits),
``tokenizer`` (train, save, load, encode, attention mask), ``dataset`` (``TextDataset``,
``TextEpisodicFamily``, ``trim_padding``), ``split`` (``clinc150_split``, ``TextSplit``)
and ``family`` (the registered ``clinc150`` family); ``errors`` holds ``TextDataError``.
Importing this package registers the family.
"""

from __future__ import annotations

from metaloop.data.text.clinc_reader import (
    CLINC_PARTS,
    OOS_PARTS,
    PROTOCOLS,
    Clinc150,
    Protocol,
    default_clinc_root,
    parse_clinc150,
    read_clinc150,
    split_intents,
)
from metaloop.data.text.dataset import (
    TextDataset,
    TextEpisodicFamily,
    check_utterances_per_intent,
    trim_padding,
)
from metaloop.data.text.errors import TextDataError
from metaloop.data.text.family import (
    CLINC_DATA_KEYS,
    TEXT_MODELS,
    TOKENIZER_FILE,
    clinc150,
    clinc150_spec,
    load_run_split,
)
from metaloop.data.text.split import (
    TextSplit,
    clinc150_split,
    meta_training_utterances,
)
from metaloop.data.text.tokenizer import (
    CLS,
    PAD,
    PAD_ID,
    SPECIAL_TOKENS,
    TOKENIZER_KINDS,
    UNK,
    Encoded,
    attention_mask,
    encode,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

__all__ = [
    "CLINC_DATA_KEYS",
    "CLINC_PARTS",
    "CLS",
    "OOS_PARTS",
    "PAD",
    "PAD_ID",
    "PROTOCOLS",
    "SPECIAL_TOKENS",
    "TEXT_MODELS",
    "TOKENIZER_FILE",
    "TOKENIZER_KINDS",
    "UNK",
    "Clinc150",
    "Encoded",
    "Protocol",
    "TextDataError",
    "TextDataset",
    "TextEpisodicFamily",
    "TextSplit",
    "attention_mask",
    "check_utterances_per_intent",
    "clinc150",
    "clinc150_spec",
    "clinc150_split",
    "default_clinc_root",
    "encode",
    "load_run_split",
    "load_tokenizer",
    "meta_training_utterances",
    "parse_clinc150",
    "read_clinc150",
    "save_tokenizer",
    "split_intents",
    "train_tokenizer",
    "trim_padding",
]
