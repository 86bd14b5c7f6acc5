"""Registered image families beyond Omniglot: ``[task] family = "image_folder"``,
``"multi_mnist"`` and ``"benchmark"``.

Each builds ``EpisodicFamily`` episodes over one part (``context.part``) of a class split
read once per command (shared through ``FamilyContext.cache``), from the ``[task]`` keys
``ways``, ``shots``, ``queries`` and the ``[data]`` keys below.  Their ``spec`` functions
read no file.

``image_folder`` ([data] keys ``IMAGE_FOLDER_DATA_KEYS``): ``root`` is a directory, zip or
tar of class folders (or the folder the split files' paths are relative to); the split
is ``train_file``/``val_file``/``test_file`` (CSV or JSON split files, relative to
``root``), else ``class_split`` (three class counts such as ``[64, 16, 20]``, or three
fractions summing to 1) shuffled with ``split_seed``.  ``channels`` 1 or 3,
``image_size`` the side, ``augment = "rgb"`` the training augmentation of
``metaloop.data.rgb_transforms``, ``normalize`` ``"none"``, ``"imagenet"`` or
``"cifar100"`` (per-channel statistics, every part).

``multi_mnist``: a Double/Triple MNIST built by ``metaloop data build`` (``root``, or the
default location of ``variant``, ``build_seed`` and ``images_per_class``), resized to
``image_size`` (28 by default; 64 / 84 are the native canvases).

``benchmark``: ``benchmark`` = ``mini-imagenet``, ``tiered-imagenet``, ``cifar-fs``,
``fc100`` or ``cub`` read from ``root`` (``metaloop.data.benchmarks``), with the same
``augment`` and ``normalize`` keys; ``download = true`` fetches a missing public archive
(CIFAR-100, CUB) and checks its checksum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metaloop.data.episodes import EpisodicFamily
from metaloop.data.transforms import Compose
from metaloop.tasks.registry import FamilyContext, TaskSpec, register_family
from metaloop.validate import is_int

_SHARED = {"root": "", "image_size": 28, "cache_dir": ""}
_PIPELINE = {"augment": "none", "normalize": "none"}
IMAGE_FOLDER_DATA_KEYS: dict[str, Any] = {
    **_SHARED,
    "channels": 3,
    "image_dir": "",
    "subdir": "",
    "train_file": "",
    "val_file": "",
    "test_file": "",
    "class_split": [],
    "split_seed": 0,
    **_PIPELINE,
}
MULTI_MNIST_DATA_KEYS: dict[str, Any] = {
    **_SHARED,
    "variant": "double-mnist",
    "build_seed": 0,
    "images_per_class": 1000,
}
BENCHMARK_DATA_KEYS: dict[str, Any] = {
    **_SHARED,
    "benchmark": "mini-imagenet",
    "download": False,
    **_PIPELINE,
}
AUGMENTS = ("none", "rgb")
NORMALIZATIONS = ("none", "imagenet", "cifar100")


def _sizes(name: str, ways: Any, shots: Any, queries: Any) -> None:
    for k, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if not is_int(value) or value < 1:
            raise ValueError(f"[task] {name} needs {k} as a positive integer, got {value!r}")


def _data(defaults: Mapping[str, Any], context: FamilyContext) -> dict[str, Any]:
    d = {**defaults, **{k: v for k, v in context.data.items() if k in defaults}}
    size = d["image_size"]
    if not is_int(size) or size < 1:
        raise ValueError(f"[data] image_size must be a positive integer, got {size!r}")
    for key, allowed in (("augment", AUGMENTS), ("normalize", NORMALIZATIONS)):
        if key in d and d[key] not in allowed:
            raise ValueError(f"[data] {key} must be one of {', '.join(allowed)}, got {d[key]!r}")
    return d


def _transform(d: Mapping[str, Any], training: bool) -> Any:
    from metaloop.data.benchmarks import NORMALIZATION, ChannelNormalize
    from metaloop.data.rgb_transforms import rgb_train_transform

    parts = []
    if training and d.get("augment") == "rgb":
        parts.append(rgb_train_transform())
    if d.get("normalize", "none") != "none":
        parts.append(ChannelNormalize(*NORMALIZATION[d["normalize"]]))
    return Compose(*parts) if len(parts) > 1 else (parts[0] if parts else None)


def _cached(context: FamilyContext, key: tuple, build: Any) -> Any:
    cache = context.cache if context.cache is not None else {}
    if key not in cache:
        cache[key] = build()
    return cache[key]


# -- image_folder ---------------------------------------------------------------------------
def _folder_spec(ways=None, shots=None, queries=None, *, context: FamilyContext) -> TaskSpec:
    _sizes("image_folder", ways, shots, queries)
    d = _data(IMAGE_FOLDER_DATA_KEYS, context)
    if d["channels"] not in (1, 3):
        raise ValueError(f"[data] channels must be 1 or 3, got {d['channels']!r}")
    files = [d[f"{p}_file"] for p in ("train", "val", "test")]
    if not d["root"]:
        raise ValueError("[data] root must name the image directory or archive of image_folder")
    if not any(files) and len(d["class_split"]) != 3:
        raise ValueError(
            "[data] image_folder needs train_file/test_file (split files) or class_split = "
            f"[train, val, test] (class counts or fractions), got class_split={d['class_split']!r}"
        )
    size = d["image_size"]
    return TaskSpec((d["channels"], size, size), ways, classification=True, ways=ways)


@register_family("image_folder", data_keys=IMAGE_FOLDER_DATA_KEYS, spec=_folder_spec)
def image_folder(
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    *,
    context: FamilyContext,
) -> EpisodicFamily:
    """Episodes over one part of a class-folder / split-file image collection."""
    from metaloop.data.folder import check_class_sizes, folder_split

    _folder_spec(ways, shots, queries, context=context)
    d = _data(IMAGE_FOLDER_DATA_KEYS, context)
    load = dict(
        image_size=d["image_size"],
        channels=d["channels"],
        image_dir=d["image_dir"],
        subdir=d["subdir"] or None,
        cache_dir=d["cache_dir"] or None,
    )
    files = {p: d[f"{p}_file"] for p in ("train", "val", "test") if d[f"{p}_file"]}
    if files:
        how: dict[str, Any] = {"split_files": files}
    else:
        split = list(d["class_split"])
        how = {"proportions": split, "seed": d["split_seed"]}
    key = ("image_folder", d["root"], repr(sorted(load.items())), repr(how))
    split = _cached(context, key, lambda: folder_split(d["root"], **how, **load))
    dataset = split[context.part]
    check_class_sizes(dataset, shots, queries)  # type: ignore[arg-type]
    return EpisodicFamily(
        dataset,
        ways,
        shots,
        queries,
        _transform(d, context.training),  # type: ignore[arg-type]
    )


# -- multi_mnist ----------------------------------------------------------------------------
def _multi_spec(ways=None, shots=None, queries=None, *, context: FamilyContext) -> TaskSpec:
    from metaloop.data.multi_mnist import VARIANTS

    _sizes("multi_mnist", ways, shots, queries)
    d = _data(MULTI_MNIST_DATA_KEYS, context)
    if d["variant"] not in VARIANTS:
        raise ValueError(
            f"[data] variant must be one of {', '.join(VARIANTS)}, got {d['variant']!r}"
        )
    size = d["image_size"]
    return TaskSpec((1, size, size), ways, classification=True, ways=ways)


@register_family("multi_mnist", data_keys=MULTI_MNIST_DATA_KEYS, spec=_multi_spec)
def multi_mnist(
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    *,
    context: FamilyContext,
) -> EpisodicFamily:
    """Episodes over one part of a built Double / Triple MNIST (split-safe variant)."""
    from metaloop.data.multi_mnist import multi_mnist_split

    _multi_spec(ways, shots, queries, context=context)
    d = _data(MULTI_MNIST_DATA_KEYS, context)
    kw = dict(
        seed=d["build_seed"], images_per_class=d["images_per_class"], image_size=d["image_size"]
    )
    key = ("multi_mnist", d["root"], d["variant"], repr(sorted(kw.items())))
    split = _cached(context, key, lambda: multi_mnist_split(d["root"] or None, d["variant"], **kw))
    return EpisodicFamily(split[context.part], ways, shots, queries)  # type: ignore[arg-type]


# -- benchmark ------------------------------------------------------------------------------
def _benchmark_spec(ways=None, shots=None, queries=None, *, context: FamilyContext) -> TaskSpec:
    from metaloop.data.benchmarks import BENCHMARKS

    _sizes("benchmark", ways, shots, queries)
    d = _data(BENCHMARK_DATA_KEYS, context)
    if d["benchmark"] not in BENCHMARKS:
        raise ValueError(
            f"[data] benchmark must be one of {', '.join(BENCHMARKS)}, got {d['benchmark']!r}"
        )
    size = d["image_size"]  # the root is checked when the data is read, not to validate
    return TaskSpec((3, size, size), ways, classification=True, ways=ways)


@register_family("benchmark", data_keys=BENCHMARK_DATA_KEYS, spec=_benchmark_spec)
def benchmark(
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    *,
    context: FamilyContext,
) -> EpisodicFamily:
    """Episodes over one part of a literature benchmark (``metaloop.data.benchmarks``)."""
    from metaloop.data.benchmarks import load_benchmark
    from metaloop.data.folder import check_class_sizes

    _benchmark_spec(ways, shots, queries, context=context)
    d = _data(BENCHMARK_DATA_KEYS, context)
    name = d["benchmark"]
    if not d["root"]:
        raise ValueError(f"[data] root must name the folder holding the {name} files")
    kw: dict[str, Any] = {}
    if name in ("mini-imagenet", "tiered-imagenet", "cub"):
        kw["image_size"] = d["image_size"]
    if name in ("mini-imagenet", "cub"):
        kw["cache_dir"] = d["cache_dir"] or None
    key = ("benchmark", name, d["root"], repr(sorted(kw.items())))
    split = _cached(
        context, key, lambda: load_benchmark(name, d["root"], download=d["download"], **kw)
    )
    dataset = split[context.part]
    if dataset.image_shape[-1] != d["image_size"]:
        from metaloop.data.multi_mnist import resize_dataset

        dataset = resize_dataset(dataset, d["image_size"])
    check_class_sizes(dataset, shots, queries)  # type: ignore[arg-type]
    return EpisodicFamily(
        dataset,
        ways,
        shots,
        queries,
        _transform(d, context.training),  # type: ignore[arg-type]
    )
