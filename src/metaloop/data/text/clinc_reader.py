"""CLINC150: reading and validating ``data_full.json`` and ``domains.json``, and
splitting the 150 intents into meta-training, meta-validation and test intents.

Few-shot intent detection splits *classes*, not utterances, so the 100 + 20 + 30
utterances of an intent are pooled: each intent is one class of 150 utterances.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from metaloop.data.text.errors import TextDataError

CLINC_PARTS = ("train", "val", "test")
OOS_PARTS = ("oos_train", "oos_val", "oos_test")
PROTOCOLS = ("random", "domain")
Protocol = Literal["random", "domain"]


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
    return Path(__file__).resolve().parents[4].parent / "shared" / "data" / "clinc150"


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
