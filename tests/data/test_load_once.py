"""Load once: validating a config reads no data, and one ``metaloop train`` of an Omniglot
config decodes the dataset once (docs/performance.md, "Data loaded once per command")."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest

import metaloop.data as data_package
import metaloop.data.omniglot as omniglot_module
from metaloop.cli.build import build_learner, build_model, family_spec, validate
from metaloop.cli.config import load_config
from metaloop.tasks import registry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def counts(monkeypatch) -> dict[str, int]:
    """Counts of registered-family builds and Omniglot archive loads (one per subset read)."""
    counts = {"family_builds": 0, "archive_loads": 0}

    def counting(fn, key):
        @functools.wraps(fn)  # keeps the signature the registry reads
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    load = counting(omniglot_module.load_omniglot_subset, "archive_loads")
    monkeypatch.setattr(omniglot_module, "load_omniglot_subset", load)
    monkeypatch.setattr(data_package, "load_omniglot_subset", load)
    families = dict(registry._FAMILIES)
    entry = families["omniglot"]
    families["omniglot"] = dataclasses.replace(entry, build=counting(entry.build, "family_builds"))
    monkeypatch.setattr(registry, "_FAMILIES", families)
    return counts


def finetune_config(omniglot_root: Path, cache_dir: Path, *extra: str) -> list[str]:
    """``configs/omniglot-finetune.toml`` shrunk to one iteration of a small model."""
    return [
        str(REPO / "configs" / "omniglot-finetune.toml"),
        *("--set", f'data.root="{omniglot_root}"', "--set", f'data.cache_dir="{cache_dir}"'),
        *("--set", "train.iterations=1", "--set", "train.validate_every=1"),
        *("--set", "train.validation_tasks=1", "--set", "train.checkpoint_every=1"),
        *("--set", "train.log_every=1", "--set", "train.progress=false"),
        *("--set", "algorithm.steps=1", "--set", "model.hidden=8", *extra),
    ]


def test_validation_and_the_model_read_no_data(counts) -> None:
    """No data on disk is needed to check a whole Omniglot config: the family's spec comes
    from its registration; a learner that needs the class count is built on a stand-in."""
    cfg = load_config(REPO / "configs" / "omniglot-finetune.toml")
    cfg["data"]["root"] = "/nonexistent/omniglot"
    validate(cfg)
    spec = family_spec(cfg)
    assert spec.input_shape == (1, 28, 28) and spec.ways == 60 and spec.num_classes is None
    assert build_model(cfg).embedding_dim == 64  # an embedding learner: no 60-way head
    assert counts == {"family_builds": 0, "archive_loads": 0}


def test_one_train_command_decodes_omniglot_once(
    counts, omniglot_root, cache_dir, tmp_path, capsys
) -> None:
    """Before: 5 family builds and 10 archive loads.  Now: the training and validation
    parts and the check that the preset's ``[eval]`` episodes fit the test classes (3
    builds) share one decode of the two archives (2 loads), and the fine-tune head gets
    the training family's class count without another build."""
    from metaloop.cli.main import main

    code = main(["train", *finetune_config(omniglot_root, cache_dir), "--run-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert counts == {"family_builds": 3, "archive_loads": 2}


def test_the_learner_takes_the_class_count_of_the_family_it_is_given(counts) -> None:
    cfg = load_config(REPO / "configs" / "omniglot-finetune.toml")
    model = build_model(cfg)

    class Family:
        spec = dataclasses.replace(family_spec(cfg), num_classes=7)

    learner = build_learner(cfg, model, family=Family())
    assert learner.head.out_features == 7 and counts["family_builds"] == 0


def test_eval_ways_beyond_the_test_classes_is_refused_before_training(
    counts, omniglot_root, cache_dir, tmp_path, capsys
) -> None:
    """``eval.ways`` larger than the test classes fails at train time, not after training;
    the test part is built from the same decode (no further archive load)."""
    from metaloop.cli.main import main

    run_dir = tmp_path / "run"
    argv = finetune_config(omniglot_root, cache_dir, "--set", "eval.ways=5000")
    assert main(["train", *argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "[eval]" in err and "5000" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "latest.pt").exists()
    assert counts["archive_loads"] == 2
