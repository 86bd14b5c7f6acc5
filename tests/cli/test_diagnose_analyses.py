"""``metaloop diagnose`` analysis flags: JSON keys, numbers against the library, PNGs."""

from __future__ import annotations

import json

import pytest
import torch

from metaloop.cli.main import main

torch.set_num_threads(1)

CONFIG = """
name = "tiny-linear"
seed = 0
[task]
family = "linear"
dim = 3
shots = 5
queries = 5
noise_std = 1.0
[model]
name = "mlp"
hidden = []
bias = false
[algorithm]
name = "maml"
inner_lr = 0.05
inner_steps = 1
[train]
iterations = 20
meta_batch_size = 4
optimizer = "adam"
outer_lr = 0.01
validate_every = 20
validation_tasks = 10
checkpoint_every = 20
log_every = 10
threads = 1
[eval]
episodes = 10
steps = [1]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diag")
    (folder / "c.toml").write_text(CONFIG)
    assert (
        main(["train", str(folder / "c.toml"), "--run-dir", str(folder / "run"), "--no-progress"])
        == 0
    )
    return folder / "run"


def test_diagnose_flags_report_and_plot(run_dir, capsys):
    capsys.readouterr()
    plots = run_dir.parent / "plots"
    argv = ["diagnose", str(run_dir), "--json", "--batches", "2", "--max-steps", "6"]
    argv += ["--oracle", "--inner-lrs", "0.05,0.2", "--loto", "--loto-tasks", "3"]
    argv += ["--iterations", "3", "--pool-sizes", "1,2", "--pool-points", "12"]
    argv += ["--noise", "--noise-draws", "3,2,2", "--plot", str(plots), "--inner-decay", "0.5"]
    argv += ["--support-jitter", "0.3"]
    argv += ["--geometry", "--noise-shots", "2,5", "--noise-batch-sizes", "1,4"]
    argv += ["--noise-batches", "3"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["inner_curves"]) == {"0.05", "0.2"}
    assert len(report["inner_curves"]["0.2"]["query_loss"]) == 7
    assert report["loto"]["train_tasks"] == 3 and report["loto"]["low"] <= report["loto"]["ratio"]
    assert [p["pool_size"] for p in report["pool_sizes"]] == [1, 2]
    n = report["noise"]
    assert n["total"] == pytest.approx(n["task"] + n["support"] + n["query"])
    assert set(report["noise_orders"]["ratios"]) == {"task", "support", "query", "total"}
    o = report["oracle"]
    assert o["family"] == "LinearRegression" and len(o["oracle"]) == 3
    assert o["distance"] == pytest.approx(
        sum((a - b) ** 2 for a, b in zip(o["learned"], o["oracle"])) ** 0.5
    )
    geometry = report["geometry"]
    assert len(geometry["alignment"]["cosines"]) == 25
    assert geometry["alignment"]["optima"] == "true task weights"
    assert geometry["dead_relu"] is None and geometry["subspace"]["to_subspace"] < 1e-9
    decay = report["remedies"]
    assert decay["inner_lr"] == 0.05
    curves = decay["curves"]
    assert set(curves) == {"as trained", "decay 0.5 to zero", "decay 0.5 to init", "jitter 0.3 x4"}
    # same theta_0, so the same loss before any step; the decay changes every later step
    assert len({c["query_loss"][0] for c in curves.values()}) == 1
    assert len({c["query_loss"][-1] for c in curves.values()}) == 4
    assert curves["as trained"]["query_loss"] == report["inner_curves"]["0.05"]["query_loss"]
    assert set(report["noise_by_shots"]) == {"2", "5"}
    by_batch = report["noise_by_batch"]
    assert set(by_batch) == {"2", "5"}
    assert [p["meta_batch_size"] for p in by_batch["5"]["points"]] == [1, 4]
    assert all(p["batches"] == 3 and p["trace"] > 0 for p in by_batch["5"]["points"])
    for name in (
        "noise_by_batch.png",
        "noise_by_shots.png",
        "remedies.png",
        "inner_curves.png",
        "pool_sizes.png",
        "noise.png",
    ):
        assert (plots / name).stat().st_size > 1000


def test_oracle_flag_refuses_a_model_with_hidden_layers(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(CONFIG.replace("hidden = []", "hidden = [4]"))
    assert (
        main(["train", str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "r"), "--no-progress"])
        == 0
    )
    assert main(["diagnose", str(tmp_path / "r"), "--batches", "2", "--oracle"]) == 2
    assert "bias-free linear model" in capsys.readouterr().err
    protonet = CONFIG.replace(
        'name = "maml"\ninner_lr = 0.05\ninner_steps = 1', 'name = "protonet"'
    )
    protonet = protonet.replace(
        'family = "linear"\ndim = 3\nshots = 5', 'family = "rotating_boundary"\nshots = 30'
    )
    protonet = protonet.replace("noise_std = 1.0\n", "").replace(
        "hidden = []\nbias = false", "hidden = [4]"
    )
    (tmp_path / "p.toml").write_text(protonet)
    assert (
        main(["train", str(tmp_path / "p.toml"), "--run-dir", str(tmp_path / "p"), "--no-progress"])
        == 0
    )
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "p"), "--batches", "2", "--inner-lrs", "0.1"]) == 2
    assert "adapts by inner gradient steps" in capsys.readouterr().err


def test_diversity_flag_on_sinusoid_and_refused_without_intervals(run_dir, tmp_path, capsys):
    assert main(["diagnose", str(run_dir), "--batches", "2", "--diversity", "0.5,1"]) == 2
    assert "interval parameters" in capsys.readouterr().err
    sine = CONFIG.replace('family = "linear"\ndim = 3', 'family = "sinusoid"')
    sine = sine.replace("noise_std = 1.0\n", "").replace(
        "hidden = []\nbias = false", "hidden = [8]"
    )
    (tmp_path / "s.toml").write_text(sine)
    assert (
        main(["train", str(tmp_path / "s.toml"), "--run-dir", str(tmp_path / "s"), "--no-progress"])
        == 0
    )
    capsys.readouterr()
    argv = ["diagnose", str(tmp_path / "s"), "--batches", "2", "--json", "--iterations", "2"]
    assert main([*argv, "--diversity", "1,0.5", "--plot", str(tmp_path / "p")]) == 0
    result = json.loads(capsys.readouterr().out)["diversity"]
    assert result["attributes"] == ["amplitude", "phase"]
    assert [p["width"] for p in result["points"]] == [0.5, 1.0]
    assert result["ranges"]["0.5"]["amplitude"] == pytest.approx([1.325, 3.775])
    # shifted by 0.75 widths: amplitude centre 2.55 + 0.75 * 4.9
    assert result["test_ranges"]["shifted by 0.75"]["amplitude"] == pytest.approx([3.775, 8.675])
    assert (tmp_path / "p" / "diversity.png").exists()


def test_bn_policies_flag_refuses_a_model_without_a_norm_and_unknown_policies(run_dir, capsys):
    capsys.readouterr()
    assert main(["diagnose", str(run_dir), "--batches", "2", "--bn-policies", "all"]) == 2
    assert "normalization policy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["diagnose", str(run_dir), "--bn-policies", "batch_episode,batchnorm"])
    err = capsys.readouterr().err
    assert "batchnorm" in err and "batch_per_step" in err
