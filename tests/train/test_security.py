"""Untrusted files: a checkpoint or predictions file whose pickle runs code is refused on
every path that reads one (library loaders, ``eval``, ``lake-runs``, ``diagnose``, resume,
``train.init_from``, ``combine``), without running it and with a one-line error.

Each malicious file holds an object whose ``__reduce__`` calls ``os.system`` (or ``exec``)
to create a marker file; a plain ``torch.load(weights_only=False)`` of the same file does
create it (checked), so the files have teeth."""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from metaloop.cli.main import main
from metaloop.evaluation.predictions import FORMAT, load_predictions
from metaloop.train.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    atomic_save,
    load_best,
    load_checkpoint,
    load_latest,
    save_checkpoint,
    to_plain,
    warm_start,
)

torch.set_num_threads(1)

PAYLOADS = ("os.system", "exec", "legacy-pickle")


class _Payload:
    """Pickles as a call of ``fn(*args)``: what unpickling it would run."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payload(how: str, marker: Path) -> _Payload:
    if how == "exec":
        return _Payload(exec, (f"open({str(marker)!r}, 'w').close()",))
    return _Payload(os.system, (f"touch '{marker}'",))


def plant(path: Path, marker: Path, how: str = "os.system", predictions: bool = False) -> None:
    """Write a malicious file at ``path`` that looks like a metaloop checkpoint (or
    predictions file) and creates ``marker`` when unpickled."""
    if predictions:
        content = {
            "format": FORMAT,
            "log_probs": {0: torch.zeros(2, 3, 2)},
            "query_y": torch.zeros(2, 3, dtype=torch.long),
            "seed": 0,
            "info": _payload(how, marker),
        }
    else:
        content = {"iteration": 3, "learner": {}, "config": _payload(how, marker)}
    if path.exists():
        path.unlink()
    if how == "legacy-pickle":  # not a zip: torch's legacy format reads a raw pickle first
        path.write_bytes(pickle.dumps(content, protocol=2))
    elif how == "raw-pickle-5":  # opcodes the safe unpickler does not parse: "unreadable"
        path.write_bytes(pickle.dumps(content, protocol=5))
    else:
        torch.save(content, path)


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.mark.parametrize("how", ["os.system", "exec"])
def test_the_planted_files_do_run_code_under_an_unsafe_load(tmp_path, how):
    marker = tmp_path / "pwned"
    plant(tmp_path / "evil.pt", marker, how)
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what the previous version did
    assert marker.exists()


@pytest.mark.parametrize("how", PAYLOADS)
def test_library_loaders_refuse_a_malicious_checkpoint(tmp_path, how):
    marker = tmp_path / "pwned"
    save_checkpoint({"iteration": 1, "learner": {"w": torch.ones(2)}}, tmp_path)
    save_checkpoint({"iteration": 2, "learner": {"w": torch.ones(2)}}, tmp_path)
    plant(tmp_path / "latest.pt", marker, how)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(tmp_path / "latest.pt")
    text = one_line(info.value)
    assert "refused" in text and ("system" in text or "exec" in text), text
    # a planted latest.pt is not a kill's leftover: no silent fallback to latest.prev.pt
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnsafeCheckpointError):
            load_latest(tmp_path)
    plant(tmp_path / "best.pt", marker, how)
    with pytest.raises(UnsafeCheckpointError):
        load_best(tmp_path)
    for source in (tmp_path, tmp_path / "best.pt"):
        with pytest.raises(UnsafeCheckpointError):
            warm_start(torch.nn.Linear(1, 2), source)
    assert not marker.exists()


@pytest.mark.parametrize("how", PAYLOADS)
def test_load_predictions_refuses_a_malicious_file(tmp_path, how):
    marker = tmp_path / "pwned"
    plant(tmp_path / "p.pt", marker, how, predictions=True)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_predictions(tmp_path / "p.pt")
    assert "predictions file" in one_line(info.value)
    assert not marker.exists()


def test_a_checkpoint_with_a_foreign_class_is_refused_with_how_to_convert_it(tmp_path):
    """An old checkpoint holding, say, a ``pathlib`` path in its config: refused (no unsafe
    fallback), the message points at the conversion recipe."""
    torch.save({"iteration": 1, "learner": {}, "config": {"root": Path("/data")}}, tmp_path / "o")
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(tmp_path / "o")
    text = one_line(info.value)
    assert "pathlib" in text and "Converting an old checkpoint" in text


def test_the_conversion_recipe_in_the_docs_works(tmp_path):
    """docs/reliability.md's recipe: load the trusted file unsafely once, ``to_plain`` it and
    ``atomic_save`` it; the result loads safely with the same content."""
    path = tmp_path / "old.pt"
    torch.save({"iteration": 4, "learner": {"w": torch.arange(3.0)}, "p": Path("/x")}, path)
    atomic_save(to_plain(torch.load(path, weights_only=False)), path)
    state = load_checkpoint(path)
    assert state["p"] == "/x" and torch.equal(state["learner"]["w"], torch.arange(3.0))


def test_atomic_save_writes_plain_types_or_refuses_before_writing(tmp_path):
    np = pytest.importorskip("numpy")
    state = {
        "iteration": np.int64(2),
        "learner": {"w": np.arange(3.0)},
        "config": {"root": Path("/data"), "lr": np.float32(0.5), "steps": (1, 2), "s": {1}},
    }
    atomic_save(state, tmp_path / "a.pt")
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded["iteration"] == 2 and type(loaded["iteration"]) is int
    assert torch.equal(loaded["learner"]["w"], torch.arange(3.0, dtype=torch.float64))
    assert loaded["config"] == {"root": "/data", "lr": 0.5, "steps": (1, 2), "s": {1}}
    with pytest.raises(TypeError, match=r"checkpoint\['config'\]\['f'\] is a builtins.function"):
        atomic_save({"iteration": 1, "config": {"f": lambda: 0}}, tmp_path / "b.pt")
    assert not (tmp_path / "b.pt").exists()


def test_a_pickle_the_safe_unpickler_cannot_parse_runs_nothing_either(tmp_path):
    """A raw protocol-5 pickle stops the safe unpickler at its first unknown opcode, before
    the import: "unreadable" (like a corrupt file, so a resume falls back to the previous
    checkpoint with a warning), and nothing runs."""
    marker = tmp_path / "pwned"
    save_checkpoint({"iteration": 1, "learner": {"w": torch.ones(2)}}, tmp_path)
    save_checkpoint({"iteration": 2, "learner": {"w": torch.ones(2)}}, tmp_path)
    plant(tmp_path / "latest.pt", marker, "raw-pickle-5")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "latest.pt")
    assert "unreadable" in one_line(info.value)
    with pytest.warns(RuntimeWarning, match="resuming from the previous checkpoint"):
        assert load_latest(tmp_path)["iteration"] == 1
    assert not marker.exists()


def test_corrupt_files_stay_corrupt_not_unsafe(tmp_path):
    """Garbage is 'unreadable' (the fallback to the previous checkpoint still applies), on
    one line, not 'refused'."""
    (tmp_path / "g.pt").write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "g.pt")
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert "unreadable" in one_line(info.value)


# -- the command line --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_config) -> Path:
    root = tmp_path_factory.mktemp("security")
    (root / "tiny.toml").write_text(tiny_config)
    assert main(["train", str(root / "tiny.toml"), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def cli_error(capsys, *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"metaloop {argv[0]}: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "path,planted",
    [
        ("eval", "best.pt"),
        ("eval --checkpoint latest", "latest.pt"),
        ("lake-runs", "best.pt"),
        ("diagnose", "best.pt"),
        ("resume", "latest.pt"),
        ("init_from run", "best.pt"),
        ("init_from file", "latest.pt"),
        ("combine", "p.pt"),
    ],
)
def test_every_command_refuses_a_malicious_file(
    tmp_path, trained_run, capsys, path, planted, tiny_config
):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "pwned"
    plant(run / planted, marker, predictions=planted == "p.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    config = tmp_path / "new.toml"
    config.write_text(tiny_config)
    argv = {
        "eval": ["eval", str(run)],
        "eval --checkpoint latest": ["eval", str(run), "--checkpoint", "latest"],
        "lake-runs": ["lake-runs", str(run), "--runs", str(tmp_path / "runs.zip")],
        "diagnose": ["diagnose", str(run)],
        "resume": ["train", str(run), "--set", "train.iterations=6"],
        "init_from run": [
            "train",
            str(config),
            "--run-dir",
            str(tmp_path / "new"),
            "--set",
            f'train.init_from="{run}"',
        ],
        "init_from file": [
            "train",
            str(config),
            "--run-dir",
            str(tmp_path / "new"),
            "--set",
            f'train.init_from="{run / "latest.pt"}"',
        ],
        "combine": ["combine", str(run / "p.pt")],
    }[path]
    line = cli_error(capsys, *argv)
    assert "refused" in line and "posix.system" in line, line
    assert not marker.exists()
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # nothing of the run rewritten on the way to the refusal


# -- predictions files that carry the right format tag but not the right content ---------


def _good_predictions() -> dict:
    return {
        "format": FORMAT,
        "log_probs": {0: torch.log_softmax(torch.randn(2, 3, 4), -1), 1: torch.zeros(2, 3, 4)},
        "query_y": torch.tensor([[0, 1, 3], [2, 2, 1]]),
        "seed": 7,
        "info": {"runs": ["a"]},
    }


MALFORMED = {
    "missing query_y": (lambda p: p.pop("query_y"), "missing query_y"),
    "missing several": (lambda p: [p.pop("seed"), p.pop("log_probs")], "missing log_probs, seed"),
    "log_probs a list": (lambda p: p.update(log_probs=[1]), "log_probs must be a non-empty dict"),
    "log_probs empty": (lambda p: p.update(log_probs={}), "log_probs must be a non-empty dict"),
    "step a string": (lambda p: p["log_probs"].update({"x": torch.zeros(2, 3, 4)}), "step counts"),
    "step negative": (lambda p: p["log_probs"].update({-1: torch.zeros(2, 3, 4)}), "step counts"),
    "log_probs 2-d": (lambda p: p["log_probs"].update({0: torch.zeros(2, 3)}), "log_probs[0] must"),
    "log_probs ints": (
        lambda p: p["log_probs"].update({0: torch.zeros(2, 3, 4, dtype=torch.long)}),
        "floating [episodes, queries, ways]",
    ),
    "log_probs not a tensor": (lambda p: p["log_probs"].update({0: [[0.0]]}), "got list"),
    "shapes differ": (
        lambda p: p["log_probs"].update({1: torch.zeros(2, 3, 5)}),
        "log_probs[1] has shape (2, 3, 5), the others (2, 3, 4)",
    ),
    "NaN": (lambda p: p["log_probs"][1].fill_(float("nan")), "NaN or +inf"),
    "labels float": (lambda p: p.update(query_y=torch.zeros(2, 3)), "query_y must be an integer"),
    "labels shape": (
        lambda p: p.update(query_y=torch.zeros(3, 2, dtype=torch.long)),
        "query_y has shape (3, 2)",
    ),
    "label too large": (lambda p: p["query_y"].__setitem__((0, 0), 4), "outside 0..3 for 4 ways"),
    "label negative": (lambda p: p["query_y"].__setitem__((0, 0), -1), "outside 0..3"),
    "seed float": (lambda p: p.update(seed=1.5), "seed must be an integer"),
    "seed bool": (lambda p: p.update(seed=True), "seed must be an integer"),
    "info a list": (lambda p: p.update(info=[1]), "info must be a dict"),
}


def test_a_well_formed_predictions_file_loads(tmp_path):
    torch.save(_good_predictions(), tmp_path / "p.pt")
    loaded = load_predictions(tmp_path / "p.pt")
    assert loaded.seed == 7 and sorted(loaded.log_probs) == [0, 1]


@pytest.mark.parametrize("fault", sorted(MALFORMED))
def test_combine_validates_the_structure_of_predictions_files(tmp_path, capsys, fault):
    damage, expected = MALFORMED[fault]
    payload = _good_predictions()
    damage(payload)
    torch.save(payload, tmp_path / "p.pt")
    with pytest.raises(ValueError) as info:
        load_predictions(tmp_path / "p.pt")
    assert expected in one_line(info.value) and str(tmp_path / "p.pt") in str(info.value)
    line = cli_error(capsys, "combine", str(tmp_path / "p.pt"))
    assert "is not a valid predictions file" in line and expected in line


@pytest.mark.parametrize("protocol", [2, 5])
def test_dataset_pickles_are_read_by_a_data_only_unpickler(tmp_path, protocol):
    """tiered-ImageNet and CIFAR-100 ship as pickles: a planted one is refused unrun, while
    arrays, bytes and dicts (what the real files hold) still load."""
    np = pytest.importorskip("numpy")
    from metaloop.data.benchmarks import _unpickle
    from metaloop.data.folder import ImageDataError

    marker = tmp_path / "pwned"
    evil = tmp_path / "train_images_png.pkl"
    evil.write_bytes(pickle.dumps({"x": _payload("os.system", marker)}, protocol=protocol))
    with pytest.raises(ImageDataError, match=r"refused to import posix\.system") as info:
        _unpickle(evil)
    assert "\n" not in str(info.value) and not marker.exists()
    good = tmp_path / "labels.pkl"
    data = {"label_specific": np.arange(4), "images": [np.frombuffer(b"png", np.uint8), b"x"]}
    good.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = _unpickle(good)
    assert (loaded["label_specific"] == np.arange(4)).all() and loaded["images"][1] == b"x"
