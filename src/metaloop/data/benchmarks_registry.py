"""What each benchmark of ``metaloop.data.benchmarks`` is: its name, its classes per part,
its image size, the published class splits of CIFAR-FS and FC100, and the per-channel
normalization its papers' pipelines use (``ChannelNormalize``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metaloop.data.folder import ImageDataError
from metaloop.data.splits import ClassSplit

BENCHMARKS = ("mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub")

#: per-channel (mean, std) of the papers' pipelines
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
}
BENCHMARK_NORMALIZATION = {
    "mini-imagenet": "imagenet",
    "tiered-imagenet": "imagenet",
    "cub": "imagenet",
    "cifar-fs": "cifar100",
    "fc100": "cifar100",
}
IMAGE_SIZE = {"mini-imagenet": 84, "tiered-imagenet": 84, "cub": 84, "cifar-fs": 32, "fc100": 32}
SPLIT_CLASSES = {
    "mini-imagenet": (64, 16, 20),
    "tiered-imagenet": (351, 97, 160),
    "cifar-fs": (64, 16, 20),
    "fc100": (60, 20, 20),
    "cub": (100, 50, 50),
}

# CIFAR-FS (Bertinetto et al. 2019): the validation and test classes of the authors'
# split; the other 64 CIFAR-100 classes are the training classes.
CIFAR_FS_VAL = (
    "beaver otter flatfish shark lamp television beetle butterfly sea camel cattle crab "
    "crocodile maple_tree motorcycle tractor"
).split()
CIFAR_FS_TEST = (
    "whale poppy rose sweet_pepper telephone bed table wardrobe leopard plain chimpanzee fox "
    "snail worm baby man woman bicycle pickup_truck rocket"
).split()
# FC100 (Oreshkin et al. 2018): superclasses per part (12/4/4)
FC100_SUPERCLASSES = {
    "train": (
        "fish flowers food_containers fruit_and_vegetables household_electrical_devices "
        "household_furniture large_man-made_outdoor_things large_natural_outdoor_scenes "
        "reptiles trees vehicles_1 vehicles_2"
    ).split(),
    "val": (
        "large_carnivores large_omnivores_and_herbivores non-insect_invertebrates small_mammals"
    ).split(),
    "test": "aquatic_mammals insects medium_mammals people".split(),
}


class ChannelNormalize:
    """``(x - mean_c) / std_c`` per channel: an image transform (``EpisodicFamily``'s
    ``transform``, after any augmentation)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ImageDataError(f"need one positive std per mean, got mean={mean}, std={std}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.shape[1] != len(self.mean):
            raise ImageDataError(
                f"ChannelNormalize has {len(self.mean)} channels, images have {images.shape[1]}"
            )
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=images.dtype).view(shape)
        std = torch.tensor(self.std, dtype=images.dtype).view(shape)
        return (images - mean) / std

    def __repr__(self) -> str:
        return f"ChannelNormalize(mean={self.mean}, std={self.std})"


def benchmark_normalize(name: str) -> ChannelNormalize:
    mean, std = NORMALIZATION[BENCHMARK_NORMALIZATION[_check_name(name)]]
    return ChannelNormalize(mean, std)


def _check_name(name: str) -> str:
    if name not in BENCHMARKS:
        raise ImageDataError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return name


def _check_counts(split: ClassSplit, name: str, strict: bool) -> ClassSplit:
    if strict:
        val = 0 if split.val is None else split.val.num_classes
        found = (split.train.num_classes, val, split.test.num_classes)
        if found != SPLIT_CLASSES[name]:
            raise ImageDataError(
                f"{name}: found {found[0]}/{found[1]}/{found[2]} train/val/test classes, the "
                f"benchmark has {'/'.join(map(str, SPLIT_CLASSES[name]))}; the files are "
                "incomplete or not the benchmark's (strict=False loads them as they are)"
            )
    return split
