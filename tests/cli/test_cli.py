"""The ``metaloop`` command end to end, in-process: train -> eval --json -> plot -> resume,
``--set`` overrides, and every user error as one ``metaloop <cmd>: error: ...`` line with
exit status 2, before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaloop.cli.main import main
from metaloop.train import load_checkpoint

torch.set_num_threads(1)

CONFIG = """
name = "tiny"
seed = 3

[task]
family = "sinusoid"
shots = 4
queries = 4

[model]
name = "mlp"
hidden = [8]

[algorithm]
name = "maml"
inner_lr = 0.01
inner_steps = 1

[train]
iterations = 6
meta_batch_size = 3
validate_every = 3
validation_tasks = 4
checkpoint_every = 3
log_every = 2
threads = 1
progress = false

[eval]
episodes = 10
steps = [0, 1]
shots = 3
"""


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, command: str, *argv: str) -> str:
    code, out, err = run(capsys, command, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"metaloop {command}: error: "), err
    return lines[0]


def test_train_eval_plot_resume(tmp_path, config, capsys):
    run_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", str(config), "--run-dir", str(run_dir))
    assert code == 0
    summary = json.loads(out)
    assert summary["iterations"] == 6 and summary["run_dir"] == str(run_dir)
    assert set(summary) == {
        "run_dir",
        "iterations",
        "seconds",
        "best_iteration",
        "best_loss",
        "stopped_early",
        "skipped_steps",
    }
    assert summary["skipped_steps"] == 0
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.pt",
        "config.toml",
        "latest.prev.pt",
        "latest.pt",
        "metrics.jsonl",
    ]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["split"]) for r in records] == [
        (2, "train"),
        (3, "val"),
        (4, "train"),
        (6, "val"),
        (6, "train"),
    ]
    assert set(records[0]) == {"iteration", "split", "loss", "query_loss", "grad_norm", "seconds"}
    assert set(records[1]) == {"iteration", "split", "loss", "best"}

    code, out, _ = run(capsys, "eval", str(run_dir), "--json", "--checkpoint", "latest")
    assert code == 0
    result = json.loads(out)
    assert set(result) == {
        "episodes",
        "seed",
        "steps",
        "tails",
        "divergence",
        "run_dir",
        "checkpoint",
        "checkpoint_iteration",
        "ensemble",
        "protocol",
        "part",
        "tta_shift",
        "balanced",
        "attack_epsilon",
        "task",
        "episode",
        "algorithm",
        "reference",
    }
    assert result["episodes"] == 10 and result["seed"] == 12345
    assert set(result["steps"]) == {"0", "1"}
    assert set(result["steps"]["1"]["loss"]) == {"mean", "ci95", "std", "episodes", "median"}
    assert result["checkpoint_iteration"] == 6 and result["checkpoint"] == "latest"
    assert result["episode"] == {"ways": None, "shots": 3, "queries": 4}
    assert result["algorithm"] == "maml" and result["reference"] is None
    assert result["task"] == {"family": "sinusoid", "shots": 4, "queries": 4}
    again = json.loads(run(capsys, "eval", str(run_dir), "--json", "--checkpoint", "latest")[1])
    assert again["steps"] == result["steps"]  # seeded: the same episodes, the same numbers

    code, out, err = run(capsys, "eval", str(run_dir), "--episodes", "5", "--steps", "2")
    assert code == 0 and "5 episodes, mean +- 95% CI" in out and "2 steps" in out
    assert "5/5" in err  # the progress bar, on stderr
    code, out, err = run(
        capsys, "eval", str(run_dir), "--episodes", "5", "--steps", "2", "--no-progress"
    )
    assert code == 0 and "5 episodes, mean +- 95% CI" in out and err == ""
    attacked = json.loads(
        run(
            capsys,
            "eval",
            str(run_dir),
            "--json",
            "--checkpoint",
            "latest",
            "--attack-epsilon",
            "0.5",
        )[1]
    )
    assert attacked["attack_epsilon"] == 0.5 and result["attack_epsilon"] is None
    assert attacked["steps"]["1"]["loss"]["mean"] > result["steps"]["1"]["loss"]["mean"]
    assert "epsilon must be a finite number >= 0" in user_error(
        capsys, "eval", str(run_dir), "--attack-epsilon", "-1"
    )

    png = tmp_path / "curve.png"
    code, out, _ = run(capsys, "plot", str(run_dir), "--out", str(png))
    assert code == 0 and out.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resume with more iterations: the log continues, config.toml records the new total
    code, out, _ = run(capsys, "train", str(run_dir), "--set", "train.iterations=9")
    assert code == 0 and json.loads(out)["iterations"] == 9
    assert "iterations = 9" in (run_dir / "config.toml").read_text()
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records][-3:] == [8, 9, 9]
    assert load_checkpoint(run_dir / "latest.pt")["iteration"] == 9


def test_set_overrides_reach_the_run(tmp_path, config, capsys):
    run_dir = tmp_path / "run"
    code, _, _ = run(
        capsys,
        "train",
        str(config),
        "--run-dir",
        str(run_dir),
        "--set",
        "train.iterations=2",
        "--set",
        "model.hidden=[5, 6]",
        "--set",
        "seed=11",
        "--set",
        "algorithm.first_order=true",
    )
    assert code == 0
    saved = (run_dir / "config.toml").read_text()
    assert "hidden = [5, 6]" in saved and "seed = 11" in saved and "first_order = true" in saved
    weights = load_checkpoint(run_dir / "latest.pt")["learner"]
    assert weights["model.layers.0.weight"].shape == (5, 1)


def test_a_run_dir_with_a_different_config_is_refused(tmp_path, config, capsys):
    run_dir = tmp_path / "run"
    assert run(capsys, "train", str(config), "--run-dir", str(run_dir))[0] == 0
    line = user_error(
        capsys, "train", str(config), "--run-dir", str(run_dir), "--set", "train.outer_lr=0.01"
    )
    assert "already holds a run with a different config (train.outer_lr: 0.001 -> 0.01)" in line
    # the same config (more iterations allowed) resumes
    code, out, _ = run(
        capsys, "train", str(config), "--run-dir", str(run_dir), "--set", "train.iterations=7"
    )
    assert code == 0 and json.loads(out)["iterations"] == 7


def test_resume_refuses_overrides_the_checkpoint_would_contradict(tmp_path, config, capsys):
    run_dir = tmp_path / "run"
    assert run(capsys, "train", str(config), "--run-dir", str(run_dir))[0] == 0
    line = user_error(capsys, "train", str(run_dir), "--set", "model.hidden=[4]")
    assert "resuming" in line and "model.hidden: [8] -> [4] cannot change" in line
    line = user_error(capsys, "train", str(run_dir), "--set", "train.outer_lr=0.5")
    assert "train.outer_lr: 0.001 -> 0.5 cannot change" in line
    assert "train.nonfinite" in line  # the message lists what may change
    assert run(capsys, "train", str(run_dir), "--set", 'train.nonfinite="skip"')[0] == 0


UNKNOWN_KEYS = [
    ("train.foo=1", "[train] unknown key 'foo'; valid keys are checkpoint_every, "),
    ("eval.foo=1", "[eval] unknown key 'foo'; valid keys are batch_size, "),
    ("data.foo=1", "[data] unknown key 'foo'; valid keys are affine, cache_dir, "),
    ("task.foo=1", "[task] unknown key 'foo' for Sinusoid; valid keys are amplitude, dtype, "),
    ("model.foo=1", "[model] unknown key 'foo' for MLP; valid keys are activation, bias, "),
    ("algorithm.foo=1", "[algorithm] unknown key 'foo' for MAML; valid keys are adapt, "),
    ("foo=1", "--set foo: unknown key; top-level keys are device, name, seed"),
    ("bogus.x=1", "--set bogus.x: unknown section 'bogus'; sections are task, model, "),
    ("train.iterations", "--set expects key=value"),
]

BAD_VALUES = [
    ("train.iterations=0", "train.iterations must be > 0, got 0"),
    ("train.meta_batch_size=-3", "train.meta_batch_size must be > 0, got -3"),
    ("train.iterations=2.5", "train.iterations must be an integer, got 2.5"),
    ("train.outer_lr=nan", "train.outer_lr must be a finite number, got nan"),
    ('train.outer_lr="fast"', "train.outer_lr must be a number, got 'fast'"),
    ('train.optimizer="lbfgs"', "train.optimizer must be one of adam, sgd, adamw, got 'lbfgs'"),
    ('train.nonfinite="ignore"', "train.nonfinite must be one of stop, skip"),
    ("train.patience=-1", "train.patience must be >= 0, got -1"),
    ("train.progress=1", "train.progress must be a boolean, got 1"),
    ("train.iterations.x=1", "train.iterations is an integer, not a table"),
    ("eval.steps=[1, -1]", "eval.steps must be a list of integers >= 0"),
    ("eval.episodes=0", "eval.episodes must be > 0, got 0"),
    ("data.shift=-1", "data.shift must be >= 0, got -1"),
    ('data.train_episodes="x"', "data.train_episodes must be one of any, within-alphabet"),
    ("seed=1e3", "seed must be an integer, got 1000.0"),
    ("seed=99999999999999999999", "seed must be an integer in -2**63..2**63-1"),
    ('device="tpu"', "device must be one of cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("task.shots=0", "[task] shots must be >= 1, got 0"),
    ("task.queries=-2", "[task] queries must be >= 1, got -2"),
    ("task.amplitude=[1]", "task.amplitude must be a list of 2 values (a number, a number)"),
    ("task.amplitude=[5, 1]", "[task] amplitude must be an interval (low <= high), got (5, 1)"),
    ('task.dtype="int8"', "task.dtype must be one of float16, bfloat16, float32, float64"),
    ('task.family="imagenet"', "unknown task family 'imagenet'; choose one of sinusoid, "),
    ("task.family=[1]", "task.family must be a string naming the task to use, got [1]"),
    ('model.hidden="big"', "model.hidden must be a list, got 'big'"),
    ("model.hidden=[0]", "[model] mlp: layer sizes must be positive integers"),
    ('model.activation="swish"', "[model] mlp: unknown activation 'swish'; choose one of relu"),
    ('model.name="resnet"', "unknown model 'resnet'; choose one of mlp"),
    ('algorithm.name="gpt"', "unknown algorithm 'gpt'; choose one of maml, fomaml, "),
    ("algorithm.inner_steps=0", "[algorithm] maml: inner_steps must be >= 1 for this algorithm"),
    ("algorithm.inner_steps=true", "algorithm.inner_steps must be an integer, got True"),
    ("algorithm.inner_lr=-0.1", "[algorithm] maml: inner_lr must be a positive finite number"),
    ("algorithm.inner_lr=inf", "algorithm.inner_lr must be a finite number, got inf"),
    ("algorithm.eval_steps=-1", "[algorithm] maml: eval_steps must be an integer >= 0 or None"),
    ('algorithm.chunk_size="x"', "algorithm.chunk_size must be an integer, got 'x'"),
    ('algorithm.vectorize="jit"', "vectorize must be one of auto, vmap, loop, got 'jit'"),
    ('algorithm.loss="hinge"', "unknown loss 'hinge'; choose one of mse, cross_entropy"),
    ('algorithm.first_order="yes"', "algorithm.first_order must be a boolean, got 'yes'"),
    ('data.affine="yes"', "data.affine must be a boolean, got 'yes'"),
    # caught on the first batch, before the first step: the model does not fit the task
    (
        "model.out_features=3",
        "the model's predictions have shape (4, 3) but the targets have shape (4, 1)",
    ),
    (
        "model.in_features=2",
        "the model cannot process this task (support_x (4, 1), query_x "
        "(4, 1)): mat1 and mat2 shapes cannot be multiplied",
    ),
    (
        'algorithm.loss="cross_entropy"',
        "support_y must hold integer class labels, got dtype torch.float32",
    ),
]


@pytest.mark.parametrize("override, fragment", UNKNOWN_KEYS + BAD_VALUES)
def test_bad_configs_fail_before_training_with_one_line(
    tmp_path, config, capsys, override, fragment
):
    run_dir = tmp_path / "run"
    line = user_error(capsys, "train", str(config), "--run-dir", str(run_dir), "--set", override)
    assert fragment in line
    assert not (run_dir / "latest.pt").exists()
    assert not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text()


def test_unknown_key_in_a_toml_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace("inner_steps = 1", "inner_stpes = 1"))
    line = user_error(capsys, "train", str(bad), "--run-dir", str(tmp_path / "run"))
    assert "[algorithm] unknown key 'inner_stpes' for MAML; valid keys are" in line
    bad.write_text(CONFIG + "\nlearning_rate = 3\n")  # lands in [eval]: unknown there
    assert "[eval] unknown key 'learning_rate'" in user_error(
        capsys, "train", str(bad), "--run-dir", str(tmp_path / "run")
    )
    bad.write_text("[train\n")
    assert "is not valid TOML" in user_error(capsys, "train", str(bad), "--run-dir", str(tmp_path))
    assert "does not exist" in user_error(
        capsys, "train", str(tmp_path / "nope.toml"), "--run-dir", str(tmp_path / "r")
    )
    assert "train needs --run-dir" in user_error(capsys, "train", str(bad))


def test_nonfinite_training_is_a_one_line_error(tmp_path, config, capsys):
    run_dir = tmp_path / "run"
    line = user_error(
        capsys, "train", str(config), "--run-dir", str(run_dir), "--set", "algorithm.inner_lr=1e30"
    )
    assert "non-finite meta-loss (nan) at iteration 1: task(s) [0, 1, 2] of the 3" in line
    assert "nonfinite='skip'" in line
    # the saved state is the finite initial one, from before the failing batch
    state = load_checkpoint(run_dir / "latest.pt")
    assert state["iteration"] == 0
    assert all(torch.isfinite(v).all() for v in state["learner"].values())


def test_eval_and_plot_errors(tmp_path, config, capsys):
    assert "is not a run directory (no config.toml)" in user_error(capsys, "eval", str(tmp_path))
    assert "has no metrics.jsonl" in user_error(capsys, "plot", str(tmp_path))
    run_dir = tmp_path / "run"
    assert run(capsys, "train", str(config), "--run-dir", str(run_dir))[0] == 0
    line = user_error(capsys, "eval", str(run_dir), "--set", "model.hidden=[3]")
    assert "does not fit the learner built from its config and --set model.hidden=[3]" in line
    for name in ("latest.pt", "latest.prev.pt", "best.pt"):
        (run_dir / name).write_bytes(b"junk")
    assert "no readable checkpoint in" in user_error(
        capsys, "eval", str(run_dir), "--checkpoint", "latest"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(run_dir), "--steps", "a,b"])
    assert exit_info.value.code == 2
    assert "--steps takes integers" in capsys.readouterr().err


def test_a_run_being_trained_is_not_trained_twice(tmp_path):
    """A live lock refuses a second trainer; a stale lock (dead PID) is taken over."""
    import subprocess
    import sys

    from metaloop.cli.main import main
    from metaloop.train.lock import LOCK_NAME

    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / LOCK_NAME).write_text(str(sleeper.pid))
        config = Path(__file__).resolve().parents[2] / "configs" / "sinusoid-maml.toml"
        args = [
            "train",
            str(config),
            "--run-dir",
            str(run),
            "--no-progress",
            "--set",
            "train.iterations=2",
            "--set",
            "train.validate_every=1",
        ]
        assert main(args) == 2
        assert not (run / "latest.pt").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(args) == 0  # the owner is gone: the lock is stale
    assert (run / "latest.pt").exists()


def test_init_from_warm_starts_a_new_run_and_reports_bad_sources(tmp_path, config, capsys):
    from metaloop.train.checkpoint import load_checkpoint

    source = tmp_path / "source"
    assert run(capsys, "train", str(config), "--run-dir", str(source))[0] == 0
    best = load_checkpoint(source / "best.pt")["learner"]
    target = tmp_path / "target"
    code, _, err = run(
        capsys,
        "train",
        str(config),
        "--run-dir",
        str(target),
        "--set",
        f'train.init_from="{source}"',
        "--set",
        "train.iterations=1",
        "--set",
        "algorithm.inner_lr=1e-12",  # the single step barely moves the weights
        "--set",
        "train.outer_lr=1e-12",
    )
    assert code == 0 and f"init_from {source}: 4 tensors loaded" in err
    warm = load_checkpoint(target / "latest.pt")["learner"]
    for k, v in best.items():
        torch.testing.assert_close(warm[k], v, rtol=1e-6, atol=1e-9)
    line = user_error(
        capsys,
        "train",
        str(config),
        "--run-dir",
        str(tmp_path / "a"),
        "--set",
        f'train.init_from="{tmp_path / "missing"}"',
    )
    assert "[train] init_from = " in line and "no such run directory or checkpoint file" in line
    line = user_error(
        capsys,
        "train",
        str(config),
        "--run-dir",
        str(tmp_path / "b"),
        "--set",
        f'train.init_from="{source}"',
        "--set",
        "model.hidden=[3, 3]",
    )
    assert "init_from: layers.0.weight has shape (8, 1)" in line and "(3, 1) in this model" in line
    assert not (tmp_path / "b" / "latest.pt").exists()


def test_tta_shift_is_refused_for_regression(tmp_path, config, capsys):
    run_dir = tmp_path / "run"
    assert run(capsys, "train", str(config), "--run-dir", str(run_dir))[0] == 0
    line = user_error(capsys, "eval", str(run_dir), "--tta-shift", "1")
    assert "'maml'" in line and "averages class probabilities" in line and "'mse'" in line
    assert "must be an integer >= 0, got -1" in user_error(
        capsys, "eval", str(run_dir), "--tta-shift", "-1"
    )
