"""File-system faults and the smaller defects of issue 23 on the command line: each is one
``metaloop <cmd>: error: ...`` line naming the path and the problem, found before any work
where it can be known then, with nothing already written lost.

CI runs as root, where permission bits do not stop writes, so the faults are simulated:
the write itself raises ``PermissionError``, ``NotADirectoryError`` or ``OSError(ENOSPC)``."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from metaloop.cli.main import main
from metaloop.train import load_latest

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config) -> Path:
    root = tmp_path_factory.mktemp("faults")
    (root / "tiny.toml").write_text(tiny_config)
    assert main(["train", str(root / "tiny.toml"), "--run-dir", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def config(tmp_path, tiny_config) -> Path:
    (tmp_path / "tiny.toml").write_text(tiny_config)
    return tmp_path / "tiny.toml"


@pytest.fixture
def run(tmp_path, trained) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def error_line(capsys, *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"metaloop {argv[0]}: error: "), err
    assert "internal error" not in lines[0]
    return lines[0]


def files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def refuse_writes_under(monkeypatch, directory: Path, error: OSError) -> None:
    """Make every ``os.open`` for writing under ``directory`` raise ``error`` (what a
    read-only or full file system does)."""
    real_open = os.open
    flags_write = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def fake_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(directory)) and flags & flags_write:
            raise type(error)(error.errno, error.strerror, str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


# -- item 2: file-system faults -------------------------------------------------------------


def test_run_dir_that_is_a_file_or_under_a_file(tmp_path, config, capsys):
    (tmp_path / "afile").write_text("x")
    line = error_line(capsys, "train", str(config), "--run-dir", str(tmp_path / "afile"))
    assert "afile is a file, not a directory" in line
    line = error_line(capsys, "train", str(config), "--run-dir", str(tmp_path / "afile" / "r"))
    assert f"{tmp_path / 'afile'} is a file, not a directory" in line
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EROFS, "Read-only file system"),
    ],
)
def test_unwritable_run_directory_fresh_or_resumed(
    tmp_path, config, run, capsys, monkeypatch, error
):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    before = files(run)
    refuse_writes_under(monkeypatch, tmp_path, error)
    line = error_line(capsys, "train", str(config), "--run-dir", str(fresh))
    assert f"run directory {fresh} is not writable ({error.strerror})" in line
    assert list(fresh.iterdir()) == []
    line = error_line(capsys, "train", str(run), "--set", "train.iterations=6")
    assert f"run directory {run} is not writable" in line
    assert files(run) == before


@pytest.mark.parametrize(
    "error,text",
    [
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory"), "Not a directory"),
    ],
)
def test_run_directory_failing_during_training_keeps_the_last_checkpoint(
    tmp_path, config, capsys, monkeypatch, error, text
):
    """The directory turns unwritable after the first checkpoint: the next checkpoint write
    fails with one line naming the file; latest.pt is the last good checkpoint."""
    import metaloop.train.checkpoint as checkpoint

    run_dir = tmp_path / "run"
    real = checkpoint._atomic_write
    writes = []

    def refused(f):
        raise type(error)(error.errno, error.strerror)  # no file name, like a failed write()

    def failing(path, write):
        if Path(path).name == "latest.pt" and writes:
            return real(path, refused)
        if Path(path).name == "latest.pt":
            writes.append(path)
        return real(path, write)

    monkeypatch.setattr(checkpoint, "_atomic_write", failing)
    line = error_line(
        capsys, "train", str(config), "--run-dir", str(run_dir), "--set", "train.iterations=6"
    )
    assert f"{run_dir / 'latest.pt'}: {text}" in line
    assert load_latest(run_dir)["iteration"] == 2
    assert not list(run_dir.glob(".*.tmp"))


def test_save_predictions_into_an_unwritable_directory_fails_before_the_episodes(
    tmp_path, run, capsys, monkeypatch
):
    import metaloop.evaluation.predictions as predictions

    monkeypatch.setattr(
        predictions, "collect_predictions", lambda *a, **k: pytest.fail("episodes were run")
    )
    out_dir = tmp_path / "preds"
    out_dir.mkdir()
    refuse_writes_under(monkeypatch, out_dir, PermissionError(errno.EACCES, "Permission denied"))
    line = error_line(capsys, "eval", str(run), "--save-predictions", str(out_dir / "p.pt"))
    assert "the directory" in line and "is not writable (Permission denied)" in line
    (tmp_path / "afile").write_text("x")
    line = error_line(
        capsys, "eval", str(run), "--save-predictions", str(tmp_path / "afile" / "d" / "p.pt")
    )
    assert f"{tmp_path / 'afile'} is a file, not a directory" in line


CLASSIFIER = """
seed = 0
[task]
family = "rotating_boundary"
shots = 4
queries = 4
[model]
name = "mlp"
hidden = [8]
[algorithm]
name = "maml"
inner_lr = 0.5
loss = "cross_entropy"
[train]
iterations = 2
meta_batch_size = 2
validate_every = 2
validation_tasks = 2
progress = false
[eval]
episodes = 4
"""


def test_two_evaluations_saving_to_one_path(tmp_path, capsys, monkeypatch):
    """The loser (the file appeared while it evaluated) gets one line, the winner's file
    is untouched."""
    import metaloop.evaluation.predictions as predictions

    (tmp_path / "c.toml").write_text(CLASSIFIER)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "c.toml"), "--run-dir", str(run)]) == 0
    capsys.readouterr()

    target = tmp_path / "p.pt"
    real = predictions.collect_predictions

    def racing(*args, **kwargs):
        result = real(*args, **kwargs)
        target.write_bytes(b"the winner's file")
        return result

    monkeypatch.setattr(predictions, "collect_predictions", racing)
    line = error_line(capsys, "eval", str(run), "--save-predictions", str(target), "--no-progress")
    assert f"{target}: already exists" in line
    assert target.read_bytes() == b"the winner's file"


def test_plot_out_checks_and_suffix(tmp_path, run, capsys):
    pytest.importorskip("matplotlib")
    line = error_line(capsys, "plot", str(run), "--out", str(tmp_path / "missing" / "c.png"))
    assert f"the directory {tmp_path / 'missing'} does not exist" in line
    assert main(["plot", str(run), "--out", str(tmp_path / "curve")]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == str(tmp_path / "curve.png") and (tmp_path / "curve.png").exists()


def test_unreadable_or_binary_config_files_are_named(tmp_path, capsys, monkeypatch, tiny_config):
    binary = tmp_path / "random.toml"
    binary.write_bytes(bytes(range(128, 256)))
    line = error_line(capsys, "train", str(binary), "--run-dir", str(tmp_path / "r"))
    assert f"config file {binary} is not UTF-8 text" in line
    locked = tmp_path / "locked.toml"
    locked.write_text(tiny_config)
    real = Path.read_text

    def refuse(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    line = error_line(capsys, "train", str(locked), "--run-dir", str(tmp_path / "r"))
    assert f"config file {locked} cannot be read: Permission denied" in line
    assert not (tmp_path / "r").exists()


# -- items 3, 5, 6, 8, 10, 11 ---------------------------------------------------------------


def test_lake_runs_on_a_regression_run(run, tmp_path, capsys):
    line = error_line(capsys, "lake-runs", str(run), "--runs", str(tmp_path / "runs.zip"))
    assert "is not an image classifier" in line and "'sinusoid'" in line


def test_lake_runs_negative_steps(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["lake-runs", str(run), "--runs", str(tmp_path), "--steps=-3"])
    assert info.value.code == 2
    assert "expected an integer >= 0, got -3" in capsys.readouterr().err


def test_resuming_with_another_models_checkpoint(tmp_path, run, capsys, tiny_config):
    other = tmp_path / "other.toml"
    other.write_text(tiny_config.replace("hidden = [8]", "hidden = [5]"))
    assert main(["train", str(other), "--run-dir", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    shutil.copy(tmp_path / "o" / "latest.pt", run / "latest.pt")
    line = error_line(capsys, "train", str(run), "--set", "train.iterations=6")
    assert "the checkpoint does not fit this learner" in line and "size mismatch" in line


def test_a_run_that_skips_every_step_fails_and_its_log_stays_json(tmp_path, config, capsys):
    run_dir = tmp_path / "run"
    line = error_line(
        capsys,
        "train",
        str(config),
        "--run-dir",
        str(run_dir),
        "--set",
        "algorithm.inner_lr=1e30",
        "--set",
        'train.nonfinite="skip"',
    )
    assert "2 of the 2 meta-steps so far were skipped" in line
    for text in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))
    pytest.importorskip("matplotlib")
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0


def test_a_run_that_failed_before_its_first_step_does_not_block_its_directory(
    tmp_path, config, capsys
):
    run_dir = tmp_path / "run"
    line = error_line(
        capsys,
        "train",
        str(config),
        "--run-dir",
        str(run_dir),
        "--set",
        'algorithm.name="protonet"',
    )
    assert line
    assert main(["train", str(config), "--run-dir", str(run_dir)]) == 0  # the fixed config


def test_a_resume_with_nothing_to_train_rewrites_nothing(run, capsys):
    before = files(run)
    assert main(["train", str(run), "--set", "train.iterations=2"]) == 0
    assert files(run)["config.toml"] == before["config.toml"]


def test_bench_device_and_eval_seed(run, capsys):
    line = error_line(capsys, "bench", "sinusoid", "--device", "tpu")
    assert "--device: device must be one of cpu, cuda, cuda:N or mps, got 'tpu'" in line
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--seed", str(2**70)])
    assert "argument --seed: a seed must lie in -2**63..2**63-1" in capsys.readouterr().err


def test_a_failed_download_does_not_advise_download_true(tmp_path):
    from metaloop.data.omniglot import OmniglotError, download_archive

    with pytest.raises(OmniglotError) as info:
        download_archive("background", tmp_path, url=f"file://{tmp_path}/nowhere", progress=False)
    text = str(info.value)
    assert "could not download" in text and "download=True" not in text
