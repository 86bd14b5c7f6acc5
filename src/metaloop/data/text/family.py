"""The registered family ``[task] family = "clinc150"``: its ``[data]`` keys, its spec
(read without touching a file) and the split of a command, built once per command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaloop.data.text.clinc_reader import PROTOCOLS
from metaloop.data.text.dataset import TextEpisodicFamily, _text_spec
from metaloop.data.text.errors import TextDataError
from metaloop.data.text.split import TextSplit, clinc150_split
from metaloop.data.text.tokenizer import TOKENIZER_KINDS
from metaloop.tasks.base import check_positive
from metaloop.tasks.registry import FamilyContext, TaskSpec, register_family
from metaloop.validate import is_int

#: the ``[data]`` keys of CLINC150 runs and their defaults (``root`` is shared with Omniglot)
CLINC_DATA_KEYS: dict[str, Any] = {
    "root": "",
    "text_split": "random",
    "tokenizer": "wordpiece",
    "vocab_size": 4000,
    "max_length": 32,
    # out-of-scope queries per evaluation episode under the "oos" protocol
    "oos_queries": 15,
    # false: every batch max_length wide (one shape for torch.compile), not cut to its
    # longest utterance
    "trim_batches": True,
}
TOKENIZER_FILE = "tokenizer.json"
#: model names the family sizes (``vocab_size``, and the transformer's ``max_length``)
TEXT_MODELS = ("text_bag", "text_cnn", "text_transformer")


def _clinc_data(context: FamilyContext) -> dict[str, Any]:
    d = {**CLINC_DATA_KEYS, **context.data}
    if d["text_split"] not in PROTOCOLS:
        raise TextDataError(
            f"data.text_split must be one of {', '.join(PROTOCOLS)}, got {d['text_split']!r}"
        )
    if d["tokenizer"] not in TOKENIZER_KINDS:
        raise TextDataError(
            f"data.tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {d['tokenizer']!r}"
        )
    for key, low in (("vocab_size", 8), ("max_length", 2), ("oos_queries", 0)):
        v = d[key]
        if not is_int(v) or v < low:
            raise TextDataError(f"data.{key} must be an integer >= {low}, got {v!r}")
    if not isinstance(d["trim_batches"], bool):
        raise TextDataError(f"data.trim_batches must be true or false, got {d['trim_batches']!r}")
    return d


def clinc150_spec(
    ways: int = 5, shots: int = 1, queries: int = 15, *, context: FamilyContext
) -> TaskSpec:
    """Token ids ``[max_length]`` in, ``ways`` class scores out; reads no file."""
    for k, v in (("ways", ways), ("shots", shots), ("queries", queries)):
        check_positive(k, v)
    d = _clinc_data(context)
    return _text_spec(ways, d["max_length"], d["vocab_size"], None)


def load_run_split(context: FamilyContext) -> TextSplit:
    """The ``TextSplit`` of a command: built once per command (``context.cache``), with the
    tokenizer read from the run directory when it holds one (evaluation, resumption) and
    otherwise trained on the meta-training utterances and saved there."""
    d = _clinc_data(context)
    path = Path(context.run_dir) / TOKENIZER_FILE if context.run_dir else None
    key = (
        "clinc150",
        d["root"],
        d["text_split"],
        d["tokenizer"],
        d["vocab_size"],
        d["max_length"],
        str(path),
    )
    cache = context.cache if context.cache is not None else {}
    if key not in cache:
        cache[key] = clinc150_split(
            d["root"] or None,
            d["text_split"],
            seed=0,
            tokenizer_path=path,
            tokenizer_kind=d["tokenizer"],
            vocab_size=d["vocab_size"],
            max_length=d["max_length"],
        )
    return cache[key]


@register_family(
    "clinc150", data_keys=CLINC_DATA_KEYS, spec=clinc150_spec, protocols=("standard", "oos")
)
def clinc150(
    ways: int = 5, shots: int = 1, queries: int = 15, *, context: FamilyContext
) -> TextEpisodicFamily:
    """N-way K-shot episodes of the intents of ``context.part`` (``data.text_split``); under
    the ``"oos"`` protocol each episode also carries ``data.oos_queries`` out-of-scope
    utterances (CLINC's ``oos_val`` for the val part, ``oos_test`` for the test part)."""
    d = _clinc_data(context)
    split = load_run_split(context)
    oos_queries = d["oos_queries"] if context.protocol == "oos" else 0
    oos = None
    if oos_queries:
        if context.part not in split.oos:
            raise TextDataError(
                f"out-of-scope episodes exist for the val and test parts, not {context.part!r}"
            )
        oos = split.oos[context.part]
    return TextEpisodicFamily(
        split[context.part], ways, shots, queries, oos=oos, oos_queries=oos_queries,
        trim=d["trim_batches"],
    )  # fmt: skip
