"""Property-based tests of the configuration parser (hypothesis).

For random ``--set`` overrides (known and unknown keys, well- and ill-typed values, NaN,
huge integers, garbage text) and random TOML files, ``load_config`` + ``validate`` either
accept the configuration, which then round-trips exactly through ``dump_toml`` /
``load_config``, or raise ``ConfigError``: never another exception type.  The examples are
derandomized (the same every run) and the number of rejected (bad) inputs is counted and
printed at the end (docs/reliability.md reports it).
"""

from __future__ import annotations

import json
import math
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaloop.cli.build import validate
from metaloop.cli.config import (
    CHOICES,
    DATA_DEFAULTS,
    EVAL_DEFAULTS,
    TRAIN_DEFAULTS,
    ConfigError,
    apply_override,
    defaults,
    dump_toml,
    load_config,
)

COUNTS = {"rejected": 0, "accepted": 0}
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
WORKDIR = Path(tempfile.mkdtemp(prefix="metaloop-config-props-"))

# keys that allocate memory in proportion to their value when the model is built
SIZE_KEYS = {"model.hidden", "model.in_features", "model.out_features"}
KNOWN = (
    ["seed", "device", "name"]
    + [f"train.{k}" for k in TRAIN_DEFAULTS]
    + [f"eval.{k}" for k in EVAL_DEFAULTS]
    + [f"data.{k}" for k in DATA_DEFAULTS]
    + [
        f"task.{k}"
        for k in (
            "family",
            "shots",
            "queries",
            "amplitude",
            "phase",
            "x_range",
            "dtype",
            "dim",
            "ways",
        )
    ]
    + [
        f"model.{k}"
        for k in ("name", "hidden", "activation", "bias", "in_features", "out_features")
    ]
    + [
        f"algorithm.{k}"
        for k in (
            "name",
            "inner_lr",
            "inner_steps",
            "first_order",
            "eval_steps",
            "vectorize",
            "chunk_size",
            "loss",
            "inner_optimizer",
            "adapt",
            "inner_optimizer_kwargs",
            "granularity",
            "use_query",
        )
    ]
    + ["eval.reference.1", "eval.reference.x y", "train.iterations.x", "task.amplitude.0"]
)
WORDS = [
    "adam",
    "sgd",
    "cosine",
    "stop",
    "skip",
    "sinusoid",
    "linear",
    "quadratic",
    "gaussian_mean",
    "rotating_boundary",
    "bandit",
    "omniglot",
    "maml",
    "fomaml",
    "reptile",
    "metasgd",
    "joint",
    "protonet",
    "mlp",
    "conv4",
    "cpu",
    "cuda",
    "cuda:0",
    "meta",
    "float64",
    "float16",
    "int8",
    "vmap",
    "loop",
    "auto",
    "mse",
    "cross_entropy",
    "relu",
    "tanh",
    "momentum",
    "layers.0",
    "element",
    "global",
    "vinyals",
    "lake",
    "standard",
]

TRAPS = [
    "task.family",
    "model.name",
    "algorithm.name",
    "train.iterations.x",
    "eval.reference.1",
    "task.amplitude.0",
    "device",
    "seed",
    "eval.steps",
]
random_key = st.text(alphabet=string.ascii_letters + string.digits + "._- ", max_size=16)
small_int = st.integers(-3, 48)
huge_int = st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30])
any_float = st.floats(allow_nan=True, allow_infinity=True)
number = st.one_of(small_int, any_float)
toml_string = st.one_of(st.sampled_from(WORDS), st.text(max_size=12)).map(
    lambda s: json.dumps(s, ensure_ascii=False)
)


def render(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return str(value)


def value_text(sizes_only: bool):
    ints = small_int if sizes_only else st.one_of(small_int, huge_int)
    scalars = st.one_of(ints, any_float, st.booleans())
    return st.one_of(
        scalars.map(render),
        st.lists(st.one_of(ints, any_float), max_size=4).map(render),
        toml_string,
        st.sampled_from(WORDS),  # bare words: parsed as strings
        st.sampled_from(
            [
                "{a = 1}",
                "{}",
                "[[1], [2]]",
                '[1, "a"]',
                "1979-05-27",
                "0x10",
                "1_000",
                "+inf",
                "-0.0",
                '""',
                "[]",
            ]
        ),
        st.text(max_size=10),  # garbage
    )


plausible = st.one_of(
    st.integers(1, 6).map(str),
    st.sampled_from(["0.01", "0.5", "1e-3"]),
    st.sampled_from(["true", "false", "[2, 3]", "[0.5, 1.5]"]),
    st.sampled_from(WORDS),
    st.sampled_from(WORDS).map(json.dumps),
)


def _typed(section: str, key: str, default) -> st.SearchStrategy[str]:
    choices = CHOICES.get((section, key))
    if choices:
        return st.sampled_from(choices).map(json.dumps)
    if isinstance(default, bool):
        return st.booleans().map(render)
    if key == "seed":
        return st.integers(-(2**63), 2**63 - 1).map(str)
    if isinstance(default, int):
        return st.integers(1 if key in ("iterations", "meta_batch_size") else 0, 50).map(str)
    if isinstance(default, float):
        return st.floats(1e-6, 10.0).map(repr)
    if isinstance(default, str):
        return st.text(max_size=8).map(lambda t: json.dumps(t, ensure_ascii=False))
    if key == "steps":
        return st.lists(st.integers(0, 9), max_size=3).map(render)
    return st.just("{}")


# type-correct values for every known key: these reach valid configurations
TYPED = {
    f"{sec}.{k}": _typed(sec, k, v)
    for sec, table in (("train", TRAIN_DEFAULTS), ("eval", EVAL_DEFAULTS), ("data", DATA_DEFAULTS))
    for k, v in table.items()
    if (sec, k) != ("data", "split")
}
TYPED.update(
    {
        "seed": _typed("", "seed", 0),
        "name": _typed("", "name", ""),
        "task.shots": st.integers(1, 20).map(str),
        "task.queries": st.integers(1, 20).map(str),
        "task.amplitude": st.lists(st.floats(0, 5), min_size=2, max_size=2).map(render),
        "task.dtype": st.sampled_from(["float32", "float64"]).map(json.dumps),
        "model.hidden": st.lists(st.integers(1, 16), max_size=3).map(render),
        "model.activation": st.sampled_from(["relu", "tanh", "gelu", "silu"]).map(json.dumps),
        "algorithm.inner_lr": st.floats(1e-4, 1.0).map(repr),
        "algorithm.inner_steps": st.integers(1, 5).map(str),
        "algorithm.first_order": st.booleans().map(render),
        "algorithm.eval_steps": st.integers(0, 5).map(str),
        "algorithm.vectorize": st.sampled_from(["auto", "vmap", "loop"]).map(json.dumps),
        "algorithm.chunk_size": st.integers(1, 8).map(str),
        "algorithm.inner_optimizer": st.sampled_from(["sgd", "momentum", "adam"]).map(json.dumps),
    }
)


@st.composite
def override(draw) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # a known key with a type-correct value
        key = draw(st.sampled_from(sorted(TYPED)))
        return f"{key}={draw(TYPED[key])}"
    if kind == 4:  # keys whose values select classes or nest tables: any value at all
        key = draw(st.sampled_from(TRAPS))
    else:
        key = draw(st.sampled_from(KNOWN) if kind < 3 else random_key)
    if kind == 1:  # a known key with a plausible value of any type
        return f"{key}={draw(plausible)}"
    return f"{key}={draw(value_text(sizes_only=key in SIZE_KEYS))}"


def roundtrip(cfg: dict) -> None:
    path = WORKDIR / "config.toml"
    path.write_text(dump_toml(cfg), encoding="utf-8")
    again = load_config(path)
    validate(again)
    assert again == cfg


def check(build) -> None:
    """``build()`` makes a config; it must validate and round-trip, or raise ConfigError."""
    try:
        cfg = build()
        validate(cfg)
    except ConfigError:
        COUNTS["rejected"] += 1
        return
    COUNTS["accepted"] += 1
    roundtrip(cfg)


@settings(max_examples=400, **SETTINGS)
@given(st.lists(override(), min_size=1, max_size=4))
def test_random_overrides_validate_and_round_trip_or_raise_config_error(items):
    check(lambda: load_config(None, items))


@settings(max_examples=100, **SETTINGS)
@given(st.text(max_size=40))
def test_arbitrary_override_text_raises_only_config_error(item):
    check(lambda: load_config(None, [item]))


@st.composite
def toml_document(draw) -> str:
    lines = []
    for key in draw(st.lists(st.sampled_from(["seed", "device", "name", "bogus"]), max_size=2)):
        lines.append(f"{key} = {draw(value_text(sizes_only=False))}")
    sections = ["task", "model", "algorithm", "train", "eval", "data", "extra", "eval.reference"]
    for section in draw(st.lists(st.sampled_from(sections), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        for item in draw(st.lists(override(), max_size=3)):
            key, _, value = item.partition("=")
            key = key.rpartition(".")[2] or "k"
            lines.append(f"{json.dumps(key)} = {value}")
    return "\n".join(lines) + "\n"


@settings(max_examples=150, **SETTINGS)
@given(toml_document())
def test_random_toml_files_validate_and_round_trip_or_raise_config_error(text):
    path = WORKDIR / "input.toml"
    path.write_text(text, encoding="utf-8")
    check(lambda: load_config(path))


@settings(max_examples=50, **SETTINGS)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=8),
            st.booleans(),
            st.lists(st.integers(-5, 5), max_size=3),
        ),
        max_size=4,
    )
)
def test_dump_toml_round_trips_any_reference_table(reference):
    cfg = defaults()
    cfg["eval"]["reference"] = reference
    cfg["name"] = "".join(str(k) for k in reference)[:20]
    validate(cfg)
    roundtrip(cfg)


def test_zz_report_the_number_of_bad_inputs(capsys):
    """Runs last in this module: the property tests above must have seen both kinds."""
    total = COUNTS["rejected"] + COUNTS["accepted"]
    with capsys.disabled():
        print(
            f"\nconfig property tests: {total} generated configurations, "
            f"{COUNTS['rejected']} rejected with ConfigError (bad inputs), "
            f"{COUNTS['accepted']} accepted and round-tripped"
        )
    if total == 0:
        pytest.skip("run together with the property tests above")
    assert COUNTS["rejected"] > 200 and COUNTS["accepted"] > 30


def test_apply_override_alone_never_raises_anything_else():
    cfg = defaults()
    for item in ["=", "a.b.c.d=1", ".=1", "train..x=1", "task.=1", "eval.reference.=1", "\x00=1"]:
        try:
            apply_override(cfg, item)
        except ConfigError:
            pass
