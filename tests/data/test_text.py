"""The text family: CLINC150 reading and validation, intent splits with no leakage into
the tokenizer or meta-training (checked on the real file), tokenisation, episodes."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import metaloop.data.text as text
import metaloop.data.text.split as text_split
from metaloop.data.text import (
    Clinc150,
    TextDataError,
    TextEpisodicFamily,
    clinc150_split,
    encode,
    load_tokenizer,
    parse_clinc150,
    read_clinc150,
    save_tokenizer,
    split_intents,
    train_tokenizer,
)
from metaloop.tasks.registry import FamilyContext, get_family

REAL = text.default_clinc_root()
needs_real = pytest.mark.skipif(
    not (REAL / "data_full.json").is_file(), reason="CLINC150 not in ../shared/data"
)

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def tiny_data(intents: int = 8, per_intent: int = 10, domains: int = 4) -> dict:
    """A CLINC-shaped JSON object: ``intents`` intents with distinct vocabularies."""
    data: dict = {p: [] for p in ("train", "val", "test", "oos_train", "oos_val", "oos_test")}
    for i in range(intents):
        for j in range(per_intent):
            words = [f"w{i}x{k}" for k in range(1 + j % 4)] + [WORDS[j % len(WORDS)]]
            part = "train" if j < per_intent - 4 else ("val" if j < per_intent - 2 else "test")
            data[part].append([" ".join(words), f"intent{i}"])
    for j in range(12):
        data["oos_val" if j < 6 else "oos_test"].append([f"nothing {WORDS[j]} here {j}", "oos"])
    domain_map = {f"d{d}": [f"intent{i}" for i in range(intents) if i % domains == d]
                  for d in range(domains)}  # fmt: skip
    return {"data": data, "domains": domain_map}


def tiny(**kwargs) -> Clinc150:
    t = tiny_data(**kwargs)
    return parse_clinc150(t["data"], t["domains"])


# -- reading and validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["data"].__setitem__("train", {"a": 1}), "'train' must be a list"),
        (lambda d: d["data"].pop("test"), r"missing key\(s\) \['test'\]"),
        (lambda d: d["data"]["val"].append(["one", "two", "three"]), r"val\[16\] must be an"),
        (lambda d: d["data"]["train"].append([3, "intent0"]), "pair of two strings"),
        (lambda d: d["data"]["train"].insert(2, ["   ", "intent0"]), r"train\[2\].*empty utt"),
        (lambda d: d["data"].__setitem__("extra", []), "unknown key"),
        (lambda d: d["data"]["train"].append(["hi", "oos"]), "out-of-scope utterances belong"),
        (lambda d: d["domains"]["d0"].append("intent1"), "listed in domains"),
        (lambda d: d["domains"]["d0"].remove("intent0"), "in no domain"),
    ],
)
def test_bad_json_gives_one_line_errors(mutate, message) -> None:
    t = tiny_data()
    mutate(t)
    with pytest.raises(TextDataError, match=message) as err:
        parse_clinc150(t["data"], t["domains"])
    assert "\n" not in str(err.value)


def test_wrong_top_level_and_files(tmp_path: Path) -> None:
    with pytest.raises(TextDataError, match="top level must be a JSON object"):
        parse_clinc150([["hello", "greet"]])
    (tmp_path / "data_full.json").write_text("{not json")
    with pytest.raises(TextDataError, match="not valid JSON"):
        read_clinc150(tmp_path)
    with pytest.raises(TextDataError, match="not found"):
        read_clinc150(tmp_path / "missing")
    t = tiny_data()
    (tmp_path / "data_full.json").write_text(json.dumps(t["data"]))
    (tmp_path / "domains.json").write_text(json.dumps(t["domains"]))
    data = read_clinc150(tmp_path)
    assert len(data.intents) == 8 and len(data.utterances["intent3"]) == 10
    assert data.domain_of("intent5") == "d1" and len(data.oos["test"]) == 6


def test_splits_are_disjoint_seeded_and_sized() -> None:
    data = tiny(intents=12, domains=4)
    r = split_intents(data, "random", seed=1, train=6, val=2)
    assert [len(r[p]) for p in ("train", "val", "test")] == [6, 2, 4]
    assert not set(r["train"]) & (set(r["val"]) | set(r["test"]))
    assert r == split_intents(data, "random", seed=1, train=6, val=2)
    assert r != split_intents(data, "random", seed=2, train=6, val=2)
    d = split_intents(data, "domain", seed=0, train_domains=2, val_domains=1)
    domains = {p: {data.domain_of(i) for i in d[p]} for p in d}
    assert [len(domains[p]) for p in ("train", "val", "test")] == [2, 1, 1]
    assert not domains["train"] & (domains["val"] | domains["test"])
    with pytest.raises(TextDataError, match="train \\+ val < 12"):
        split_intents(data, "random", train=10, val=2)
    with pytest.raises(TextDataError, match="unknown text split"):
        split_intents(data, "by-length")


# -- tokenisation ----------------------------------------------------------------------------


def test_encoding_truncates_with_a_count_and_pads_with_zero(tmp_path: Path) -> None:
    data = tiny()
    tok = train_tokenizer([u for us in data.utterances.values() for u in us], vocab_size=300)
    utterances = ["alpha", "alpha bravo charlie delta echo foxtrot golf", "bravo charlie"]
    enc = encode(tok, utterances, max_length=4)
    assert enc.truncated == 1 and enc.ids.shape == (3, 4)
    assert bool((enc.ids[:, 0] == 2).all())  # [CLS] first
    assert enc.ids[0, 2:].tolist() == [0, 0]  # padding is id 0 ...
    assert bool((enc.ids[enc.ids != 0] > 0).all())  # ... and only padding
    assert encode(tok, utterances, max_length=32).truncated == 0
    with pytest.raises(TextDataError, match="utterance 1 is empty"):
        encode(tok, ["fine", ""], max_length=8)
    path = save_tokenizer(tok, tmp_path / "run" / "tokenizer.json")
    again = load_tokenizer(path)
    assert torch.equal(encode(again, utterances, 32).ids, encode(tok, utterances, 32).ids)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TextDataError, match="not a tokenizer file"):
        load_tokenizer(tmp_path / "bad.json")


def test_bpe_tokenizer_and_bad_settings() -> None:
    tok = train_tokenizer(["alpha bravo", "bravo charlie"], vocab_size=30, kind="bpe")
    assert encode(tok, ["alpha charlie"], 8).ids[0, 0] == 2
    with pytest.raises(TextDataError, match="unknown tokenizer"):
        train_tokenizer(["a b"], kind="unigram")
    with pytest.raises(TextDataError, match="vocab_size"):
        train_tokenizer(["a b"], vocab_size=3)


# -- episodes --------------------------------------------------------------------------------


def test_episodes_shapes_labels_and_out_of_scope() -> None:
    split = clinc150_split(tiny(), "random", train=5, val=1, vocab_size=80)
    fam = TextEpisodicFamily(split.train, 3, 2, 4)
    b = fam.sample(5, torch.Generator().manual_seed(0))
    assert b.support_x.shape[:2] == (5, 6) and b.query_x.shape[:2] == (5, 12)
    assert b.support_x.dtype == torch.long and b.ways == 3
    assert b.support_y[0].tolist() == [0, 0, 1, 1, 2, 2]
    width = b.support_x.shape[-1]  # cut to the longest utterance of the batch
    lengths = torch.cat([b.support_x, b.query_x], 1).ne(0).sum(-1)
    assert int(lengths.max()) == width
    again = fam.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(again.query_x, b.query_x)
    # every support and query utterance is one of its intent's
    classes = b.info["classes"]
    for t in range(5):
        for x, y in zip(b.query_x[t], b.query_y[t]):
            c = int(classes[t, y])
            rows = split.train.storage[split.train.labels == c][:, :width]
            assert bool((rows == x).all(-1).any())
    oos_fam = TextEpisodicFamily(split.test, 2, 1, 1, oos=split.oos["test"], oos_queries=4)
    ob = oos_fam.sample(3, torch.Generator().manual_seed(1))
    assert ob.info["oos_x"].shape == (3, 4, ob.query_x.shape[-1])
    assert all(len({tuple(r.tolist()) for r in ob.info["oos_x"][t]}) == 4 for t in range(3))
    assert fam.with_shape(ways=2, shots=1).sample(1).support_x.shape[1] == 2


def test_untrimmed_batches_have_one_width_and_the_same_tokens() -> None:
    """``trim=False`` (``data.trim_batches = false``, one shape for torch.compile): every
    batch ``max_length`` wide, the trimmed batch's tokens followed by padding only."""
    split = clinc150_split(tiny(), "random", train=5, val=1, vocab_size=80, max_length=40)
    test = split.test
    trimmed = TextEpisodicFamily(test, 2, 1, 1, oos=split.oos["test"], oos_queries=3)
    full = trimmed.with_shape(trim=False)
    assert full.with_shape(ways=1).trim is False
    a, b = (f.sample(4, torch.Generator().manual_seed(2)) for f in (trimmed, full))
    width = a.support_x.shape[-1]
    assert width < 40  # the check can fail: trimming did cut this batch
    for x, y in ((a.support_x, b.support_x), (a.query_x, b.query_x),
                 (a.info["oos_x"], b.info["oos_x"])):  # fmt: skip
        assert y.shape[-1] == 40
        assert torch.equal(y[..., :width], x) and not y[..., width:].any()
    with pytest.raises(TextDataError, match="trim must be True or False"):
        TextEpisodicFamily(test, 2, 1, 1, trim="no")


def test_intent_with_too_few_utterances_names_it() -> None:
    t = tiny_data()
    # intent2: its 6 train utterances dropped, one put back: 1 + 2 val + 2 test = 5
    kept = [p for p in t["data"]["train"] if p[1] != "intent2"]
    t["data"]["train"] = [*kept, ["w2x0 alpha", "intent2"]]
    data = parse_clinc150(t["data"], t["domains"])
    split = clinc150_split(data, "random", seed=0, train=7, val=0, vocab_size=80)
    train = split.train
    assert "intent2" in train.values("name")
    with pytest.raises(TextDataError, match="intent 'intent2' has 5 utterances, fewer than"):
        TextEpisodicFamily(train, 2, 3, 3)
    TextEpisodicFamily(train, 2, 2, 3)  # 5 is enough for 2 + 3
    with pytest.raises(TextDataError, match="oos_queries = 3 needs"):
        TextEpisodicFamily(train, 2, 1, 1, oos_queries=3)


# -- the real file: nothing of the test split reaches the tokenizer or meta-training ---------


@pytest.fixture(scope="module")
def real_data() -> Clinc150:
    if not (REAL / "data_full.json").is_file():
        pytest.skip("CLINC150 not in ../shared/data")
    return read_clinc150(REAL)


def raw_intents_of_utterances() -> dict[str, set[str]]:
    """Independent of the reader: every utterance string -> the intents it is filed under."""
    raw = json.loads((REAL / "data_full.json").read_text())
    owners: dict[str, set[str]] = defaultdict(set)
    for part in ("train", "val", "test"):
        for utterance, intent in raw[part]:
            owners[utterance].add(intent)
    return owners


@needs_real
@pytest.mark.parametrize("protocol", ["random", "domain"])
def test_no_test_intent_or_utterance_reaches_tokenizer_or_training(
    real_data: Clinc150, protocol: str, monkeypatch, tmp_path: Path
) -> None:
    corpora: list[list[str]] = []
    real_train = text.train_tokenizer

    def spy(utterances, vocab_size=4000, kind="wordpiece"):
        corpora.append(list(utterances))
        return real_train(utterances, vocab_size, kind)

    monkeypatch.setattr(text_split, "train_tokenizer", spy)  # the name clinc150_split calls
    split = clinc150_split(real_data, protocol, seed=0, tokenizer_path=tmp_path / "tok.json")
    assert len(corpora) == 1 and (tmp_path / "tok.json").is_file()
    owners = raw_intents_of_utterances()
    train_intents = set(split.train.values("name"))
    held_out = set(split.val.values("name")) | set(split.test.values("name"))
    assert len(train_intents) == (100 if protocol == "random" else 75)
    assert len(held_out) == 150 - len(train_intents)
    assert not train_intents & held_out
    # the tokenizer saw meta-training utterances only, and all of them
    corpus = corpora[0]
    assert all(owners[u] & train_intents for u in corpus)
    only_held_out = {u for u, o in owners.items() if not o & train_intents}
    assert not only_held_out & set(corpus)
    assert len(corpus) == 150 * len(train_intents)
    # meta-training items are utterances of meta-training intents, filed under them
    assert split.train.texts is not None
    for utterance, label in zip(split.train.texts, split.train.labels.tolist()):
        assert split.train.class_info[label]["name"] in owners[utterance]
    assert not only_held_out & set(split.train.texts)
    if protocol == "domain":
        train_domains = set(split.train.values("domain"))
        assert len(train_domains) == 5
        assert not train_domains & set(split.test.values("domain"))
    # the vocabulary: every word-initial token is a prefix of a meta-training word, so no
    # word seen only in held-out intents became a token (a tokenizer trained on all
    # utterances does make some of them tokens: the check is discriminative)
    tok = split.tokenizer
    pre = tok.pre_tokenizer

    def words(utterances):
        return {
            w for u in utterances for w, _ in pre.pre_tokenize_str(tok.normalizer.normalize_str(u))
        }

    train_words = words(corpus)
    prefixes = {w[:k] for w in train_words for k in range(1, len(w) + 1)}
    vocab = [t for t in tok.get_vocab() if not t.startswith("##") and t not in text.SPECIAL_TOKENS]
    assert set(vocab) <= prefixes
    unseen = words(only_held_out) - prefixes
    assert len(unseen) > 100
    if protocol == "random":  # once is enough
        everything = real_train(list(owners), 4000)
        assert len(unseen & set(everything.get_vocab())) > 20


def run_context(run_dir: Path, **fields) -> FamilyContext:
    return FamilyContext(run_dir=str(run_dir), **fields)


def test_registered_family_saves_and_reuses_the_tokenizer(tmp_path: Path) -> None:
    t = tiny_data(intents=150, per_intent=20, domains=10)
    root = tmp_path / "clinc"
    root.mkdir()
    (root / "data_full.json").write_text(json.dumps(t["data"]))
    (root / "domains.json").write_text(json.dumps(t["domains"]))
    entry = get_family("clinc150")
    data = {"root": str(root), "vocab_size": 500, "oos_queries": 5}
    context = run_context(tmp_path, part="train", data=data, cache={})
    spec = entry.spec(ways=5, shots=1, queries=5, context=context)
    assert spec.input_shape == (32,) and spec.model_hints["text_cnn"]["vocab_size"] == 500
    fam = entry.build(ways=5, shots=1, queries=5, context=context)
    assert fam.spec.num_classes == 100 and (tmp_path / text.TOKENIZER_FILE).is_file()
    before = (tmp_path / text.TOKENIZER_FILE).read_text()
    test_context = run_context(
        tmp_path, part="test", protocol="oos", evaluation=True, data=data, cache={}
    )
    test = entry.build(ways=5, shots=5, queries=15, context=test_context)
    assert (tmp_path / text.TOKENIZER_FILE).read_text() == before  # read, not retrained
    assert test.sample(2).info["oos_x"].shape[:2] == (2, 5)
    with pytest.raises(ValueError, match="text_split must be one of"):
        entry.spec(ways=5, context=FamilyContext(data={"text_split": "by-topic"}))
    with pytest.raises(ValueError, match="trim_batches must be true or false"):
        entry.spec(ways=5, context=FamilyContext(data={"trim_batches": "no"}))
    untrimmed = run_context(tmp_path, part="train", data={**data, "trim_batches": False})
    assert (
        entry.build(ways=5, shots=1, queries=5, context=untrimmed).sample(1).support_x.shape[-1]
        == 32
    )
