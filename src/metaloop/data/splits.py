"""Class splits for meta-learning: meta-train, meta-validation and test share no class.

Two Omniglot protocols:

``vinyals_split`` (Vinyals et al. 2016; MAML, Prototypical Networks):
    all 1,623 characters pooled, shuffled with ``seed``; the first ``train`` (1,200) of
    the shuffled order are meta-training characters, the remaining 423 are the test
    characters.  Meta-validation is carved out of the 1,200: the *last* ``val`` (100) of
    them, as in MAML's reference code, so meta-training proper has 1,100 characters.
    Rotations by 0/90/180/270 degrees become new classes *after* splitting, so the four
    rotations of one character always land in the same part.  By default every part is
    rotated (``rotate=("train", "val", "test")``): MAML and ProtoNet both evaluate on the
    rotated test characters too (ProtoNet: 1,692 test classes).  Pass
    ``rotate=("train",)`` to test on upright characters only.  The shuffled order is
    ours (seeded), not Vinyals' list, which was never published with the data.

``lake_split`` (Lake et al. 2015):
    background alphabets (30) for meta-training, evaluation alphabets (20) for test.
    Meta-validation takes ``val_alphabets`` *whole* alphabets out of the background set
    (never out of evaluation).  The "minimal" conditions train on ``small1`` or
    ``small2`` (5 background alphabets each); their validation alphabets come from the
    other background alphabets.  No rotations by default.

Every split is checked disjoint by base character (``character_id``) before returning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from metaloop.data.dataset import ClassDataset
from metaloop.data.transforms import augment_rotations
from metaloop.tasks.base import TaskError
from metaloop.validate import is_int

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class ClassSplit:
    """Disjoint meta-train / meta-validation / test class sets (``val`` may be ``None``)."""

    train: ClassDataset
    val: ClassDataset | None
    test: ClassDataset
    protocol: str
    description: str = ""

    def __getitem__(self, part: str) -> ClassDataset:
        if part not in PARTS:
            raise KeyError(f"unknown split part {part!r}; choose one of {', '.join(PARTS)}")
        dataset = getattr(self, part)
        if dataset is None:
            raise TaskError(
                f"this {self.protocol} split has no {part!r} part (it was built with 0)"
            )
        return dataset

    def parts(self) -> Iterator[tuple[str, ClassDataset]]:
        for name in PARTS:
            dataset = getattr(self, name)
            if dataset is not None:
                yield name, dataset

    def summary(self) -> str:
        sizes = ", ".join(f"{n}: {d.num_classes} classes" for n, d in self.parts())
        return f"{self.protocol} split ({sizes})"


def check_disjoint(split: ClassSplit, key: str = "character_id") -> None:
    """Raise ``TaskError`` if two parts of ``split`` share a base class (field ``key``)."""
    seen: dict[object, str] = {}
    for name, dataset in split.parts():
        for value in set(dataset.values(key)):
            if value is None:
                raise TaskError(f"class metadata field {key!r} is missing in part {name!r}")
            if value in seen and seen[value] != name:
                raise TaskError(f"{key} {value!r} appears in both {seen[value]!r} and {name!r}")
            seen[value] = name


def _rotate_parts(rotate: Iterable[str] | bool) -> set[str]:
    if rotate is True:
        return set(PARTS)
    if rotate is False:
        return set()
    parts = set(rotate)
    unknown = parts - set(PARTS)
    if unknown:
        raise TaskError(f"rotate names unknown parts {sorted(unknown)}; choose from {PARTS}")
    return parts


def _check_unrotated(dataset: ClassDataset) -> None:
    if bool(dataset.rotations.any()) or any("base_class" in i for i in dataset.class_info):
        raise TaskError(
            f"{dataset.name!r} already holds rotated classes; split the base characters "
            "first and rotate afterwards (rotate=...), so rotations of one character stay "
            "in one part"
        )


def vinyals_split(
    omniglot: ClassDataset,
    seed: int = 0,
    train: int = 1200,
    val: int = 100,
    rotate: Sequence[str] | bool = PARTS,
    key: str = "character_id",
) -> ClassSplit:
    """The pooled-character split (see the module docstring).

    Args:
        omniglot: all base characters (background + evaluation: 1,623 classes).
        seed: seeds the shuffle of the characters.
        train: characters for meta-training *including* the validation ones (1,200).
        val: meta-validation characters, the last ``val`` of the ``train`` (0: none).
        rotate: parts whose classes get the 90/180/270-degree rotations as new classes,
            ``True`` for all, ``False`` for none.
    """
    _check_unrotated(omniglot)
    n = omniglot.num_classes
    if not 0 < train < n:
        raise TaskError(f"train must lie in 1..{n - 1} characters (of {n}), got {train}")
    if not 0 <= val < train:
        raise TaskError(f"val must lie in 0..{train - 1} (carved out of train={train}), got {val}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    ids = {
        "train": sorted(order[: train - val]),
        "val": sorted(order[train - val : train]),
        "test": sorted(order[train:]),
    }
    rotated = _rotate_parts(rotate)
    parts: dict[str, ClassDataset | None] = {}
    for part, classes in ids.items():
        if not classes:
            parts[part] = None
            continue
        ds = omniglot.subset(classes, name=f"{omniglot.name}:{part}")
        parts[part] = augment_rotations(ds) if part in rotated else ds
    split = ClassSplit(
        parts["train"],  # type: ignore[arg-type]
        parts["val"],
        parts["test"],  # type: ignore[arg-type]
        "vinyals",
        f"{n} characters shuffled (seed {seed}): {train - val} train, {val} val (last {val} "
        f"of the {train}), {n - train} test; rotations as new classes in: "
        f"{', '.join(sorted(rotated)) or 'none'}",
    )
    check_disjoint(split, key)
    return split


def lake_split(
    background: ClassDataset | None,
    evaluation: ClassDataset,
    *,
    minimal: ClassDataset | None = None,
    val_alphabets: int = 5,
    seed: int = 0,
    rotate: Sequence[str] | bool = (),
    key: str = "character_id",
    alphabet_key: str = "alphabet",
) -> ClassSplit:
    """Lake's background/evaluation split (see the module docstring).

    Args:
        background: the 30 background alphabets (may be ``None`` only for a minimal
            condition with ``val_alphabets=0``).
        evaluation: the 20 evaluation alphabets: the test part.
        minimal: ``small1`` or ``small2``: train on it instead of the background set.
        val_alphabets: whole background alphabets held out for meta-validation, drawn
            with ``seed`` (from the alphabets not in ``minimal`` when given); 0 for none.
        rotate: parts to augment with rotations (default none).
    """
    if not is_int(val_alphabets) or val_alphabets < 0:
        raise TaskError(f"val_alphabets must be an integer >= 0, got {val_alphabets!r}")
    if background is None and (minimal is None or val_alphabets > 0):
        raise TaskError(
            "lake_split needs the background alphabets (for training, or for the validation "
            "alphabets of a minimal condition); pass background= or val_alphabets=0"
        )
    for ds in (background, evaluation, minimal):
        if ds is not None:
            _check_unrotated(ds)
    test_alphabets = set(evaluation.values(alphabet_key))
    train_source = minimal if minimal is not None else background
    assert train_source is not None
    overlap = test_alphabets & set(train_source.values(alphabet_key))
    if overlap:
        raise TaskError(f"evaluation alphabets overlap the training alphabets: {sorted(overlap)}")
    val_ds: ClassDataset | None = None
    if val_alphabets:
        assert background is not None
        groups = background.groups(alphabet_key)
        taken = set(minimal.values(alphabet_key)) if minimal is not None else set()
        candidates = [a for a in groups if a not in taken]
        keep_for_train = 0 if minimal is not None else 1
        if val_alphabets > len(candidates) - keep_for_train:
            raise TaskError(
                f"val_alphabets = {val_alphabets} leaves no training alphabet: only "
                f"{len(candidates)} background alphabets are available; choose "
                f"val_alphabets <= {len(candidates) - keep_for_train}"
            )
        g = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(candidates), generator=g).tolist()
        chosen = sorted(candidates[i] for i in order[:val_alphabets])
        val_classes = [c for a in chosen for c in groups[a]]
        val_ds = background.subset(sorted(val_classes), name=f"{background.name}:val")
        if minimal is None:
            train_classes = [c for a in groups if a not in chosen for c in groups[a]]
            train_ds = background.subset(sorted(train_classes), name=f"{background.name}:train")
        else:
            train_ds = minimal
    else:
        chosen = []
        train_ds = train_source
    rotated = _rotate_parts(rotate)
    parts = {"train": train_ds, "val": val_ds, "test": evaluation}
    for part in rotated:
        if parts[part] is not None:
            parts[part] = augment_rotations(parts[part])  # type: ignore[arg-type]
    condition = "minimal" if minimal is not None else "background"
    split = ClassSplit(
        parts["train"],  # type: ignore[arg-type]
        parts["val"],
        parts["test"],  # type: ignore[arg-type]
        f"lake-{condition}",
        f"train: {train_ds.name} ({len(set(train_ds.values(alphabet_key)))} alphabets); "
        f"val: {', '.join(chosen) or 'none'} (whole background alphabets, seed {seed}); "
        f"test: {evaluation.name} ({len(test_alphabets)} alphabets); rotations in: "
        f"{', '.join(sorted(rotated)) or 'none'}",
    )
    check_disjoint(split, key)
    return split
