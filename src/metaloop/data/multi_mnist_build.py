"""Double MNIST and Triple MNIST (Sun 2019's multi-digit MNIST), a split-safe variant.

A *k-digit MNIST* image writes ``k`` MNIST digits side by side on a black canvas (Double:
``k = 2`` on 64x64, Triple: ``k = 3`` on 84x84); its class is the digit string, so
Double has 100 classes ``"00" .. "99"`` and Triple 1,000.  Classes are split
64/16/20 (Double) or 640/160/200 (Triple) train/val/test by a seeded shuffle, with
``images_per_class`` images each (1,000 in the literature).

**Variant.** The public generator pools MNIST's train and test images for every split.
Ours keeps digit images apart: test classes are written from MNIST *test* images;
train and validation classes from MNIST *train* images, which are first partitioned
per digit (seeded) into a training pool and a validation pool in proportion to their
class counts.  No MNIST image appears in two splits (tested), so a test episode never
shows a digit image seen in meta-training.  Figures on it are labelled "split-safe
variant".

Composition, for an image of digits ``d_1 .. d_k``: the canvas (side ``S``) is cut
into ``k`` vertical slots of width ``S // k``; digit ``j`` (a random MNIST image of
digit ``d_j`` from the split's pool) is pasted at a random horizontal offset inside slot
``j`` (``0 .. S // k - 28`` pixels, 0 when the slot is narrower than 28) and a random
vertical offset ``0 .. S - 28``; overlapping pixels take the maximum.  All draws come
from ``numpy.random.default_rng(seed)``: the same seed and settings write the same bytes.

``build_multi_mnist`` writes ``train.npz``, ``val.npz``, ``test.npz`` and ``meta.json``
into one directory (default ``<cache>/multi_mnist/<name>/``); each ``.npz`` holds
``images uint8 [N, 1, S, S]`` (or ``[N, 1, s, s]`` when built with ``image_size = s``:
each composed canvas downsized by area averaging, ``area_resize``, before it is stored,
which keeps the full 1,000-per-class Triple MNIST, 7 GB of 84x84 canvases, to 0.8 GB at
28x28), ``labels`` (class index within the split), ``classes``
(the digit strings), ``sources [N, k]`` (indices of the digit images in MNIST's
train or test list, in ``mnist_names``) and ``offsets [N, k, 2]`` (``y, x``), so every
image can be recomposed and audited.  ``multi_mnist_split`` reads them back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metaloop.data.folder import ImageDataError, ImageSource, decode_image
from metaloop.data.omniglot import default_cache_dir
from metaloop.data.splits import PARTS

FORMAT_VERSION = 1
DIGIT = 28


@dataclass(frozen=True)
class MultiMnistSpec:
    """Digits per image, canvas side and class counts per split of one variant."""

    digits: int
    canvas: int
    split_classes: tuple[int, int, int]


VARIANTS: dict[str, MultiMnistSpec] = {
    "double-mnist": MultiMnistSpec(2, 64, (64, 16, 20)),
    "triple-mnist": MultiMnistSpec(3, 84, (640, 160, 200)),
}


def default_mnist_zip() -> Path:
    """``$METALOOP_DATA/mnist/mnist_png.zip``."""
    env = os.environ.get("METALOOP_DATA")
    if not env:
        raise ImageDataError(
            "no MNIST archive given: pass mnist=<path to mnist_png.zip> or set METALOOP_DATA "
            "to a directory with mnist/mnist_png.zip"
        )
    return Path(env).expanduser() / "mnist" / "mnist_png.zip"


def default_location(
    variant: str,
    seed: int = 0,
    images_per_class: int = 1000,
    canvas: int | None = None,
    image_size: int | None = None,
) -> Path:
    spec = _spec(variant)
    side = canvas or spec.canvas
    stored = f"-to{image_size}px" if image_size else ""
    name = f"{variant}-s{seed}-n{images_per_class}-{side}px{stored}"
    return default_cache_dir() / "multi_mnist" / name


def _spec(variant: str) -> MultiMnistSpec:
    if variant not in VARIANTS:
        raise ImageDataError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def read_mnist(
    mnist: str | os.PathLike[str] | None = None, per_digit: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """MNIST digits from ``mnist_png.zip`` (layout ``train|test/<digit>/<index>.png``):
    ``{part: (images uint8 [N, 28, 28], digits [N], member names)}`` for ``train`` and
    ``test``, sorted by digit then name; ``per_digit`` keeps the first images of each
    digit only (small builds)."""
    path = Path(mnist).expanduser() if mnist is not None else default_mnist_zip()
    source = ImageSource(path)
    try:
        out = {}
        for part in ("train", "test"):
            names: list[str] = []
            digits: list[int] = []
            for d in range(10):
                prefix = f"{part}/{d}/"
                found = sorted(
                    (n for n in source.names() if n.startswith(prefix) and n.endswith(".png")),
                    key=lambda n: (len(n), n),
                )
                if not found:
                    raise ImageDataError(
                        f"{path}: no images under {prefix}; expected MNIST as "
                        "train/<digit>/<index>.png and test/<digit>/<index>.png"
                    )
                found = found[:per_digit] if per_digit else found
                names.extend(found)
                digits.extend([d] * len(found))
            images = np.stack(
                [decode_image(source.read(n), None, 1, f"{path}::{n}")[0] for n in names]
            )
            if images.shape[1:] != (DIGIT, DIGIT):
                raise ImageDataError(f"{path}: MNIST digits must be 28x28, got {images.shape[1:]}")
            out[part] = (images, np.asarray(digits, dtype=np.int64), names)
        return out
    finally:
        source.close()


def _partition_train(
    digits: np.ndarray, fraction_val: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation pools: each digit's images split at
    ``fraction_val`` after a shuffle."""
    train, val = [], []
    for d in range(10):
        idx = np.flatnonzero(digits == d)
        idx = idx[rng.permutation(len(idx))]
        cut = max(1, round(len(idx) * fraction_val))
        val.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def compose(digit_images: np.ndarray, offsets: np.ndarray, canvas: int) -> np.ndarray:
    """Canvases ``uint8 [N, S, S]`` from digits ``[N, k, 28, 28]`` pasted at ``offsets
    [N, k, 2]`` (top-left ``y, x``), overlaps by maximum."""
    n, k = digit_images.shape[:2]
    out = np.zeros((n, canvas, canvas), dtype=np.uint8)
    rows = np.arange(n)[:, None, None]
    r = np.arange(DIGIT)
    for j in range(k):
        ys = offsets[:, j, 0, None, None] + r[None, :, None]
        xs = offsets[:, j, 1, None, None] + r[None, None, :]
        out[rows, ys, xs] = np.maximum(out[rows, ys, xs], digit_images[:, j])
    return out


def area_resize(images: Tensor, image_size: int) -> Tensor:
    """``uint8 [N, C, H, W]`` -> ``uint8 [N, C, s, s]``: area averaging (each output pixel
    the mean of the input pixels it covers), rounded to the nearest integer."""
    small = torch.nn.functional.interpolate(
        images.float(), size=(image_size, image_size), mode="area"
    )
    return small.round().clamp(0, 255).to(torch.uint8)


def _draw_part(
    class_digits: np.ndarray,
    pool: np.ndarray,
    pool_digits: np.ndarray,
    images: np.ndarray,
    per_class: int,
    canvas: int,
    rng: np.random.Generator,
    image_size: int | None = None,
) -> dict[str, np.ndarray]:
    """``per_class`` images of each class (rows of ``class_digits [C, k]``) from ``pool``,
    stored downsized to ``image_size`` when given."""
    c, k = class_digits.shape
    n = c * per_class
    wanted = np.repeat(class_digits, per_class, axis=0)  # [N, k]
    sources = np.empty((n, k), dtype=np.int64)
    for d in range(10):
        members = pool[pool_digits[pool] == d]
        mask = wanted == d
        sources[mask] = members[rng.integers(0, len(members), int(mask.sum()))]
    slot = canvas // k
    room_x = max(slot - DIGIT, 0)
    if canvas < DIGIT:
        raise ImageDataError(f"the canvas must be at least {DIGIT}px, got {canvas}")
    offsets = np.empty((n, k, 2), dtype=np.int64)
    offsets[:, :, 0] = rng.integers(0, canvas - DIGIT + 1, (n, k))
    base = np.minimum(np.arange(k) * slot, canvas - DIGIT)
    offsets[:, :, 1] = base[None, :] + rng.integers(0, room_x + 1, (n, k))
    side = image_size or canvas
    out = np.empty((n, 1, side, side), dtype=np.uint8)
    for start in range(0, n, 20_000):
        stop = min(start + 20_000, n)
        composed = compose(images[sources[start:stop]], offsets[start:stop], canvas)
        if side != canvas:
            composed = area_resize(torch.from_numpy(composed[:, None]), side)[:, 0].numpy()
        out[start:stop, 0] = composed
    return {
        "images": out,
        "labels": np.repeat(np.arange(c), per_class),
        "sources": sources,
        "offsets": offsets,
    }


def build_multi_mnist(
    variant: str = "double-mnist",
    out: str | os.PathLike[str] | None = None,
    *,
    mnist: str | os.PathLike[str] | None = None,
    seed: int = 0,
    images_per_class: int = 1000,
    canvas: int | None = None,
    split_classes: tuple[int, int, int] | None = None,
    per_digit: int | None = None,
    image_size: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Double / Triple MNIST dataset (see the module docstring); return its folder.

    Args:
        variant: ``"double-mnist"`` or ``"triple-mnist"``.
        out: target folder (default ``default_location(variant, seed, images_per_class)``).
        mnist: ``mnist_png.zip`` (default ``$METALOOP_DATA/mnist/mnist_png.zip``).
        images_per_class: 1,000 in the literature; fewer for quick builds.
        canvas: canvas side (default 64 / 84).
        split_classes: train/val/test class counts (default 64/16/20 or 640/160/200);
            they must not exceed the ``10 ** digits`` classes.
        per_digit: read only the first ``per_digit`` MNIST images of each digit (tests).
        image_size: store every image downsized to this side (area averaging of the
            composed canvas; the draws are unchanged, so the images equal the full build's
            downsized); ``None`` (default) stores the canvases.
        overwrite: rebuild even if ``out`` already holds this build.

    The files are written to a temporary folder and renamed into place at the end, so an
    interrupted build never leaves a half-written dataset behind.
    """
    spec = _spec(variant)
    side = canvas or spec.canvas
    counts = tuple(split_classes or spec.split_classes)
    total = 10**spec.digits
    if len(counts) != 3 or any(c < 0 for c in counts) or counts[0] < 1 or counts[2] < 1:
        raise ImageDataError(f"split_classes must be 3 counts with train, test >= 1, got {counts}")
    if sum(counts) > total:
        raise ImageDataError(f"split_classes {counts} ask for more than the {total} classes")
    if images_per_class < 1:
        raise ImageDataError(f"images_per_class must be >= 1, got {images_per_class}")
    if image_size is not None and not (isinstance(image_size, int) and 1 <= image_size <= side):
        raise ImageDataError(
            f"image_size must be an integer from 1 to the canvas side {side}, got {image_size!r}"
        )
    stored = image_size if image_size != side else None
    target = (
        Path(out).expanduser()
        if out
        else default_location(variant, seed, images_per_class, side, stored)
    )
    settings = {
        "format": FORMAT_VERSION,
        "variant": variant,
        "seed": int(seed),
        "images_per_class": int(images_per_class),
        "canvas": side,
        "digits": spec.digits,
        "split_classes": list(counts),
        "per_digit": per_digit,
        "split_safe": True,
        "image_size": stored,
    }
    if (target / "meta.json").is_file() and not overwrite:
        found = json.loads((target / "meta.json").read_text())
        if {k: found.get(k) for k in settings} == settings:
            return target
        raise ImageDataError(
            f"{target} holds a different build ({found.get('variant')}, seed {found.get('seed')}, "
            f"{found.get('images_per_class')} per class); pass overwrite=True or another out"
        )
    mnist_data = read_mnist(mnist, per_digit)
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(total)[: sum(counts)]
    class_ids = {
        "train": np.sort(order[: counts[0]]),
        "val": np.sort(order[counts[0] : counts[0] + counts[1]]),
        "test": np.sort(order[counts[0] + counts[1] :]),
    }
    train_images, train_digits, train_names = mnist_data["train"]
    fraction_val = counts[1] / (counts[0] + counts[1])
    train_pool, val_pool = _partition_train(train_digits, fraction_val, rng)
    test_images, test_digits, test_names = mnist_data["test"]
    pools = {
        "train": (train_pool, train_digits, train_images, "train"),
        "val": (val_pool, train_digits, train_images, "train"),
        "test": (np.arange(len(test_digits)), test_digits, test_images, "test"),
    }
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        ids = class_ids[part]
        if len(ids) == 0:
            continue
        names = [f"{i:0{spec.digits}d}" for i in ids]
        class_digits = np.asarray([[int(ch) for ch in s] for s in names], dtype=np.int64)
        pool, pool_digits, images, mnist_part = pools[part]
        drawn = _draw_part(
            class_digits, pool, pool_digits, images, images_per_class, side, rng, stored
        )
        np.savez(
            tmp / f"{part}.npz",
            classes=np.asarray(names),
            mnist_part=np.asarray(mnist_part),
            **drawn,
        )
    (tmp / "mnist_names.json").write_text(json.dumps({"train": train_names, "test": test_names}))
    (tmp / "meta.json").write_text(json.dumps(settings, indent=1))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target
