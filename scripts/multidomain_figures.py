"""Multi-domain episodes (Meta-Dataset style) on four small grey domains (docs/images.md).

    python scripts/multidomain_figures.py run protonet --out OUT/protonet.json --double DIR
    python scripts/multidomain_figures.py run finetune --out OUT/finetune.json --double DIR
    python scripts/multidomain_figures.py run protomaml --out OUT/protomaml.json --double DIR
    python scripts/multidomain_figures.py run alone --domain mnist --out OUT/alone-mnist.json ...
    python scripts/multidomain_figures.py table OUT/*.json        # per-domain table, mean ranks

Domains, all 28x28 grey, classes split train/test (disjoint, seeded):
Omniglot (``images_background_small1``: 136 characters, 96/40), Double MNIST (the split-safe
build, downsized; its own 64-train / 20-test classes), MNIST as class folders (the 10,000
MNIST test images; digits 0-4 train, 5-9 test) and ORL faces (20/20 identities).

Trained on the mixture: ProtoNet, the fine-tuning baseline (pretrained on the mixture's
global labels, a new head per episode) and fo-Proto-MAML (Triantafillou et al. 2020: the
head started at the support prototypes, then first-order MAML); ProtoNet also on each
domain alone.  Every model is a Conv4-32.  Episodes use the paper's procedure with smaller
bounds to fit the CPU budget (ways 5 to 10, support at most 100, at most 20 shots and 5
queries per class); test figures are ``--episodes`` (600) episodes per domain, 95% CI, the
same episodes for every learner (seed 12345).  Every run is one process and one JSON file,
so runs can go in parallel; ``table`` ranks the methods per domain and averages the ranks
(``metaloop.data.multidomain.mean_rank``), as the paper's tables do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from metaloop.algorithms.finetune import FineTuneBaseline
from metaloop.algorithms.protomaml import ProtoMAML
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
DOMAINS = ("omniglot", "double-mnist", "mnist", "orl")
#: fo-Proto-MAML's inner loop: one step at 0.1 in training, ``--protomaml-eval-steps`` at test
PROTOMAML_INNER_LR = 0.1
LABELS = {
    "protonet": "ProtoNet, mixture",
    "finetune": "fine-tune baseline, mixture",
    "protomaml": "fo-Proto-MAML, mixture",
    "alone": "ProtoNet, that domain alone",
}


def split_classes(ds: ClassDataset, train: int, seed: int = 0) -> tuple[ClassDataset, ClassDataset]:
    order = torch.randperm(ds.num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    return ds.subset(sorted(order[:train])), ds.subset(sorted(order[train:]))


def domains(
    data: Path, double_root: str, cache: str | None
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


def build_learner(method: str, num_classes: int, protomaml_eval_steps: int) -> Any:
    """The learner of ``method``, all on a Conv4-32 (seeded by the caller)."""
    if method in ("protonet", "alone"):
        return ProtoNet(Conv4(1, None, hidden=32))
    if method == "finetune":
        enc = Conv4(1, None, hidden=32)
        return FineTuneBaseline(
            enc, num_classes=num_classes, embedding_dim=enc.embedding_dim, steps=50
        )
    if method == "protomaml":
        # the head's 5 outputs are placeholders: every task sets it from its own prototypes
        return ProtoMAML(
            Conv4(1, 5, hidden=32),
            inner_lr=PROTOMAML_INNER_LR,
            inner_steps=1,
            eval_steps=protomaml_eval_steps,
            first_order=True,
            loss="cross_entropy",
        )
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(LABELS)}")


def train(learner: Any, family: MultiDomainSampler, iterations: int) -> float:
    """Meta-train with Adam 1e-3, meta-batch 1; returns the CPU seconds it took."""
    trainer = Trainer(learner, torch.optim.Adam(learner.parameters(), 1e-3), 1, progress=False)
    start = time.process_time()
    trainer.fit(family, iterations, validate_every=10**9, log_every=10**9, checkpoint_every=10**9)
    return time.process_time() - start


def test(learner: Any, tests: dict[str, ClassDataset], episodes: int) -> dict[str, Any]:
    """Per-domain test accuracy (mean and 95% CI over ``episodes``) and its CPU seconds.

    Proto-MAML is also scored before its inner steps (0 steps: the prototype head on the
    meta-learned body, which evaluation computes anyway), reported as ``by_steps``."""
    learner.eval()
    steps = (0, learner.eval_steps) if isinstance(learner, ProtoMAML) else None
    out = {}
    for name, ds in tests.items():
        start = time.process_time()
        family = MultiDomainSampler({name: ds}, SIZES)
        result = evaluate(learner, family, episodes, steps=steps, batch_size=1)
        acc = result[max(result.metrics)]["accuracy"]
        out[name] = {
            "accuracy": acc.mean,
            "ci95": acc.ci95,
            "episodes": episodes,
            "test_cpu_seconds": time.process_time() - start,
        }
        if steps is not None:
            out[name]["by_steps"] = {
                s: {"accuracy": result[s]["accuracy"].mean, "ci95": result[s]["accuracy"].ci95}
                for s in result.metrics
            }
        print(name, json.dumps(out[name]), flush=True)
    return out


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    parts = domains(Path(args.data), args.double, args.cache_dir)
    trains = {n: tr for n, (tr, _) in parts.items()}
    tests = {n: te for n, (_, te) in parts.items()}
    if args.method == "alone":
        if args.domain not in DOMAINS:
            raise SystemExit(f"run alone needs --domain, one of {', '.join(DOMAINS)}")
        trains, tests = {args.domain: trains[args.domain]}, {args.domain: tests[args.domain]}
    family = MultiDomainSampler(trains, SIZES)
    torch.manual_seed(0)
    learner = build_learner(args.method, family.num_classes, args.protomaml_eval_steps)
    cpu = train(learner, family, args.iterations)
    print(f"trained {args.method} {args.domain}: {cpu:.1f} CPU s", flush=True)
    result = {
        "method": args.method,
        "label": LABELS[args.method],
        "domain": args.domain or None,
        "iterations": args.iterations,
        "train_cpu_seconds": cpu,
        "sizes": SIZES.__dict__,
        "eval_steps": args.protomaml_eval_steps if args.method == "protomaml" else None,
        "test": test(learner, tests, args.episodes),
        "command": "python scripts/multidomain_figures.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


def table(paths: list[str]) -> dict[str, Any]:
    """``{"accuracy": {label: {domain: {...}}}, "mean_rank": {label: rank}}`` from the runs'
    JSON files; the per-domain-alone runs are gathered into one row."""
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        r = json.loads(Path(path).read_text())
        rows.setdefault(r["label"], {}).update(r["test"])
    ranks = mean_rank({m: {d: v["accuracy"] for d, v in row.items()} for m, row in rows.items()})
    return {"accuracy": rows, "mean_rank": ranks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one method and test it on every domain it knows")
    r.add_argument("method", choices=sorted(LABELS))
    r.add_argument("--domain", default="", help="with 'alone': the one domain it trains on")
    r.add_argument("--out", required=True)
    r.add_argument("--data", default=os.environ.get("METALOOP_DATA", "../shared/data"))
    r.add_argument("--double", required=True, help="the Double MNIST build (metaloop data build)")
    r.add_argument("--cache-dir", default=None)
    r.add_argument("--iterations", type=int, default=250)
    r.add_argument("--episodes", type=int, default=600)
    r.add_argument("--protomaml-eval-steps", type=int, default=3)
    t = sub.add_parser("table", help="per-domain accuracy and mean ranks of finished runs")
    t.add_argument("results", nargs="+")
    args = p.parse_args()
    if args.command == "run":
        run(args)
    else:
        print(json.dumps(table(args.results), indent=1))


if __name__ == "__main__":
    main()
