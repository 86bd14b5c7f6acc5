"""omniglot_split / omniglot_family: the one-call builders the CLI uses."""

from __future__ import annotations

import pytest
import torch

from metaloop.data import EpisodicFamily, omniglot_family, omniglot_split
from metaloop.tasks import TaskError, validate_batch


@pytest.fixture(scope="module")
def vinyals(omniglot_root, cache_dir):
    return omniglot_split(omniglot_root, "vinyals", cache_dir=cache_dir)


def test_vinyals_family_shapes(omniglot_root, cache_dir) -> None:
    family = omniglot_family(
        omniglot_root, "vinyals", "train", ways=5, shots=1, queries=15, cache_dir=cache_dir
    )
    assert isinstance(family, EpisodicFamily) and family.num_classes == 4400
    batch = family.sample(4, torch.Generator().manual_seed(0))
    validate_batch(batch)
    assert batch.support_x.shape == (4, 5, 1, 28, 28) and batch.query_x.shape == (4, 75, 1, 28, 28)
    assert batch.ways == 5 and batch.support_x.dtype == torch.float32
    evaluation = family.with_shape(ways=20, queries=15)
    assert evaluation.sample(1, torch.Generator().manual_seed(0)).query_y.shape == (1, 300)


def test_split_parts_and_rotations(vinyals, omniglot_root, cache_dir) -> None:
    assert (vinyals.train.num_classes, vinyals.val.num_classes, vinyals.test.num_classes) == (
        4400,
        400,
        1692,
    )
    upright = omniglot_split(omniglot_root, "vinyals", rotations=["train"], cache_dir=cache_dir)
    assert upright.test.num_classes == 423 and upright.train.num_classes == 4400


def test_lake_and_minimal_splits(omniglot_root, cache_dir) -> None:
    lake = omniglot_split(omniglot_root, "lake", cache_dir=cache_dir, val_alphabets=4)
    assert len(set(lake.val.values("alphabet"))) == 4 and lake.test.num_classes == 659
    small = omniglot_split(omniglot_root, "small2", cache_dir=cache_dir, val_alphabets=2)
    assert set(small.train.values("alphabet")) == {
        "Greek",
        "Japanese_(katakana)",
        "Latin",
        "Sanskrit",
        "Tagalog",
    }
    assert not set(small.val.values("alphabet")) & set(small.train.values("alphabet"))
    within = omniglot_family(
        omniglot_root,
        "lake",
        "test",
        ways=20,
        shots=1,
        queries=1,
        within_alphabet=True,
        cache_dir=cache_dir,
    )
    classes = within.sample(3, torch.Generator().manual_seed(0)).info["classes"]
    assert all(
        len({within.dataset.info(c)["alphabet"] for c in row}) == 1 for row in classes.tolist()
    )


def test_builder_errors(omniglot_root, cache_dir) -> None:
    with pytest.raises(
        ValueError, match="unknown Omniglot split 'mini'; choose one of vinyals, lake"
    ):
        omniglot_split(omniglot_root, "mini")
    with pytest.raises(ValueError, match="unknown split part 'dev'"):
        omniglot_family(omniglot_root, part="dev")
    with pytest.raises(TaskError, match=r"shots \+ queries = 10 \+ 15 = 25 exceeds .*at most 20"):
        omniglot_family(omniglot_root, shots=10, queries=15, cache_dir=cache_dir)


def _lake_within_alphabet_overrides(omniglot_root, cache_dir) -> list[str]:
    """Config overrides for 20-way 1-shot 1-query Omniglot episodes on Lake's split."""
    return [
        'task.family="omniglot"',
        "task.ways=20",
        "task.shots=1",
        "task.queries=1",
        'data.split="lake"',
        f'data.root="{omniglot_root}"',
        f'data.cache_dir="{cache_dir}"',
    ]


def test_config_training_augmentation_and_within_alphabet_episodes(omniglot_root, cache_dir):
    from metaloop.cli.build import build_family
    from metaloop.cli.config import load_config

    overrides = [
        *_lake_within_alphabet_overrides(omniglot_root, cache_dir),
        "data.shift=2",
        'data.train_episodes="within-alphabet"',
    ]
    cfg = load_config(None, overrides)
    train, val = build_family(cfg, "train"), build_family(cfg, "val")
    assert repr(train.transform) == "RandomShift(max_shift=2)" and val.transform is None
    assert train.class_groups == "alphabet" and val.class_groups is None
    classes = train.sample(4, torch.Generator().manual_seed(0)).info["classes"]
    for row in classes.tolist():
        assert len({train.dataset.info(c)["alphabet"] for c in row}) == 1


def test_config_val_alphabets_zero_trains_on_every_background_alphabet(omniglot_root, cache_dir):
    from metaloop.cli.build import build_family, has_validation, validate
    from metaloop.cli.config import ConfigError, load_config

    base = [
        'task.family="omniglot"',
        "task.ways=5",
        "task.shots=1",
        "task.queries=1",
        f'data.root="{omniglot_root}"',
        f'data.cache_dir="{cache_dir}"',
        "data.rotations=false",
    ]
    held_out = load_config(None, [*base, 'data.split="lake"'])
    every = load_config(None, [*base, 'data.split="lake"', "data.val_alphabets=0"])
    assert has_validation(held_out) and not has_validation(every)
    train_5, train_0 = build_family(held_out, "train"), build_family(every, "train")
    alphabets = set(train_0.dataset.values("alphabet"))
    assert len(alphabets) == 30 and len(set(train_5.dataset.values("alphabet"))) == 25
    assert train_0.num_classes == 964  # all background characters (no rotations)
    with pytest.raises(ConfigError, match="val_alphabets = 0 leaves no meta-validation"):
        build_family(every, "val")
    vinyals = load_config(None, [*base, 'data.split="vinyals"', "data.val_alphabets=2"])
    with pytest.raises(ConfigError, match="val_alphabets applies to Lake's splits"):
        build_family(vinyals, "train")
    with pytest.raises(ConfigError, match="val_alphabets"):
        validate(load_config(None, [*base, "data.val_alphabets=-1"]))


def test_evaluation_episodes_of_the_training_part_are_plain(omniglot_root, cache_dir):
    """``eval --part train``: the meta-training classes without augmentation, and on Lake's
    splits without the rotated copies, which exist only to enlarge training."""
    from metaloop.cli.build import build_family, build_within_alphabet
    from metaloop.cli.config import ConfigError, load_config

    cfg = load_config(
        None,
        [
            *_lake_within_alphabet_overrides(omniglot_root, cache_dir),
            "data.val_alphabets=0",
            "data.rotations=true",
            "data.shift=2",
            'data.train_episodes="within-alphabet"',
        ],
    )
    training = build_family(cfg, "train")
    assert training.num_classes == 4 * 964 and training.transform is not None
    plain = build_family(cfg, "train", evaluation=True)
    assert plain.num_classes == 964 and plain.transform is None and plain.class_groups is None
    within = build_within_alphabet(cfg, part="train")
    assert within.num_classes == 964 and within.transform is None
    assert within.class_groups == "alphabet"
    batch = within.sample(3, torch.Generator().manual_seed(0))
    assert batch.support_x.shape[1] == 20
    background = set(within.dataset.values("alphabet"))
    assert len(background) == 30
    for row in batch.info["classes"].tolist():
        assert len({within.dataset.info(c)["alphabet"] for c in row}) == 1
    test = build_within_alphabet(cfg)
    assert not background & set(test.dataset.values("alphabet"))  # disjoint alphabets
    with pytest.raises(ConfigError, match="unknown part 'dev'; choose one of train, val, test"):
        build_family(cfg, "dev")
