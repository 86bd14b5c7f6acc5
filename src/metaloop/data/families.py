"""The data layer's registered task families: ``[task] family = "omniglot"``.

``omniglot`` builds ``EpisodicFamily`` episodes over one part of an Omniglot split from
the ``[task]`` keys ``ways``, ``shots``, ``queries`` and the ``[data]`` keys below.  Its
``spec`` (``omniglot_spec``) reads no file, so validating a config loads no data.  Parts
asked for within one command share one decode through ``FamilyContext.cache``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metaloop.data.episodes import EpisodicFamily
from metaloop.data.transforms import Compose, RandomAffine, RandomShift
from metaloop.tasks.registry import FamilyContext, TaskSpec, register_family
from metaloop.validate import is_int

#: the ``[data]`` keys of Omniglot runs and their defaults
OMNIGLOT_DATA_KEYS: dict[str, Any] = {
    "root": "",
    "split": "vinyals",
    "image_size": 28,
    "rotations": True,
    "cache_dir": "",
    "download": False,
    "shift": 0,
    # training images: Koch et al.'s random affine distortions (rotation, shear, scale, shift)
    "affine": False,
    "train_episodes": "any",
    # Lake's splits: whole background alphabets held out for meta-validation (0: train on
    # all 30, no validation; the last checkpoint is then the one evaluated)
    "val_alphabets": 5,
}
SIZES = ("ways", "shots", "queries")


def _data(context: FamilyContext) -> Mapping[str, Any]:
    return {**OMNIGLOT_DATA_KEYS, **context.data}


def _check(sizes: Mapping[str, Any], context: FamilyContext) -> Mapping[str, Any]:
    """The checks every Omniglot build and spec makes before reading any file."""
    for k, value in sizes.items():
        if not is_int(value) or value < 1:
            raise ValueError(f"[task] omniglot needs {k} as a positive integer, got {value!r}")
    d = _data(context)
    if d["split"] == "vinyals" and d["val_alphabets"] != OMNIGLOT_DATA_KEYS["val_alphabets"]:
        raise ValueError(
            "data.val_alphabets applies to Lake's splits (lake, small1, small2); the vinyals "
            "split holds out validation characters, not alphabets"
        )
    if context.part == "val" and not omniglot_has_validation(context):
        raise ValueError(
            "data.val_alphabets = 0 leaves no meta-validation alphabets; the trainer runs "
            "without validation"
        )
    return d


def omniglot_has_validation(context: FamilyContext) -> bool:
    """Lake's splits with ``data.val_alphabets = 0`` train on every background alphabet
    and have no meta-validation part."""
    d = _data(context)
    return not (d["split"] != "vinyals" and d["val_alphabets"] == 0)


def omniglot_spec(
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    *,
    context: FamilyContext,
) -> TaskSpec:
    """``[1, image_size, image_size]`` images, ``ways`` classes per task, read from no
    file (the class count is known once the split is loaded: ``num_classes = None``)."""
    d = _check({"ways": ways, "shots": shots, "queries": queries}, context)
    size = d["image_size"]
    return TaskSpec(input_shape=(1, size, size), y_dim=ways, classification=True, ways=ways)


def train_transform(data: Mapping[str, Any]) -> Any:
    """The training-image augmentation of ``[data]``: ``affine`` then ``shift``."""
    parts = ([RandomAffine()] if data["affine"] else []) + (
        [RandomShift(data["shift"])] if data["shift"] else []
    )
    return Compose(*parts) if len(parts) > 1 else (parts[0] if parts else None)


@register_family(
    "omniglot",
    data_keys=OMNIGLOT_DATA_KEYS,
    spec=omniglot_spec,
    protocols=("standard", "within-alphabet"),
    has_validation=omniglot_has_validation,
)
def omniglot(
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    *,
    context: FamilyContext,
) -> EpisodicFamily:
    """Episodes of ``context.part`` of the ``data.split`` Omniglot split.

    Training episodes (``context.training``) get the ``[data]`` augmentation and, on
    Lake's splits, the rotated characters as extra classes (Vinyals: rotations are new
    classes in every part, the protocol's convention); evaluation episodes see Lake's
    upright characters only.  ``within-alphabet`` (the protocol, or ``data.train_episodes``
    for training) draws every episode's classes from one alphabet.
    """
    from metaloop.data import omniglot_split  # defined in the package, after this import

    sizes = {"ways": ways, "shots": shots, "queries": queries}
    d = _check(sizes, context)
    split = d["split"]
    rotations: Any = False
    if d["rotations"]:
        # lake/small rotate the training part only; the other parts are the same upright
        # classes either way, so they share the training build's decode
        upright_train = context.part == "train" and not context.training
        rotations = None if split == "vinyals" else (False if upright_train else ["train"])
    options = dict(
        image_size=d["image_size"],
        rotations=rotations,
        cache_dir=d["cache_dir"] or None,
        download=d["download"],
        **({} if split == "vinyals" else {"val_alphabets": d["val_alphabets"]}),
    )
    key = ("omniglot", d["root"] or None, split, repr(sorted(options.items())))
    cache = context.cache if context.cache is not None else {}
    if key not in cache:
        cache[key] = omniglot_split(d["root"] or None, split, **options)
    within = context.protocol == "within-alphabet" or (
        context.training and d["train_episodes"] == "within-alphabet"
    )
    return EpisodicFamily(
        cache[key][context.part],
        ways,
        shots,
        queries,
        train_transform(d) if context.training else None,
        class_groups="alphabet" if within else None,
    )
