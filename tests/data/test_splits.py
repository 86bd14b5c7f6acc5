"""Class splits: disjoint parts, Vinyals (pooled characters) and Lake (alphabets)."""

from __future__ import annotations

import pytest

from metaloop.data import (
    ClassDataset,
    ClassSplit,
    augment_rotations,
    check_disjoint,
    lake_split,
    vinyals_split,
)
from metaloop.tasks import TaskError


def characters(split: ClassSplit, part: str) -> set[str]:
    return set(split[part].values("character_id"))


def alphabets(ds: ClassDataset) -> set[str]:
    return set(ds.values("alphabet"))


def test_vinyals_split_on_synthetic(tagged) -> None:
    ds = tagged([2] * 30)
    split = vinyals_split(ds, seed=1, train=20, val=5)
    assert split.train.num_classes == 15 * 4
    assert split.val.num_classes == 5 * 4
    assert split.test.num_classes == 10 * 4
    all_chars = [characters(split, p) for p in ("train", "val", "test")]
    assert sum(map(len, all_chars)) == 30 and len(set.union(*all_chars)) == 30
    again = vinyals_split(ds, seed=1, train=20, val=5)
    assert characters(again, "test") == characters(split, "test")
    other = vinyals_split(ds, seed=2, train=20, val=5)
    assert characters(other, "test") != characters(split, "test")
    upright_test = vinyals_split(ds, seed=1, train=20, val=5, rotate=("train",))
    assert upright_test.test.num_classes == 10 and upright_test.train.num_classes == 60
    none = vinyals_split(ds, train=20, val=0, rotate=False)
    assert none.val is None and none.train.num_classes == 20
    with pytest.raises(TaskError, match="no 'val' part"):
        none["val"]


def test_vinyals_split_errors(tagged) -> None:
    ds = tagged([2] * 10)
    with pytest.raises(TaskError, match=r"train must lie in 1\.\.9"):
        vinyals_split(ds, train=10)
    with pytest.raises(TaskError, match=r"val must lie in 0\.\.4"):
        vinyals_split(ds, train=5, val=5)
    with pytest.raises(TaskError, match="rotate afterwards"):
        vinyals_split(augment_rotations(ds), train=5, val=1)
    with pytest.raises(TaskError, match="unknown parts"):
        vinyals_split(ds, train=5, val=1, rotate=("training",))


def test_check_disjoint_detects_overlap(tagged) -> None:
    ds = tagged([2] * 4)
    leaky = ClassSplit(ds.subset([0, 1]), ds.subset([1]), ds.subset([2, 3]), "leaky")
    with pytest.raises(TaskError, match="appears in both 'train' and 'val'"):
        check_disjoint(leaky)


def test_vinyals_split_on_omniglot(background, evaluation) -> None:
    pooled = ClassDataset.concat([background, evaluation])
    split = vinyals_split(pooled, seed=0)
    assert pooled.num_classes == 1623
    assert (split.train.num_classes, split.val.num_classes, split.test.num_classes) == (
        4400,
        400,
        1692,
    )
    train, val, test = (characters(split, p) for p in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (1100, 100, 423)
    assert not (train & val or train & test or val & test)
    # pooled: the test characters come from both background and evaluation alphabets
    subsets = set(split.test.values("subset"))
    assert subsets == {"background", "evaluation"}
    assert sorted(set(split.train.values("rotation"))) == [0, 90, 180, 270]


def test_lake_split_on_omniglot(background, evaluation) -> None:
    split = lake_split(background, evaluation, val_alphabets=5, seed=0)
    assert len(alphabets(split.train)) == 25 and len(alphabets(split.val)) == 5
    assert alphabets(split.test) == alphabets(evaluation) and len(alphabets(split.test)) == 20
    assert not alphabets(split.train) & alphabets(split.val)
    assert not (alphabets(split.train) | alphabets(split.val)) & alphabets(split.test)
    # whole alphabets: validation takes every character of its alphabets
    for a in alphabets(split.val):
        assert len(split.val.select("alphabet", [a])) == len(background.select("alphabet", [a]))
    assert split.train.num_classes + split.val.num_classes == 964
    assert split.test.num_classes == 659
    other = lake_split(background, evaluation, val_alphabets=5, seed=1)
    assert alphabets(other.val) != alphabets(split.val)


def test_lake_minimal_condition(background, evaluation) -> None:
    small = background.subset(background.select("alphabet", ["Greek", "Latin"]), name="small")
    split = lake_split(background, evaluation, minimal=small, val_alphabets=3, seed=0)
    assert alphabets(split.train) == {"Greek", "Latin"}
    assert len(alphabets(split.val)) == 3
    assert not alphabets(split.val) & {"Greek", "Latin"}
    only = lake_split(None, evaluation, minimal=small, val_alphabets=0)
    assert only.val is None and only.train is small
    with pytest.raises(TaskError, match="needs the background alphabets"):
        lake_split(None, evaluation, minimal=small, val_alphabets=2)
    with pytest.raises(TaskError, match=r"val_alphabets <= 29"):
        lake_split(background, evaluation, val_alphabets=30)
    with pytest.raises(TaskError, match="overlap"):
        lake_split(background, background)
