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
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from metaloop.data.dataset import ClassDataset
from metaloop.data.episodes import ClassGroups, EpisodicFamily
from metaloop.data.splits import ClassSplit, check_disjoint
from metaloop.tasks.base import TaskBatch, TaskError, check_positive
from metaloop.tasks.registry import FamilyContext, TaskSpec, register_family
from metaloop.validate import is_int

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL_TOKENS = (PAD, UNK, CLS)  # ids 0, 1, 2
PAD_ID = 0
CLINC_PARTS = ("train", "val", "test")
OOS_PARTS = ("oos_train", "oos_val", "oos_test")
PROTOCOLS = ("random", "domain")
TOKENIZER_KINDS = ("wordpiece", "bpe")
Protocol = Literal["random", "domain"]


class TextDataError(TaskError):
    """A text data file or text episode setting is malformed (a ``TaskError``/``ValueError``)."""


# -- reading CLINC150 -------------------------------------------------------------------------


@dataclass(frozen=True)
class Clinc150:
    """CLINC150 with the utterances of every intent pooled over the file's three parts.

    ``utterances[intent]``: the intent's utterances in file order (train, then val, then
    test); ``domains[domain]``: its intents; ``oos[part]`` (``"train"``, ``"val"``,
    ``"test"``): the out-of-scope utterances of CLINC's ``oos_<part>`` lists.
    """

    utterances: Mapping[str, list[str]]
    domains: Mapping[str, list[str]]
    oos: Mapping[str, list[str]]
    source: str = ""

    @property
    def intents(self) -> list[str]:
        return sorted(self.utterances)

    def domain_of(self, intent: str) -> str:
        for domain, intents in self.domains.items():
            if intent in intents:
                return domain
        raise TextDataError(f"intent {intent!r} belongs to no domain")


def _pairs(data: Any, part: str, where: str) -> list[tuple[str, str]]:
    """The ``[utterance, intent]`` pairs of ``data[part]``, each checked."""
    items = data[part]
    if not isinstance(items, list):
        raise TextDataError(
            f"{where}: {part!r} must be a list of [utterance, intent] pairs, got "
            f"{type(items).__name__}"
        )
    out = []
    for i, pair in enumerate(items):
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(s, str) for s in pair)
        ):
            raise TextDataError(
                f"{where}: {part}[{i}] must be an [utterance, intent] pair of two strings, "
                f"got {json.dumps(pair)[:80]}"
            )
        utterance, intent = pair
        if not utterance.strip():
            raise TextDataError(
                f"{where}: {part}[{i}] (intent {intent!r}) is an empty utterance; every "
                "utterance needs at least one non-space character"
            )
        if not intent.strip():
            raise TextDataError(f"{where}: {part}[{i}] has an empty intent name")
        out.append((utterance, intent))
    return out


def parse_clinc150(data: Any, domains: Any | None = None, where: str = "CLINC150 data") -> Clinc150:
    """Validate parsed ``data_full.json`` (and ``domains.json``) and pool each intent.

    ``data`` must map ``train``, ``val`` and ``test`` (and, for out-of-scope evaluation,
    ``oos_train``, ``oos_val``, ``oos_test``) to lists of ``[utterance, intent]``.
    ``domains`` maps each domain to its intents; every in-scope intent must lie in exactly
    one domain.  Without ``domains`` all intents form one domain ``"all"``.
    """
    if not isinstance(data, dict):
        raise TextDataError(
            f"{where}: the top level must be a JSON object with keys "
            f"{', '.join(CLINC_PARTS)}, got {type(data).__name__}"
        )
    missing = [p for p in CLINC_PARTS if p not in data]
    if missing:
        raise TextDataError(
            f"{where}: missing key(s) {missing}; expected {', '.join(CLINC_PARTS + OOS_PARTS)} "
            f"(found {', '.join(map(str, data)) or 'none'})"
        )
    unknown = sorted(set(data) - set(CLINC_PARTS + OOS_PARTS))
    if unknown:
        raise TextDataError(
            f"{where}: unknown key(s) {unknown}; expected {', '.join(CLINC_PARTS + OOS_PARTS)}"
        )
    utterances: dict[str, list[str]] = {}
    for part in CLINC_PARTS:
        for utterance, intent in _pairs(data, part, where):
            if intent == "oos":
                raise TextDataError(
                    f"{where}: {part!r} holds an 'oos' utterance ({utterance[:40]!r}); "
                    "out-of-scope utterances belong in the oos_* lists"
                )
            utterances.setdefault(intent, []).append(utterance)
    oos = {p[4:]: [u for u, _ in _pairs(data, p, where)] for p in OOS_PARTS if p in data}
    if domains is None:
        domain_map = {"all": sorted(utterances)}
    else:
        if not isinstance(domains, dict) or not all(
            isinstance(v, list) and all(isinstance(i, str) for i in v) for v in domains.values()
        ):
            raise TextDataError(
                f"{where}: domains must be a JSON object mapping each domain to a list of "
                "intent names"
            )
        domain_map = {str(k): list(v) for k, v in domains.items()}
        owner: dict[str, str] = {}
        for domain, intents in domain_map.items():
            for intent in intents:
                if intent in owner:
                    raise TextDataError(
                        f"{where}: intent {intent!r} is listed in domains {owner[intent]!r} "
                        f"and {domain!r}; each intent belongs to one domain"
                    )
                owner[intent] = domain
        homeless = sorted(set(utterances) - set(owner))
        if homeless:
            raise TextDataError(
                f"{where}: intent(s) {homeless[:5]} are in no domain of domains.json"
            )
        unknown_intents = sorted(set(owner) - set(utterances))
        if unknown_intents:
            raise TextDataError(
                f"{where}: domains.json names intent(s) {unknown_intents[:5]} that have no "
                "utterance in the data"
            )
    return Clinc150(utterances, domain_map, oos, where)


def default_clinc_root() -> Path:
    """``$METALOOP_DATA/clinc150`` (default ``../shared/data/clinc150`` from the repository)."""
    base = os.environ.get("METALOOP_DATA")
    if base:
        return Path(base) / "clinc150"
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "clinc150"


def read_clinc150(root: str | os.PathLike[str] | None = None) -> Clinc150:
    """Read ``data_full.json`` and ``domains.json`` from ``root`` (a directory) or read
    ``root`` itself when it is the data file (then ``domains.json`` beside it, if any)."""
    path = Path(root) if root is not None else default_clinc_root()
    data_file = path / "data_full.json" if path.is_dir() else path
    if not data_file.is_file():
        raise TextDataError(
            f"CLINC150 data file {str(data_file)!r} not found; pass the directory holding "
            "data_full.json (and domains.json), or set data.root / $METALOOP_DATA"
        )
    domains_file = data_file.parent / "domains.json"

    def load(file: Path) -> Any:
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise TextDataError(f"{file}: not valid JSON ({err})".splitlines()[0]) from err

    domains = load(domains_file) if domains_file.is_file() else None
    return parse_clinc150(load(data_file), domains, where=str(data_file))


# -- class splits by intent ------------------------------------------------------------------


def split_intents(
    data: Clinc150,
    protocol: Protocol = "random",
    seed: int = 0,
    *,
    train: int = 100,
    val: int = 20,
    train_domains: int = 5,
    val_domains: int = 2,
) -> dict[str, list[str]]:
    """Intents of the ``train``, ``val`` and ``test`` parts (disjoint, each sorted).

    ``"random"``: a seeded permutation of the sorted intents; the first ``train`` meta-train,
    the next ``val`` meta-validate, the rest test.  ``"domain"``: a seeded permutation of the
    sorted domains; the intents of the first ``train_domains`` meta-train, the next
    ``val_domains`` meta-validate, the rest test.
    """
    if protocol not in PROTOCOLS:
        raise TextDataError(
            f"unknown text split {protocol!r}; choose one of {', '.join(PROTOCOLS)}"
        )
    g = torch.Generator().manual_seed(int(seed))
    if protocol == "random":
        intents = data.intents
        n = len(intents)
        if not (0 < train and 0 <= val and train + val < n):
            raise TextDataError(
                f"random split needs train > 0, val >= 0 and train + val < {n} intents, got "
                f"train={train}, val={val}"
            )
        order = [intents[i] for i in torch.randperm(n, generator=g).tolist()]
        parts = [order[:train], order[train : train + val], order[train + val :]]
    else:
        names = sorted(data.domains)
        n = len(names)
        if not (0 < train_domains and 0 <= val_domains and train_domains + val_domains < n):
            raise TextDataError(
                f"domain split needs train_domains > 0, val_domains >= 0 and their sum < {n} "
                f"domains, got train_domains={train_domains}, val_domains={val_domains}"
            )
        order = [names[i] for i in torch.randperm(n, generator=g).tolist()]
        chosen = [
            order[:train_domains],
            order[train_domains : train_domains + val_domains],
            order[train_domains + val_domains :],
        ]
        parts = [[i for d in ds for i in data.domains[d]] for ds in chosen]
    return {name: sorted(p) for name, p in zip(CLINC_PARTS, parts)}


# -- tokenizer -------------------------------------------------------------------------------


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


# -- datasets and episodes -------------------------------------------------------------------


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
        self.oos = oos
        self.oos_queries = oos_queries

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TaskBatch:
        classes, items = self.plan.sample(batch_size, generator)
        tokens = self.dataset.gather(items)  # [T, ways, shots + queries, L]
        oos_x = None
        if self.oos_queries:
            assert self.oos is not None
            keys = torch.rand(batch_size, self.oos.shape[0], generator=generator)
            pick = keys.topk(self.oos_queries, dim=1, largest=False).indices
            oos_x = self.oos[pick]
            tokens, oos_x = trim_padding(tokens, oos_x)
        else:
            (tokens,) = trim_padding(tokens)
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
        return (
            f"TextEpisodicFamily({self.dataset.name!r}, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, intents={self.usable_classes}{oos})"
        )


# -- everything in one call ------------------------------------------------------------------


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


# -- the registered family: [task] family = "clinc150" -----------------------------------------

#: the ``[data]`` keys of CLINC150 runs and their defaults (``root`` is shared with Omniglot)
CLINC_DATA_KEYS: dict[str, Any] = {
    "root": "",
    "text_split": "random",
    "tokenizer": "wordpiece",
    "vocab_size": 4000,
    "max_length": 32,
    # out-of-scope queries per evaluation episode under the "oos" protocol
    "oos_queries": 15,
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
    return d


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
        split[context.part], ways, shots, queries, oos=oos, oos_queries=oos_queries
    )
