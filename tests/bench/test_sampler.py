"""The data-path workload (``metaloop.bench.sampler``): result structure, the table, the
entry points and the missing-archives error.  Synthetic data, a handful of batches; one
DataLoader worker at most."""

from __future__ import annotations

import json

import pytest
import torch

from metaloop.bench import format_table, run_sampler_benchmark
from metaloop.bench.__main__ import main as bench_main
from metaloop.bench.sampler import CASES, find_data_root, format_sampler_table
from metaloop.cli.main import main as cli_main
from metaloop.data import ClassDataset, OmniglotError

torch.set_num_threads(1)


def synthetic(classes: int = 64, per_class: int = 6) -> ClassDataset:
    """Enough classes for 60-way episodes and ``shots + queries`` = 6 images per class."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return ClassDataset(images, labels, name="synthetic")


@pytest.fixture(scope="module")
def result() -> dict:
    return run_sampler_benchmark(
        dataset=synthetic(), workers=(0, 1), batches=2, warmup=0, threads=1
    )


def test_result_structure_and_positive_rates(result):
    json.dumps(result)  # serialisable
    for key in (
        "workload",
        "dataset",
        "torch",
        "threads",
        "load_avg_start",
        "batches",
        "workers",
        "cases",
        "total_seconds",
    ):
        assert key in result
    assert result["workload"] == "sampler" and result["workers"] == [0, 1]
    assert result["dataset"]["classes"] == 64 and result["threads"] == 1
    assert [c["case"] for c in result["cases"]] == [c.label for c in CASES]
    for case, spec in zip(result["cases"], CASES):
        assert (case["ways"], case["shots"], case["queries"]) == (spec.ways, 1, 5)
        assert case["meta_batch"] == spec.meta_batch
        assert case["images_per_batch"] == spec.meta_batch * spec.ways * 6
        ref = case["reference"]
        assert ref["train_tasks_per_s"] == pytest.approx(
            ref["train_iterations_per_s"] * spec.meta_batch
        )
        names = [e["loader"] for e in case["loaders"]]
        assert names == ["family.sample", "loader w=0", "loader w=1"]
        for e in case["loaders"]:
            assert e["episodes_per_s"] > 0 and e["batches_per_s"] > 0
            assert e["episodes_per_s"] == pytest.approx(e["batches_per_s"] * spec.meta_batch)
            assert e["headroom"] == pytest.approx(e["episodes_per_s"] / ref["train_tasks_per_s"])
            assert e["main_cpu_seconds"] >= 0 and e["first_batch_seconds"] > 0
            if e["workers"]:
                assert e["worker_cpu_seconds"] is not None and e["worker_cpu_seconds"] >= 0
            else:
                assert e["worker_cpu_seconds"] is None
        assert isinstance(case["can_starve"], bool)
        assert case["best_episodes_per_s"] == max(e["episodes_per_s"] for e in case["loaders"])


def test_table(result):
    table = format_table(result)  # dispatches on the workload
    assert table == format_sampler_table(result)
    assert "maml-5w1s" in table and "protonet-60w1s" in table
    assert "loader w=1" in table and "episodes/s" in table and "starve" in table


def test_options_are_checked():
    ds = synthetic()
    with pytest.raises(ValueError, match="no case"):
        run_sampler_benchmark(dataset=ds, cases=["imagenet"])
    with pytest.raises(ValueError, match="batches"):
        run_sampler_benchmark(dataset=ds, batches=0)
    with pytest.raises(ValueError, match="worker"):
        run_sampler_benchmark(dataset=ds, workers=[-1])
    one = run_sampler_benchmark(
        dataset=ds,
        workers=(),
        batches=1,
        warmup=0,
        cases=["protonet-60w1s"],
        train_rates={"protonet-60w1s": 1e9},
    )
    (case,) = one["cases"]
    assert case["reference"]["source"] == "given" and case["can_starve"]


def test_missing_archives_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALOOP_DATA", str(tmp_path))
    with pytest.raises(OmniglotError, match="--data-root"):
        find_data_root()
    with pytest.raises(OmniglotError, match=r"images_background\.zip"):
        run_sampler_benchmark(tmp_path / "nowhere")
    assert bench_main(["sampler", "--data-root", str(tmp_path), "--quiet"]) == 2
    assert "METALOOP_DATA" in capsys.readouterr().err
    assert cli_main(["bench", "sampler", "--data-root", str(tmp_path)]) == 2
    assert "archives" in capsys.readouterr().err


def test_real_omniglot_when_present(capsys):
    try:
        find_data_root()
    except OmniglotError:
        pytest.skip("real Omniglot archives not found (set METALOOP_DATA)")
    argv = ["sampler", "--repeats", "1", "--warmup", "0", "--workers", "0"]
    assert bench_main([*argv, "--cases", "protonet-60w1s", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"]["classes"] == 4400  # Vinyals train split with rotations
    assert all(e["episodes_per_s"] > 0 for e in out["cases"][0]["loaders"])
