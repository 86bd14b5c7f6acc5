"""Labelled image datasets, episodic samplers, class splits, Omniglot and Lake's benchmark.

Quick start::

    import metaloop as ml
    train = ml.data.omniglot_family("data/omniglot", split="vinyals", part="train",
                                    ways=5, shots=1, queries=15)
    batch = train.sample(32, torch.Generator().manual_seed(0))   # a TaskBatch
    test = ml.data.omniglot_family("data/omniglot", part="test", ways=5, shots=1, queries=15)

``omniglot_split`` builds all parts of a split from one decode; ``omniglot_family`` is
the one-call builder for one part.  This package imports nothing from metaloop but
``metaloop.tasks``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from metaloop.data.dataset import ClassDataset, to_float_images
from metaloop.data.episodes import (
    EpisodeCollate,
    EpisodePlan,
    EpisodeSampler,
    EpisodicFamily,
    episodes_to_batch,
    within_alphabet_family,
)
from metaloop.data.families import OMNIGLOT_DATA_KEYS  # registers [task] family omniglot
from metaloop.data.folder import (
    ImageDataError,
    folder_family,
    folder_split,
    load_image_classes,
    read_split_file,
)

# registers [task] families image_folder, multi_mnist and benchmark
from metaloop.data.image_families import IMAGE_FOLDER_DATA_KEYS
from metaloop.data.lake import (
    LakeRun,
    LakeScore,
    load_runs,
    make_fake_runs,
    runs_to_batch,
    score_runs,
)
from metaloop.data.omniglot import (
    ARCHIVES,
    OmniglotError,
    default_cache_dir,
    download_archive,
    load_omniglot,
    load_omniglot_subset,
    preprocess_png,
    resolve_root,
)
from metaloop.data.splits import ClassSplit, check_disjoint, lake_split, vinyals_split
from metaloop.data.text import CLINC_DATA_KEYS  # registers [task] family clinc150
from metaloop.data.transforms import (
    Compose,
    RandomAffine,
    RandomShift,
    augment_rotations,
    permute_labels,
)

SPLITS = ("vinyals", "lake", "small1", "small2")


def omniglot_split(
    root: str | os.PathLike[str] | None = None,
    split: str = "vinyals",
    *,
    image_size: int | None = 28,
    rotations: bool | Sequence[str] | None = None,
    seed: int = 0,
    val_characters: int = 100,
    val_alphabets: int = 5,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    **load_kwargs: Any,
) -> ClassSplit:
    """Decode Omniglot (cached) and split it into train / val / test class sets.

    Args:
        root: directory with the official archives (default ``$METALOOP_DATA/omniglot``).
        split: ``"vinyals"`` (pooled 1,623 characters: 1,100 train + ``val_characters``
            val = the 1,200, and 423 test), ``"lake"`` (30 background alphabets minus
            ``val_alphabets`` whole alphabets for val; 20 evaluation alphabets for test),
            ``"small1"`` / ``"small2"`` (Lake's minimal conditions: train on 5 alphabets,
            val alphabets from the other background alphabets).
        rotations: parts that get the 90/180/270-degree rotations as new classes:
            ``None`` = the protocol's convention (vinyals: all parts; lake and small: none),
            ``True`` / ``False`` = all / none, or a list such as ``["train"]``.
        seed: seeds the class shuffle (vinyals) or the choice of val alphabets (lake).
        load_kwargs: passed to ``load_omniglot_subset`` (``workers``, ``strict``, ...).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown Omniglot split {split!r}; choose one of {', '.join(SPLITS)}")
    kw = dict(cache_dir=cache_dir, download=download, **load_kwargs)
    if split == "vinyals":
        pooled = load_omniglot(root, ("background", "evaluation"), image_size, **kw)
        rotate = True if rotations is None else rotations
        return vinyals_split(pooled, seed=seed, val=val_characters, rotate=rotate)
    rotate = False if rotations is None else rotations
    background = (
        load_omniglot_subset(root, "background", image_size, **kw)
        if split == "lake" or val_alphabets > 0
        else None
    )
    evaluation = load_omniglot_subset(root, "evaluation", image_size, **kw)
    minimal = None if split == "lake" else load_omniglot_subset(root, split, image_size, **kw)
    return lake_split(
        background,
        evaluation,
        minimal=minimal,
        val_alphabets=val_alphabets,
        seed=seed,
        rotate=rotate,
    )


def omniglot_family(
    root: str | os.PathLike[str] | None = None,
    split: str = "vinyals",
    part: str = "train",
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    *,
    image_size: int | None = 28,
    rotations: bool | Sequence[str] | None = None,
    within_alphabet: bool = False,
    transform: Any = None,
    normalize: tuple[float, float] | None = None,
    **split_kwargs: Any,
) -> EpisodicFamily:
    """An ``EpisodicFamily`` over one part (``"train"``, ``"val"``, ``"test"``) of an
    Omniglot split (see ``omniglot_split`` for ``split``, ``rotations`` and the rest).

    ``within_alphabet=True`` draws all classes of an episode from one alphabet (Lake's
    within-alphabet protocol).  Sizes are validated here, before any training.
    To build several parts from one decode, call ``omniglot_split`` once and wrap its
    parts in ``EpisodicFamily`` yourself.
    """
    if part not in ("train", "val", "test"):
        raise ValueError(f"unknown split part {part!r}; choose one of train, val, test")
    split_obj = omniglot_split(
        root, split, image_size=image_size, rotations=rotations, **split_kwargs
    )
    return EpisodicFamily(
        split_obj[part],
        ways,
        shots,
        queries,
        transform,
        class_groups="alphabet" if within_alphabet else None,
        normalize=normalize,
    )


__all__ = [
    "ARCHIVES",
    "CLINC_DATA_KEYS",
    "IMAGE_FOLDER_DATA_KEYS",
    "OMNIGLOT_DATA_KEYS",
    "SPLITS",
    "ClassDataset",
    "ClassSplit",
    "Compose",
    "EpisodeCollate",
    "EpisodePlan",
    "EpisodeSampler",
    "EpisodicFamily",
    "ImageDataError",
    "LakeRun",
    "LakeScore",
    "OmniglotError",
    "RandomAffine",
    "RandomShift",
    "augment_rotations",
    "check_disjoint",
    "default_cache_dir",
    "download_archive",
    "episodes_to_batch",
    "folder_family",
    "folder_split",
    "lake_split",
    "load_image_classes",
    "load_omniglot",
    "load_omniglot_subset",
    "load_runs",
    "make_fake_runs",
    "omniglot_family",
    "omniglot_split",
    "permute_labels",
    "preprocess_png",
    "read_split_file",
    "resolve_root",
    "runs_to_batch",
    "score_runs",
    "to_float_images",
    "vinyals_split",
    "within_alphabet_family",
]
