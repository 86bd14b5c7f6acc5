"""Multi-domain episodes (Meta-Dataset style) on four small grey domains (docs/images.md).

    python scripts/multidomain_figures.py --out /work/runs/h5-md/result.json

Domains, all 28x28 grey, classes split train/test (disjoint, seeded):
Omniglot (``images_background_small1``: 136 characters, 96/40), Double MNIST (the split-safe
build, downsized; its own 64-train / 20-test classes), MNIST as class folders (the 10,000
MNIST test images; digits 0-4 train, 5-9 test) and ORL faces (20/20 identities).

ProtoNet (Conv4-32) is trained on the mixture and on each domain alone; the fine-tuning
baseline is pretrained on the mixture.  Episodes use the paper's procedure with smaller
bounds to fit the CPU budget (ways 5 to 10, support at most 100, at most 20 shots and 5
queries per class); every test figure is 600 episodes per domain, 95% CI.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from metaloop.algorithms.finetune import FineTuneBaseline
from metaloop.algorithms.protonet import ProtoNet
from metaloop.data.dataset import ClassDataset
from metaloop.data.folder import folder_split, load_image_classes
from metaloop.data.multi_mnist import multi_mnist_split, resize_dataset
from metaloop.data.multidomain import EpisodeSizes, MultiDomainSampler, mean_rank
from metaloop.data.omniglot import load_omniglot_subset
from metaloop.evaluation.evaluate import evaluate
from metaloop.models.conv import Conv4
from metaloop.train.trainer import Trainer

SIZES = EpisodeSizes(
    min_ways=5, max_ways=10, max_query_per_class=5, max_support=100, max_support_per_class=20
)


def split_classes(ds: ClassDataset, train: int, seed: int = 0) -> tuple[ClassDataset, ClassDataset]:
    order = torch.randperm(ds.num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    return ds.subset(sorted(order[:train])), ds.subset(sorted(order[train:]))


def domains(
    data: Path, double_root: str, cache: str
) -> dict[str, tuple[ClassDataset, ClassDataset]]:
    omni = load_omniglot_subset(data / "omniglot", "small1", 28, cache_dir=cache)
    mnist = load_image_classes(
        data / "mnist" / "mnist_png.zip", subdir="test", image_size=28, channels=1, cache_dir=cache
    )
    orl = folder_split(
        data / "orl_faces" / "orl_faces.zip",
        proportions=(20, 0, 20),
        channels=1,
        image_size=28,
        cache_dir=cache,
    )
    double = multi_mnist_split(double_root)
    return {
        "omniglot": split_classes(omni, 96),
        "double-mnist": (
            resize_dataset(double["train"], 28),
            resize_dataset(double["test"], 28),
        ),
        "mnist": (mnist.subset([0, 1, 2, 3, 4]), mnist.subset([5, 6, 7, 8, 9])),
        "orl": (orl["train"], orl["test"]),
    }


def train(learner: Any, family: MultiDomainSampler, iterations: int) -> float:
    trainer = Trainer(learner, torch.optim.Adam(learner.parameters(), 1e-3), 1, progress=False)
    start = time.process_time()
    trainer.fit(family, iterations, validate_every=10**9, log_every=10**9, checkpoint_every=10**9)
    return time.process_time() - start


def test(learner: Any, tests: dict[str, ClassDataset], episodes: int) -> dict[str, Any]:
    learner.eval()
    out = {}
    for name, ds in tests.items():
        result = evaluate(learner, MultiDomainSampler({name: ds}, SIZES), episodes, batch_size=1)
        acc = result[max(result.metrics)]["accuracy"]
        out[name] = {"accuracy": acc.mean, "ci95": acc.ci95}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=os.environ.get("METALOOP_DATA", "../shared/data"))
    p.add_argument("--double", required=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument(
        "--only",
        default="",
        help="run only ProtoNet trained on this one domain (parallel runs of the comparison)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    parts = domains(Path(args.data), args.double, args.cache_dir)
    trains = {n: tr for n, (tr, _) in parts.items()}
    tests = {n: te for n, (_, te) in parts.items()}
    mixture = MultiDomainSampler(trains, SIZES)
    runs: dict[str, Any] = {}
    if args.only:
        torch.manual_seed(0)
        learner = ProtoNet(Conv4(1, None, hidden=32))
        cpu = train(
            learner, MultiDomainSampler({args.only: trains[args.only]}, SIZES), args.iterations
        )
        row = {
            "cpu_seconds": cpu,
            **test(learner, {args.only: tests[args.only]}, args.episodes)[args.only],
        }
        print(args.only, json.dumps(row), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"domain": args.only, "protonet alone": row}))
        return

    torch.manual_seed(0)
    proto = ProtoNet(Conv4(1, None, hidden=32))
    cpu = train(proto, mixture, args.iterations)
    runs["protonet (mixture)"] = {"cpu_seconds": cpu, "test": test(proto, tests, args.episodes)}
    print(json.dumps(runs), flush=True)

    torch.manual_seed(0)
    enc = Conv4(1, None, hidden=32)
    finetune = FineTuneBaseline(
        enc, num_classes=mixture.num_classes, embedding_dim=enc.embedding_dim, steps=50
    )
    cpu = train(finetune, mixture, args.iterations)
    runs["finetune (mixture)"] = {"cpu_seconds": cpu, "test": test(finetune, tests, args.episodes)}
    print(json.dumps(runs), flush=True)

    alone: dict[str, Any] = {}
    for name, ds in trains.items():
        torch.manual_seed(0)
        learner = ProtoNet(Conv4(1, None, hidden=32))
        cpu = train(learner, MultiDomainSampler({name: ds}, SIZES), args.iterations)
        alone[name] = {
            "cpu_seconds": cpu,
            **test(learner, {name: tests[name]}, args.episodes)[name],
        }
        print(name, json.dumps(alone[name]), flush=True)
    runs["protonet (each domain alone)"] = {"test": alone}
    table = {m: {d: v["accuracy"] for d, v in r["test"].items()} for m, r in runs.items()}
    result = {
        "sizes": SIZES.__dict__,
        "iterations": args.iterations,
        "runs": runs,
        "mean_rank": mean_rank(table),
        "command": "python scripts/multidomain_figures.py " + " ".join(os.sys.argv[1:]),  # type: ignore[attr-defined]
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["mean_rank"]))


if __name__ == "__main__":
    main()
