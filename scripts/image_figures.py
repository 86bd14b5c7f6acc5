"""Figures of docs/images.md: ORL verification / identification, Double and Triple MNIST.

Every run is small (one thread, Conv4 on 28-32 px grey images, a few hundred
iterations) to fit a 30 core-minute budget; the settings are printed with the figures.

    python scripts/image_figures.py orl --out /work/runs/h5-orl/result.json
    python scripts/image_figures.py double --root DOUBLE_MNIST_DIR --out ...
    python scripts/image_figures.py triple --root TRIPLE_MNIST_DIR --out ...

Evaluation: 600 test episodes (95% CI, ``metaloop.evaluate``), fixed seeds; no model
selection (fixed schedules, no validation).
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
from metaloop.algorithms.maml import MAML
from metaloop.algorithms.protonet import ProtoNet
from metaloop.algorithms.siamese import SiameseNet
from metaloop.data.episodes import EpisodicFamily
from metaloop.data.folder import folder_split
from metaloop.data.multi_mnist import multi_mnist_split
from metaloop.evaluation.evaluate import evaluate
from metaloop.evaluation.verification import verify
from metaloop.models.conv import Conv4
from metaloop.train.trainer import Trainer

HIDDEN = 32  # Conv4 channels (64 in the papers): a quarter of the cost on this machine


def conv4(size: int, ways: int | None) -> Conv4:
    return Conv4(in_channels=1, ways=ways, image_size=size, hidden=HIDDEN)


def learner_for(name: str, size: int, ways: int, num_classes: int) -> Any:
    if name == "protonet":
        return ProtoNet(conv4(size, None))
    if name == "siamese-contrastive":
        return SiameseNet(conv4(size, None), loss="contrastive", margin=1.0)
    if name == "siamese-triplet":
        return SiameseNet(conv4(size, None), loss="triplet", margin=1.0)
    if name == "maml":
        return MAML(conv4(size, ways), inner_lr=0.4, inner_steps=1, loss="cross_entropy")
    if name == "finetune":
        enc = conv4(size, None)
        return FineTuneBaseline(enc, num_classes=num_classes, embedding_dim=enc.embedding_dim)
    raise ValueError(name)


def train(learner: Any, family: EpisodicFamily, iterations: int, meta_batch: int, lr: float):
    trainer = Trainer(
        learner,
        torch.optim.Adam(learner.parameters(), lr),
        meta_batch_size=meta_batch,
        progress=False,
    )
    start = time.process_time()  # CPU seconds: the machine is shared, wall time says little
    trainer.fit(family, iterations, validate_every=10**9, log_every=10**9, checkpoint_every=10**9)
    return time.process_time() - start


EPISODES = 600


def identification(learner: Any, family: EpisodicFamily, steps: int | None) -> dict[str, Any]:
    result = evaluate(learner, family, episodes=EPISODES, steps=steps, seed=12345)
    key = max(result.metrics) if steps is None else steps
    acc = result[key]["accuracy"]
    return {"accuracy": acc.mean, "ci95": acc.ci95, "steps": key}


def orl(args: argparse.Namespace) -> dict[str, Any]:
    size = args.image_size
    split = folder_split(
        args.root,
        proportions=(20, 5, 15),
        seed=0,
        channels=1,
        image_size=size,
        cache_dir=args.cache_dir,
        protocol="orl-20/5/15",
    )
    train_family = EpisodicFamily(split["train"], 5, 1, 5)
    test = split["test"]
    out: dict[str, Any] = {
        "split": split.description,
        "image_size": size,
        "hidden": HIDDEN,
        "meta_batch": args.meta_batch,
        "runs": {},
    }
    for name in args.learners:
        row: dict[str, Any] = {}
        # MAML's head has ``ways`` outputs: one model per way count (trained on episodes of
        # that many identities); the embedding learners serve every way count
        for ways in (5, 15) if name == "maml" else (5,):
            torch.manual_seed(0)
            learner = learner_for(name, size, ways, split["train"].num_classes)
            iterations = args.iterations if name != "maml" else args.maml_iterations
            family = train_family if ways == 5 else train_family.with_shape(ways=ways)
            seconds = train(learner, family, iterations, args.meta_batch, 1e-3)
            learner.eval()
            row[f"train {ways}-way"] = {"iterations": iterations, "cpu_seconds": round(seconds, 1)}
            steps = 3 if name == "maml" else None
            for test_ways in (ways,) if name == "maml" else (5, 15):
                row[f"{test_ways}-way 1-shot"] = identification(
                    learner, EpisodicFamily(test, test_ways, 1, 5), steps
                )
            if ways == 5:
                first = learner
        learner = first
        encoder = learner.model.embed if name == "maml" else learner.encoder
        images = test.gather(torch.arange(len(test))).float() / 255
        with torch.no_grad():
            row["verification"] = verify(encoder, images, test.labels).to_dict()
        out["runs"][name] = row
        print(name, json.dumps(row), flush=True)
    return out


def multi(args: argparse.Namespace) -> dict[str, Any]:
    size = args.image_size
    split = multi_mnist_split(args.root, image_size=size)
    out: dict[str, Any] = {
        "split": split.description,
        "image_size": size,
        "hidden": HIDDEN,
        "meta_batch": args.meta_batch,
        "runs": {},
    }
    for shots in args.shots:
        for name in args.learners:
            torch.manual_seed(0)
            ways = 5
            learner = learner_for(name, size, ways, split["train"].num_classes)
            iterations = args.iterations if name != "maml" else args.maml_iterations
            family = EpisodicFamily(split["train"], ways, shots, 15 if name != "maml" else 5)
            seconds = train(learner, family, iterations, args.meta_batch, 1e-3)
            learner.eval()
            steps = 3 if name == "maml" else None
            row = {
                "iterations": iterations,
                "train_cpu_seconds": round(seconds, 1),
                "test": identification(
                    learner, EpisodicFamily(split["test"], ways, shots, 15), steps
                ),
            }
            out["runs"][f"{name} 5-way {shots}-shot"] = row
            print(name, shots, json.dumps(row), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("what", choices=("orl", "double", "triple"))
    p.add_argument("--root", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--maml-iterations", type=int, default=300)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--learners", nargs="+", default=None)
    p.add_argument("--shots", nargs="+", type=int, default=[1])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--hidden", type=int, default=32)
    args = p.parse_args()
    global EPISODES, HIDDEN
    EPISODES, HIDDEN = args.episodes, args.hidden
    torch.set_num_threads(1)
    if args.what == "orl":
        args.root = args.root or os.path.join(
            os.environ.get("METALOOP_DATA", "../shared/data"), "orl_faces", "orl_faces.zip"
        )
        args.image_size = args.image_size or 32
        args.learners = args.learners or [
            "protonet",
            "siamese-contrastive",
            "siamese-triplet",
            "maml",
        ]
        result = orl(args)
    else:
        args.image_size = args.image_size or 28
        args.learners = args.learners or ["protonet"]
        result = multi(args)
    result["command"] = "python scripts/image_figures.py " + " ".join(
        a
        for a in os.sys.argv[1:]  # type: ignore[attr-defined]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
