"""Image-data commands.

    metaloop data build double-mnist [--mnist mnist_png.zip] [--out DIR] [--seed 0]
                                     [--images-per-class 1000] [--image-size S] [--overwrite]
    metaloop verify RUN [--part test] [--metric euclidean] [--checkpoint best] [--json]

``data build`` writes Double / Triple MNIST (split-safe variant,
``metaloop.data.multi_mnist``) once; ``[task] family = "multi_mnist"`` reads it.
``verify`` scores every pair of images of a part of the run's split (same class or not)
with the learner's embedding (``MetaLearner.embed``: a metric learner's encoder, a
gradient-based learner's features before its head; a learner without one is refused in one
line) and prints ROC AUC and equal error rate (``metaloop.evaluation.verification``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from metaloop.cli.args import positive_int
from metaloop.cli.config import ConfigError


def add_parsers(sub: Any) -> None:
    from metaloop.data.multi_mnist import VARIANTS

    d = sub.add_parser("data", help="build derived datasets (Double / Triple MNIST)")
    dsub = d.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="write Double or Triple MNIST (split-safe variant) once")
    b.add_argument("variant", choices=sorted(VARIANTS))
    b.add_argument("--mnist", default=None, help="mnist_png.zip (default $METALOOP_DATA/mnist/)")
    b.add_argument("--out", default=None, help="target folder (default under the cache dir)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--images-per-class", type=positive_int, default=1000)
    b.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="store every image downsized to this side (area averaging; default: the canvas)",
    )
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=run_build)

    v = sub.add_parser("verify", help="pair verification (ROC AUC, EER) of a run's embedding")
    v.add_argument("run_dir")
    v.add_argument("--part", default="test", choices=("train", "val", "test"))
    v.add_argument("--metric", default="euclidean", choices=("euclidean", "cosine"))
    v.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=run_verify)


def run_build(args: argparse.Namespace) -> int:
    from metaloop.data.multi_mnist import build_multi_mnist

    path = build_multi_mnist(
        args.variant,
        args.out,
        mnist=args.mnist,
        seed=args.seed,
        images_per_class=args.images_per_class,
        image_size=args.image_size,
        overwrite=args.overwrite,
    )
    print(path)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from metaloop.cli.build import build_family
    from metaloop.cli.runs import load_run, runtime
    from metaloop.data.dataset import to_float_images
    from metaloop.evaluation.verification import verify

    cfg, learner, _ = load_run(args.run_dir, args.checkpoint)
    runtime(cfg)
    family = build_family(cfg, args.part, evaluation=True)
    dataset = getattr(family, "dataset", None)
    if dataset is None:
        raise ConfigError(f"verify needs an image family; {cfg['task']['family']!r} has no dataset")
    images = to_float_images(dataset.gather(torch.arange(len(dataset))))
    if family.transform is not None:  # evaluation transforms: normalisation only
        images = family.transform(images, None)
    learner.eval()
    result = verify(learner.embed, images, dataset.labels, metric=args.metric)
    if args.json:
        print(json.dumps({"part": args.part, **result.to_dict()}))
    else:
        print(f"{args.part}: {result}")
    return 0
