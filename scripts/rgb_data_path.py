"""Data path for 84x84 RGB episodes from a class-folder tree of JPEGs (docs/images.md).

    python scripts/rgb_data_path.py --out /work/runs/h5-rgb/result.json

1. writes ``classes x per_class`` random-texture JPEGs (84x84 RGB) as class folders;
2. times the one-time decode into the cache (``load_image_classes``, 1 process), then a
   cached load;
3. times one ProtoNet meta-training iteration (Conv4-64, 3 channels, 84 px, 5-way 5-shot
   15-query, meta-batch 1) with and without the RGB augmentation, in CPU seconds;
4. runs ``metaloop.bench.sampler.run_sampler_case`` (the code of ``metaloop bench
   sampler``) on that dataset: ``family.sample`` and DataLoader with 0 and 2 workers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metaloop.algorithms.protonet import ProtoNet
from metaloop.bench.report import load_average
from metaloop.bench.sampler import SamplerCase, run_sampler_case
from metaloop.data.episodes import EpisodicFamily
from metaloop.data.folder import load_image_classes
from metaloop.data.rgb_transforms import rgb_train_transform
from metaloop.models.conv import Conv4


def write_tree(root: Path, classes: int, per_class: int, size: int = 84) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, 3)
        for i in range(per_class):
            noise = rng.normal(0, 40, (size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            (d / f"{i:04d}.jpg").write_bytes(buf.getvalue())


def iteration_seconds(family: EpisodicFamily, steps: int) -> float:
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(in_channels=3, ways=None, image_size=84))
    opt = torch.optim.Adam(learner.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for i in range(steps + 1):
        if i == 1:  # the first step warms allocators up
            start = time.process_time()
        loss, _ = learner.meta_loss(family.sample(1, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.process_time() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/metaloop-rgb-tree")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batches", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    write_tree(work / "tree", args.classes, args.per_class)
    cache = work / "cache"
    start = time.process_time()
    ds = load_image_classes(work / "tree", image_size=84, channels=3, cache_dir=cache, workers=1)
    decode = time.process_time() - start
    start = time.process_time()
    load_image_classes(work / "tree", image_size=84, channels=3, cache_dir=cache)
    cached = time.process_time() - start
    plain = EpisodicFamily(ds, 5, 5, 15)
    augmented = EpisodicFamily(ds, 5, 5, 15, rgb_train_transform())
    step = iteration_seconds(plain, args.steps)
    step_aug = iteration_seconds(augmented, args.steps)
    case = SamplerCase("rgb84-5w5s15q", 5, 5, 15, 1, "generated JPEG tree", 1 / step, "measured")
    sampler = run_sampler_case(case, ds, [0, 2], args.batches, 3)
    for entry in sampler["loaders"]:
        entry.pop("last_batch", None)
    result = {
        "images": len(ds),
        "classes": ds.num_classes,
        "decode_cpu_seconds": decode,
        "decode_ms_per_image": 1000 * decode / len(ds),
        "cached_load_cpu_seconds": cached,
        "protonet_conv4_iteration_cpu_seconds": step,
        "protonet_conv4_iteration_cpu_seconds_rgb_augment": step_aug,
        "sampler": sampler,
        "load_average": load_average(),
        "command": "python scripts/rgb_data_path.py " + " ".join(os.sys.argv[1:]),  # type: ignore[attr-defined]
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "sampler"}, indent=1, default=str))
    for e in sampler["loaders"]:
        print(
            e["loader"],
            f"{e['episodes_per_s']:.1f} episodes/s",
            f"main cpu {e['main_cpu_seconds']:.4f}s",
        )


if __name__ == "__main__":
    main()
