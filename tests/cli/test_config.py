"""Configuration files: ``dump_toml`` round trips, ``--set`` parsing, validation details."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaloop.cli.build import validate
from metaloop.cli.config import (
    ConfigError,
    apply_override,
    defaults,
    dump_toml,
    load_config,
    parse_value,
)

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "configs").glob("*.toml"))


def roundtrip(cfg: dict, tmp_path: Path) -> dict:
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg), encoding="utf-8")
    return load_config(path)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_validate_and_round_trip(preset, tmp_path):
    if "[env]" in preset.read_text(encoding="utf-8"):
        # a meta-RL preset: `metaloop rl train` reads it (its own loader and builder)
        from metaloop.cli import rl

        assert rl.build(rl.load(preset)) is not None
        return
    cfg = load_config(preset)
    # validation reads no data (a family's spec comes from its registration), so every
    # preset validates whole, Omniglot's included, on a machine without the data sets
    validate(cfg)
    again = roundtrip(cfg, tmp_path)
    validate(again)
    assert again == cfg


def test_round_trip_of_awkward_values(tmp_path):
    cfg = defaults()
    cfg["name"] = 'quote " backslash \\ newline \n tab \t bell \x07 del \x7f unicode é 😀'
    cfg["eval"]["reference_name"] = "[not a table] = 1"
    cfg["eval"]["reference"] = {"1": 0.5, "a b": 1e-300, 'we"ird': -2, "é": 1e300}
    cfg["train"]["outer_lr"] = 1e-5
    cfg["train"]["iterations"] = 2**62
    cfg["model"]["hidden"] = [3, 4]
    cfg["algorithm"]["inner_optimizer_kwargs"] = {"momentum": 0.9, "nested": {"x": [1, 2.5]}}
    again = roundtrip(cfg, tmp_path)
    assert again == cfg


def test_dump_refuses_what_toml_cannot_hold():
    cfg = defaults()
    cfg["name"] = "lone \ud800 surrogate"
    with pytest.raises(ConfigError, match="lone surrogate"):
        dump_toml(cfg)
    cfg = defaults()
    cfg["eval"]["reference"] = {"x": None}
    with pytest.raises(ConfigError, match="cannot write None"):
        dump_toml(cfg)


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("3.5") == 3.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value('"a b"') == "a b"
    assert parse_value("adam") == "adam"  # bare words are strings
    assert parse_value("{a = 1}") == {"a": 1}


def test_apply_override_semantics():
    cfg = defaults()
    apply_override(cfg, "train.iterations=5")
    apply_override(cfg, " seed = 4 ")
    apply_override(cfg, "eval.reference.1=0.5")
    assert cfg["train"]["iterations"] == 5 and cfg["seed"] == 4
    assert cfg["eval"]["reference"] == {"1": 0.5}
    apply_override(cfg, "model.hidden=[2]")
    apply_override(cfg, "model.name=conv4")  # another class: its options start afresh
    assert cfg["model"] == {"name": "conv4"}
    for bad, fragment in [
        ("iterations", "--set expects key=value"),
        ("x=1", "unknown key"),
        ("nope.x=1", "unknown section 'nope'"),
        ("train.iterations.deep=1", "not a table"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            apply_override(cfg, bad)


def test_toml_section_must_be_a_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("train = 3\n")
    with pytest.raises(ConfigError, match=r"\[train\] must be a table"):
        load_config(path)
    path.write_text("bogus = 3\n")
    with pytest.raises(ConfigError, match="unknown top-level key 'bogus'"):
        load_config(path)


def test_validation_normalises_numbers_and_keeps_python_types():
    cfg = load_config(None, ["train.outer_lr=1", "task.amplitude=[1, 2]", "task.dtype=float64"])
    validate(cfg)
    assert cfg["train"]["outer_lr"] == 1.0 and isinstance(cfg["train"]["outer_lr"], float)
    assert cfg["task"]["dtype"] == "float64"  # the file keeps the name; the builder gets a dtype


@pytest.mark.parametrize(
    "preset", [p for p in PRESETS if "omniglot" in p.stem], ids=lambda p: p.stem
)
def test_omniglot_presets_build_their_model_and_learner(preset):
    """The image presets' model and learner sections build (no data needed for these two)."""
    import torch

    from metaloop.cli.build import build_learner, build_model

    cfg = load_config(preset)
    if cfg["algorithm"]["name"] == "finetune":
        cfg["algorithm"]["num_classes"] = 10  # normally read from the training classes
    model = build_model(cfg)
    build_learner(cfg, model)
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, 1, 28, 28))
    assert out.shape[0] == 2
