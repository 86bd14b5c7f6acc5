"""``metaloop data build`` and ``metaloop verify``, and an image_folder run end to end."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metaloop.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_benchmarks import write_cifar_archive
from test_folder import make_tree


def config(path: Path, task: str, data: str) -> Path:
    path.write_text(
        f"""
[task]
{task}
ways = 3
shots = 1
queries = 2
[data]
{data}
[model]
name = "conv4"
hidden = 8
[algorithm]
name = "protonet"
[train]
iterations = 2
meta_batch_size = 2
validate_every = 2
validation_tasks = 2
checkpoint_every = 2
threads = 1
progress = false
"""
    )
    return path


def test_image_folder_run_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    top = make_tree(tmp_path / "src", classes=9, per_class=4)
    cfg = config(
        tmp_path / "cfg.toml",
        'family = "image_folder"',
        f'root = "{top}"\nimage_size = 16\nclass_split = [3, 3, 3]\n'
        f'cache_dir = "{tmp_path / "cache"}"',
    )
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["same"], result["different"]) == (18, 48)  # 12 test images, all pairs
    assert 0 <= result["auc"] <= 1 and 0 <= result["eer"] <= 1
    bad = config(
        tmp_path / "bad.toml",
        'family = "image_folder"',
        f'root = "{top}"\nimage_size = 16\nclass_split = [3, 3, 3]\naugment = "strong"',
    )
    assert main(["train", str(bad), "--run-dir", str(tmp_path / "bad")]) == 2
    assert "augment must be one of none, rgb" in capsys.readouterr().err


def test_data_build_then_train_on_double_mnist(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mnist = tmp_path / "mnist_png.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(mnist, "w") as z:
        for part in ("train", "test"):
            for d in range(10):
                for i in range(3):
                    buf = io.BytesIO()
                    Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(buf, "PNG")
                    z.writestr(f"{part}/{d}/{part}{d}{i}.png", buf.getvalue())
    out = tmp_path / "double"
    args = ["data", "build", "double-mnist", "--mnist", str(mnist), "--out", str(out)]
    assert main([*args, "--images-per-class", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "meta.json").is_file()
    cfg = config(
        tmp_path / "cfg.toml",
        'family = "multi_mnist"',
        f'root = "{out}"\nimage_size = 16\nimages_per_class = 3',
    )
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0


def test_benchmark_presets_validate_and_one_runs_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from metaloop.cli.build import validate
    from metaloop.cli.config import load_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    presets = [
        configs / f"{b}-{m}-{s}shot.toml"
        for b in ("mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub")
        for m in ("protonet", "maml")
        for s in (1, 5)
    ]
    for preset in presets:
        validate(load_config(preset, ['data.root="/data"']))
    write_cifar_archive(tmp_path / "cifar-100-python.tar.gz")
    sets = [
        f'data.root="{tmp_path}"',
        "train.iterations=1",
        "train.validate_every=1",
        "train.validation_tasks=1",
        "train.checkpoint_every=1",
        "task.queries=1",  # the generated archive holds 3 images per class
        "eval.queries=1",  # (the [eval] test episodes are checked at train time)
        "model.hidden=8",
    ]
    args = [
        "train",
        str(configs / "cifar-fs-protonet-1shot.toml"),
        "--run-dir",
        str(tmp_path / "r"),
    ]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
