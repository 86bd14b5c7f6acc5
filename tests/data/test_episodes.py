"""Episodes: EpisodicFamily (TaskFamily protocol) and EpisodeSampler (DataLoader)."""

from __future__ import annotations

import pytest
import torch

from metaloop.data import EpisodeSampler, EpisodicFamily, RandomShift, within_alphabet_family
from metaloop.tasks import TaskError, TaskFamily, validate_batch


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class id, item index) encoded in tagged images scaled to [0, 1]."""
    raw = torch.round(x[..., 0, 0, :2] * 255).long()
    return raw[..., 0], raw[..., 1]


def test_batch_shapes_labels_and_contents(tagged) -> None:
    ds = tagged([6] * 8)
    family = EpisodicFamily(ds, ways=3, shots=2, queries=4)
    assert isinstance(family, TaskFamily) and family.loss == "cross_entropy"
    batch = family.sample(5, gen(0))
    validate_batch(batch)
    assert batch.ways == 3
    assert batch.support_x.shape == (5, 6, 1, 4, 4) and batch.support_x.dtype == torch.float32
    assert batch.query_x.shape == (5, 12, 1, 4, 4)
    assert batch.support_y.dtype == torch.long and batch.support_y.shape == (5, 6)
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2]
    classes = batch.info["classes"]
    s_cls, s_item = decode(batch.support_x)
    q_cls, q_item = decode(batch.query_x)
    for t in range(5):
        assert len(set(classes[t].tolist())) == 3  # distinct classes
        # every image is of the dataset class its label stands for
        assert torch.equal(s_cls[t], classes[t][batch.support_y[t]])
        assert torch.equal(q_cls[t], classes[t][batch.query_y[t]])
        for label in range(3):
            items = s_item[t][batch.support_y[t] == label].tolist()
            items += q_item[t][batch.query_y[t] == label].tolist()
            assert len(set(items)) == 6  # support and query never share an image


def test_same_generator_state_same_batch(tagged) -> None:
    family = EpisodicFamily(tagged([5] * 10), 4, 1, 3, transform=RandomShift(1))
    a, b = family.sample(3, gen(7)), family.sample(3, gen(7))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert torch.equal(a.info["classes"], b.info["classes"])
    c = family.sample(3, gen(8))
    assert not torch.equal(a.info["classes"], c.info["classes"])


def test_labels_are_a_fresh_permutation_per_episode(tagged) -> None:
    family = EpisodicFamily(tagged([2] * 5), ways=5, shots=1, queries=1)
    classes = family.sample(200, gen(0)).info["classes"]
    # all five classes always drawn, but which one is label 0 varies
    assert (classes.sort(dim=1).values == torch.arange(5)).all()
    assert len(set(classes[:, 0].tolist())) == 5
    counts = torch.bincount(classes[:, 0], minlength=5)
    assert counts.min() > 20  # roughly uniform: 40 expected each


def test_unequal_class_sizes_never_pick_padding(tagged) -> None:
    ds = tagged([2, 7, 3, 4])
    family = EpisodicFamily(ds, ways=3, shots=1, queries=2)  # class 0 (2 images) unusable
    batch = family.sample(50, gen(1))
    assert 0 not in batch.info["classes"].tolist()
    assert family.usable_classes == 3 and family.num_classes == 4  # ids span the dataset
    cls, item = decode(batch.query_x)
    assert (item < ds.class_sizes[cls]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ways": 6, "shots": 1, "queries": 1}, r"ways = 6 exceeds the 5 classes.*ways <= 5"),
        ({"ways": 2, "shots": 3, "queries": 2}, r"shots \+ queries .* = 5 exceeds.*at most 4"),
        ({"ways": 0, "shots": 1, "queries": 1}, r"ways must be >= 1"),
        ({"ways": 2, "shots": -1, "queries": 1}, r"shots must be >= 1"),
        ({"ways": 2, "shots": 1, "queries": 0}, r"queries must be >= 1"),
        ({"ways": 2.5, "shots": 1, "queries": 1}, r"ways must be an integer"),
    ],
)
def test_invalid_sizes_fail_at_construction(tagged, kwargs, message) -> None:
    with pytest.raises(TaskError, match=message):
        EpisodicFamily(tagged([4] * 5), **kwargs)
    with pytest.raises(ValueError):  # TaskError is a ValueError
        EpisodeSampler(tagged([4] * 5), **kwargs)


def test_with_shape(tagged) -> None:
    family = EpisodicFamily(tagged([20] * 6), 5, 1, 5, transform=RandomShift(1))
    wide = family.with_shape(queries=15)
    assert (wide.ways, wide.shots, wide.queries) == (5, 1, 15)
    assert wide.dataset is family.dataset and wide.transform is family.transform
    assert wide.sample(2, gen(0)).query_x.shape[1] == 75
    assert family.with_shape(ways=3, transform=None).transform is None
    with pytest.raises(TaskError, match="ways = 7 exceeds"):
        family.with_shape(ways=7)
    with pytest.raises(TypeError, match="unknown overrides"):
        family.with_shape(colour=True)


def test_class_groups_keep_episodes_within_one_group(tagged) -> None:
    groups = ["A"] * 4 + ["B"] * 3 + ["C"] * 2
    ds = tagged([2] * 9, groups=groups)
    family = within_alphabet_family(ds, ways=3)
    assert family.plan.excluded_groups == ["C"]  # only 2 classes
    classes = family.sample(100, gen(0)).info["classes"]
    alphabets = [{groups[c] for c in row} for row in classes.tolist()]
    assert all(len(a) == 1 for a in alphabets)
    assert {a.pop() for a in alphabets} == {"A", "B"}
    explicit = EpisodicFamily(ds, 2, 1, 1, class_groups=[[0, 1], [7, 8]])
    picked = explicit.sample(50, gen(0)).info["classes"].sort(dim=1).values.tolist()
    assert all(row in ([0, 1], [7, 8]) for row in picked)
    with pytest.raises(TaskError, match=r"every class group.*largest has 4.*ways <= 4"):
        within_alphabet_family(ds, ways=5)


def test_normalize_and_transform(tagged) -> None:
    ds = tagged([3] * 4)
    plain = EpisodicFamily(ds, 2, 1, 1).sample(2, gen(0))
    normed = EpisodicFamily(ds, 2, 1, 1, normalize=(0.5, 0.25)).sample(2, gen(0))
    assert torch.allclose(normed.support_x, (plain.support_x - 0.5) / 0.25)
    calls = []

    def mark(images, generator):
        calls.append(images.shape)
        return images + 1.0

    marked = EpisodicFamily(ds, 2, 1, 1, transform=mark).sample(2, gen(0))
    assert calls == [(8, 1, 4, 4)]  # one call on all support and query images
    assert torch.allclose(marked.query_x, plain.query_x + 1.0)


def test_sampler_reproducible_and_epochs(tagged) -> None:
    ds = tagged([4] * 6)
    sampler = EpisodeSampler(ds, 3, 1, 2, seed=3, tasks_per_batch=2, num_batches=4)
    first = list(sampler)
    assert len(first) == len(sampler) == 4
    assert all(len(b) == 2 * 3 * 3 for b in first)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpisodeSampler(ds, 3, 1, 2, seed=4, tasks_per_batch=2, num_batches=4)) != first
    infinite = EpisodeSampler(ds, 3, 1, 2)
    with pytest.raises(TypeError, match="infinite"):
        len(infinite)
    assert len(list(zip(range(5), infinite))) == 5


def test_dataloader_with_workers_matches_in_process(tagged) -> None:
    ds = tagged([5] * 7)
    sampler = EpisodeSampler(ds, 3, 2, 2, seed=0, tasks_per_batch=4, num_batches=3)
    serial = list(sampler.loader(num_workers=0))
    parallel = list(sampler.loader(num_workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        validate_batch(a)
        assert a.support_x.shape == (4, 6, 1, 4, 4) and a.ways == 3
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
        cls, _ = decode(a.query_x)
        assert torch.equal(cls, a.info["classes"].gather(1, a.query_y))
    # the collate of the sampler and the family's sampler core agree
    family = EpisodicFamily(ds, 3, 2, 2)
    g = torch.Generator().manual_seed(0)
    _, items = family.sample_indices(4, g)
    assert items.reshape(-1).tolist() == next(iter(sampler))
