"""``metaloop rl``: train / eval / plot on the shipped presets (shrunk), and config errors."""

from __future__ import annotations

import json
import re

import pytest
import torch

from metaloop.cli.main import main

torch.set_num_threads(1)


def with_sets(args: list[str], sets: list[str]) -> list[str]:
    return args + [part for s in sets for part in ("--set", s)]


def test_bandit_rl2_train_eval_plot(tmp_path, capsys):
    run = tmp_path / "rl2"
    sets = ["train.iterations=2", "train.meta_batch_size=4", "eval.horizons=[5]", "env.horizon=5"]
    args = ["rl", "train", "configs/bandit-rl2.toml", "--run-dir", str(run)]
    assert main(with_sets(args, sets)) == 0
    assert main(["rl", "eval", str(run), "--tasks", "20", "--baselines", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    block = result["horizon=5"]
    assert {"rl2", "ucb1", "gittins", "thompson"} <= set(block)
    assert 0 <= block["rl2"]["total_reward"]["mean"] <= 5
    assert len(block["ucb1"]["regret_curve"]) == 5
    assert main(["rl", "plot", str(run)]) == 0
    assert (run / "rl.png").stat().st_size > 0


def test_navigation_maml_rl_reports_return_after_steps(tmp_path, capsys):
    run = tmp_path / "nav"
    sets = ["train.iterations=1", "train.meta_batch_size=2", "env.horizon=4", "eval.steps=[0,1]"]
    sets += ["algorithm.inner_episodes=2", "algorithm.outer_episodes=2"]
    args = ["rl", "train", "configs/navigation-maml-rl.toml", "--run-dir", str(run)]
    assert main(with_sets(args, sets)) == 0
    assert main(["rl", "eval", str(run), "--tasks", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["return_after_steps"]) == {"0", "1"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm.hiden=3", "takes no key"),
        ("train.iters=3", "unknown \\[train\\] key"),
        ("env.name=cartpole", "unknown environment"),
        ("algorithm.name=ppo", "unknown meta-RL algorithm"),
        ("env.horizon=0", "horizon must be a positive integer"),
    ],
)
def test_config_errors_are_one_line(tmp_path, capsys, override, message):
    code = main(
        ["rl", "train", "configs/bandit-rl2.toml", "--run-dir", str(tmp_path), "--set", override]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err)


@pytest.mark.parametrize(("preset", "arms"), [("k5-n100", 5), ("k10-n100", 10)])
def test_long_horizon_bandit_presets_build_rl2_at_n_100(preset, arms):
    from metaloop.cli.rl import build, load

    learner = build(load(f"configs/bandit-rl2-{preset}.toml"))
    assert learner.learns_in_context and learner.env.horizon == 100
    assert learner.action_dim == arms


def test_navigation_preset_builds_the_inner_step_it_documents():
    from metaloop.cli.rl import build, load

    learner = build(load("configs/navigation-maml-rl.toml"))
    assert not learner.learns_in_context and learner.baseline == "linear"
    assert learner.normalize_advantages and learner.time_average and not learner.sampling_term
