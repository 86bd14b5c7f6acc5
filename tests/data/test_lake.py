"""Lake's 20-run one-shot benchmark: fixture generator, loader, scorer, within-alphabet."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from metaloop.data import (
    OmniglotError,
    load_runs,
    make_fake_runs,
    runs_to_batch,
    score_runs,
    within_alphabet_family,
)
from metaloop.tasks import validate_batch


@pytest.fixture(scope="module")
def runs_zip(omniglot_root: Path, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("lake") / "all_runs.zip"
    return make_fake_runs(dest, omniglot_root, runs=20, ways=20, seed=0)


@pytest.fixture(scope="module")
def runs(runs_zip: Path):
    return load_runs(runs_zip)


def test_layout_of_generated_runs(runs_zip: Path) -> None:
    with zipfile.ZipFile(runs_zip) as z:
        names = set(z.namelist())
        lines = z.read("run07/class_labels.txt").decode().splitlines()
    assert {
        "run01/training/class01.png",
        "run20/test/item20.png",
        "run20/class_labels.txt",
    } <= names
    assert len(lines) == 20
    assert lines[0].startswith("run07/test/item01.png run07/training/class")


def test_runs_load_with_omniglot_preprocessing(runs, evaluation) -> None:
    assert len(runs) == 20
    # same pixels as the cached evaluation images: the preprocessing is shared
    lookup = {
        bytes(evaluation.storage[i].numpy()): int(evaluation.labels[i])
        for i in range(len(evaluation))
    }
    for run in runs[:4]:
        assert (
            run.support_images.shape == (20, 1, 28, 28) and run.support_images.dtype == torch.uint8
        )
        assert sorted(run.query_labels.tolist()) == list(range(20))
        support_cls = [lookup[bytes(im.numpy())] for im in run.support_images]
        query_cls = [lookup[bytes(im.numpy())] for im in run.query_images]
        assert len({evaluation.info(c)["alphabet"] for c in support_cls}) == 1  # within-alphabet
        for item, label in enumerate(run.query_labels.tolist()):
            assert query_cls[item] == support_cls[label]  # true label = same character
            assert not torch.equal(run.query_images[item], run.support_images[label])


def test_to_task_and_batch(runs) -> None:
    task = runs[0].to_task()
    assert task.ways == 20 and task.support_y.tolist() == list(range(20))
    assert (
        task.support_x.dtype == torch.float32
        and 0 <= task.support_x.min() <= task.support_x.max() <= 1
    )
    batch = runs_to_batch(runs)
    validate_batch(batch)
    assert batch.support_x.shape == (20, 20, 1, 28, 28)
    normed = runs[0].to_task(normalize=(0.5, 0.5))
    assert torch.allclose(normed.query_x, (task.query_x - 0.5) / 0.5)


def test_scores(runs) -> None:
    perfect = score_runs(lambda task: task.query_y, runs)
    assert perfect.mean_error == 0.0 and perfect.errors == (0.0,) * 20
    constant = score_runs(lambda task: torch.zeros_like(task.query_y), runs)
    assert constant.mean_error == pytest.approx(95.0)  # one class in twenty is right
    assert constant.mean_accuracy == pytest.approx(5.0)
    logits = score_runs(lambda task: torch.nn.functional.one_hot(task.query_y, 20).float(), runs)
    assert logits.mean_error == 0.0

    def nearest_pixel(task):
        distances = torch.cdist(task.query_x.flatten(1), task.support_x.flatten(1))
        return distances.argmin(dim=1)

    knn = score_runs(nearest_pixel, runs)
    assert 0.0 < knn.mean_error < 95.0  # better than chance, far from perfect
    with pytest.raises(OmniglotError, match=r"shape \(3,\).*labels \[20\]"):
        score_runs(lambda task: torch.zeros(3), runs[:1])


def test_directory_layout_and_faults(omniglot_root: Path, tmp_path: Path) -> None:
    folder = make_fake_runs(tmp_path / "all_runs", omniglot_root, runs=2, ways=5, seed=1)
    runs = load_runs(folder, strict=False)
    assert [r.name for r in runs] == ["run01", "run02"] and runs[0].ways == 5
    with pytest.raises(OmniglotError, match="20 runs of 20 classes"):
        load_runs(folder)
    labels = folder / "run02" / "class_labels.txt"
    original = labels.read_text()
    labels.write_text(original.replace("training/class03", "training/class09"))
    with pytest.raises(
        OmniglotError, match=r"run02/class_labels.txt line \d: class09.png is not among the 5"
    ):
        load_runs(folder, strict=False)
    labels.write_text("run02/test/item01.png\n")
    with pytest.raises(
        OmniglotError,
        match=r"line 1: .*expected 'run02/test/itemXX.png run02/training/classYY.png'",
    ):
        load_runs(folder, strict=False)
    labels.write_text(original)
    (folder / "run02" / "training" / "class02.png").unlink()
    with pytest.raises(OmniglotError, match=r"run02/training: expected class01.png .. classNN.png"):
        load_runs(folder, strict=False)
    with pytest.raises(OmniglotError, match=r"no runNN/class_labels\.txt"):
        load_runs(tmp_path / "all_runs" / "run01" / "training")
    with pytest.raises(OmniglotError, match="Lake runs not found"):
        load_runs(tmp_path / "missing.zip")


def test_within_alphabet_family_on_evaluation(evaluation) -> None:
    family = within_alphabet_family(evaluation)
    assert (family.ways, family.shots, family.queries) == (20, 1, 1)
    assert family.plan.excluded_groups == []  # every evaluation alphabet has >= 20 characters
    batch = family.sample(8, torch.Generator().manual_seed(0))
    validate_batch(batch)
    assert batch.support_x.shape == (8, 20, 1, 28, 28) and batch.query_x.shape == (8, 20, 1, 28, 28)
    for row in batch.info["classes"].tolist():
        assert len({evaluation.info(c)["alphabet"] for c in row}) == 1


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from metaloop.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _tiny_protonet_run(
    capsys,
    tmp_path: Path,
    omniglot_root: Path,
    cache_dir,
    split: str,
    seed: int = 0,
    algorithm: str = "",
) -> Path:
    config = tmp_path / f"{split}.toml"
    config.write_text(
        f"""
seed = {seed}
[task]
family = "omniglot"
ways = 5
shots = 1
queries = 1
[data]
split = "{split}"
root = "{omniglot_root}"
cache_dir = "{cache_dir}"
[model]
name = "conv4"
hidden = 8
[algorithm]
name = "protonet"
{algorithm}
[train]
iterations = 2
meta_batch_size = 1
validate_every = 2
validation_tasks = 2
progress = false
"""
    )
    run_dir = tmp_path / f"run-{split}-{seed}{'-' if algorithm else ''}{len(algorithm)}"
    code, _, err = _cli(capsys, "train", str(config), "--run-dir", str(run_dir))
    assert code == 0, err
    return run_dir


def test_cli_lake_protocols_end_to_end(tmp_path, omniglot_root, cache_dir, runs_zip, capsys):
    """``eval --protocol within-alphabet`` and ``lake-runs`` on a background-only run; both
    refuse a Vinyals-split run, whose training characters cover most evaluation alphabets."""
    import json

    lake_run = _tiny_protonet_run(capsys, tmp_path, omniglot_root, cache_dir, "lake")

    def within_alphabet(*extra: str) -> dict:
        code, out, err = _cli(
            capsys,
            "eval",
            str(lake_run),
            "--protocol",
            "within-alphabet",
            "--episodes",
            "4",
            *extra,
            "--json",
        )
        assert code == 0, err
        return json.loads(out)

    report = within_alphabet()
    assert report["protocol"] == "within-alphabet" and report["episode"]["ways"] == 20
    assert report["part"] == "test"
    # the same protocol on the meta-training alphabets (the generalisation gap's other end)
    on_training = within_alphabet("--part", "train")
    assert on_training["part"] == "train" and on_training["episode"]["ways"] == 20
    assert on_training["steps"] != report["steps"]  # other characters, other episodes
    code, out, err = _cli(capsys, "lake-runs", str(lake_run), "--runs", str(runs_zip), "--json")
    assert code == 0, err
    score = json.loads(out)
    assert score["runs"] == 20 and 0.0 <= score["mean_error"] <= 100.0  # percent
    # balanced (transductive) assignment on both; the temperature alone is refused
    balanced = within_alphabet("--balanced", "--balance-temperature", "0.5")
    assert balanced["balanced"] == {"temperature": 0.5} and report["balanced"] is None
    code, out, err = _cli(
        capsys, "lake-runs", str(lake_run), "--runs", str(runs_zip), "--balanced", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["balanced"] == {"temperature": 1.0}
    code, _, err = _cli(capsys, "eval", str(lake_run), "--balance-temperature", "0.5")
    assert code == 2 and "--balance-temperature needs --balanced" in err
    code, _, err = _cli(capsys, "eval", str(lake_run), "--balanced", "--balance-temperature", "-1")
    assert code == 2 and "temperature must be a positive finite number, got -1.0" in err

    vinyals_run = _tiny_protonet_run(capsys, tmp_path, omniglot_root, cache_dir, "vinyals")
    for argv in (
        ["eval", str(vinyals_run), "--protocol", "within-alphabet"],
        ["lake-runs", str(vinyals_run), "--runs", str(runs_zip)],
    ):
        code, _, err = _cli(capsys, *argv)
        assert code == 2
        assert "trained on the 'vinyals' split" in err and 'data.split = "lake"' in err


def test_cli_ensembles_several_runs(tmp_path, omniglot_root, cache_dir, runs_zip, capsys):
    """``eval RUN RUN ...`` and ``lake-runs RUN RUN ...`` score the members' ensemble; a run
    twice scores as the run alone; members must take the same inputs and, for Lake's
    protocols, be trained on background alphabets only."""
    import json
    import shutil

    first = _tiny_protonet_run(capsys, tmp_path, omniglot_root, cache_dir, "lake", seed=0)
    second = _tiny_protonet_run(capsys, tmp_path, omniglot_root, cache_dir, "lake", seed=1)
    within = ["--protocol", "within-alphabet", "--episodes", "4", "--json"]

    def evaluate(*runs: Path) -> dict:
        code, out, err = _cli(capsys, "eval", *map(str, runs), *within)
        assert code == 0, err
        return json.loads(out)

    alone, twice, both = evaluate(first), evaluate(first, first), evaluate(first, second)
    assert alone["ensemble"] is None
    assert twice["steps"]["0"]["accuracy"]["mean"] == pytest.approx(
        alone["steps"]["0"]["accuracy"]["mean"]
    )
    assert [m["run_dir"] for m in both["ensemble"]] == [str(first), str(second)]
    assert both["ensemble"][1]["algorithm"] == "protonet" and both["tta_shift"] == 0
    assert evaluate(first, second)["steps"] == both["steps"]  # same episodes, same numbers
    code, out, err = _cli(
        capsys, "lake-runs", str(first), str(second), "--runs", str(runs_zip), "--json"
    )
    assert code == 0, err
    score = json.loads(out)
    assert score["runs"] == 20 and len(score["ensemble"]) == 2

    resized = tmp_path / "resized"
    shutil.copytree(second, resized)
    config = resized / "config.toml"
    config.write_text(config.read_text().replace("image_size = 28", "image_size = 32"))
    code, _, err = _cli(capsys, "eval", str(first), str(resized), *within)
    assert code == 2
    assert f"{resized} has data.image_size = 32, the first run 28" in err
    vinyals = _tiny_protonet_run(capsys, tmp_path, omniglot_root, cache_dir, "vinyals")
    code, _, err = _cli(capsys, "eval", str(first), str(vinyals), *within)
    assert code == 2 and f"({vinyals})" in err and "trained on the 'vinyals' split" in err


def test_cli_saved_predictions_combine_to_the_ensemble(tmp_path, omniglot_root, cache_dir, capsys):
    """``eval --save-predictions`` per run, then ``combine``: the ensemble's (and the
    balanced ensemble's) numbers without running the models again."""
    import json

    first = _tiny_protonet_run(capsys, tmp_path, omniglot_root, cache_dir, "lake", seed=0)
    second = _tiny_protonet_run(capsys, tmp_path, omniglot_root, cache_dir, "lake", seed=1)
    within = ["--protocol", "within-alphabet", "--episodes", "6", "--json"]

    def cli_json(*argv: str) -> dict:
        code, out, err = _cli(capsys, *argv)
        assert code == 0, err
        return json.loads(out)

    saved = [tmp_path / "preds" / "a.pt", tmp_path / "preds" / "b.pt"]
    for run, path in zip((first, second), saved):
        alone = cli_json("eval", str(run), *within)
        report = cli_json("eval", str(run), *within, "--save-predictions", str(path))
        # saving changes nothing (the loss up to float rounding: log-softmax, not CE)
        assert report["steps"]["0"]["accuracy"] == alone["steps"]["0"]["accuracy"]
        assert report["steps"]["0"]["loss"]["mean"] == pytest.approx(
            alone["steps"]["0"]["loss"]["mean"], rel=1e-6
        )
    combined = cli_json("combine", *map(str, saved), "--json")
    ensemble = cli_json("eval", str(first), str(second), *within)
    for key in ("accuracy", "loss"):
        assert combined["steps"]["0"][key]["mean"] == pytest.approx(
            ensemble["steps"]["0"][key]["mean"], rel=1e-5
        )
    assert [m["runs"] for m in combined["members"]] == [[str(first)], [str(second)]]
    balanced = cli_json("combine", *map(str, saved), "--balanced", "--json")
    balanced_ensemble = cli_json("eval", str(first), str(second), *within, "--balanced")
    assert balanced["balanced"] == {"temperature": 1.0}
    assert balanced["steps"]["0"]["accuracy"]["mean"] == pytest.approx(
        balanced_ensemble["steps"]["0"]["accuracy"]["mean"]
    )

    before = saved[0].read_bytes()
    code, _, err = _cli(capsys, "eval", str(first), *within, "--save-predictions", str(saved[0]))
    assert code == 2 and "already exists; predictions are never overwritten" in err
    assert saved[0].read_bytes() == before
    argv = ["eval", str(first), *within, "--balanced", "--save-predictions", "x.pt"]
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and "balance when combining" in err
    code, _, err = _cli(capsys, "combine", str(tmp_path / "nothing.pt"))
    assert code == 2 and "no predictions file" in err
    code, _, err = _cli(capsys, "combine", str(first / "config.toml"))
    assert code == 2 and "not a predictions file" in err


def test_cli_global_classification_head_spans_the_training_classes(
    tmp_path, omniglot_root, cache_dir, capsys
):
    """``algorithm.global_loss_weight`` trains a head over every training class (the CLI
    reads their number from the training split) that the checkpoint keeps and evaluation,
    which never uses it, loads back."""
    import json

    from metaloop.cli.build import build_family
    from metaloop.cli.config import load_config
    from metaloop.train import load_checkpoint

    run_dir = _tiny_protonet_run(
        capsys, tmp_path, omniglot_root, cache_dir, "lake", algorithm="global_loss_weight = 0.5"
    )
    state = load_checkpoint(run_dir / "latest.pt")["learner"]
    cfg = load_config(run_dir / "config.toml")
    classes = build_family(cfg, "train").num_classes
    assert state["global_head.weight"].shape == (classes, 8) and classes > 500
    code, out, err = _cli(
        capsys, "eval", str(run_dir), "--protocol", "within-alphabet", "--episodes", "2", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["episode"]["ways"] == 20
