"""Risk inflation ratio, its interval, the task pool and the pool-size sweep."""

from __future__ import annotations

import math

import pytest
import torch

from metaloop.algorithms import MAML
from metaloop.diagnostics import overfitting
from metaloop.diagnostics.core import LeaveOneOut
from metaloop.models import MLP
from metaloop.tasks import LinearRegression

torch.set_num_threads(1)


def test_risk_inflation_ratio_and_interval_closed_form():
    train = torch.tensor([1.0, 2.0, 3.0, 4.0])
    held = torch.tensor([4.0, 6.0, 8.0, 10.0, 12.0])
    r = overfitting.risk_inflation(train, held)
    assert r.ratio == pytest.approx(8.0 / 2.5)
    var = (10.0 / 5) / 8.0**2 + (5.0 / 3 / 4) / 2.5**2  # sample variances s^2 / (n m^2)
    half = 1.959963984540054 * math.sqrt(var)
    assert r.low == pytest.approx(3.2 * math.exp(-half))
    assert r.high == pytest.approx(3.2 * math.exp(half))
    with pytest.raises(ValueError, match="at least 2 losses"):
        overfitting.risk_inflation(torch.tensor([1.0]), held)


def test_paired_interval_vanishes_when_held_out_is_proportional():
    """``h_j = 2 t_j`` in every fold: the ratio is exactly 2 and the paired delta method gives
    a zero-width interval (the unpaired one would not)."""
    pairs = [(1.0, 2.0), (2.0, 4.0), (4.0, 8.0)]
    r = overfitting.loto_risk_inflation(LeaveOneOut(7 / 3, 14 / 3, pairs))
    assert r.ratio == pytest.approx(2.0)
    assert r.high - r.low == pytest.approx(0.0, abs=1e-6)
    unpaired = overfitting.risk_inflation(torch.tensor([1.0, 2, 4]), torch.tensor([2.0, 4, 8]))
    assert unpaired.high - unpaired.low > 1.0


def test_task_pool_samples_distinct_points_of_pool_tasks():
    family = LinearRegression(dim=2, shots=6, queries=6)
    tasks = family.sample(3, torch.Generator().manual_seed(0))
    pool = overfitting.TaskPool(tasks, shots=4, queries=5)
    batch = pool.sample(20, torch.Generator().manual_seed(1))
    assert batch.support_x.shape == (20, 4, 2) and batch.query_x.shape == (20, 5, 2)
    weights = tasks.info["weights"]
    for i, j in enumerate(batch.info["pool_index"]):
        x = torch.cat([batch.support_x[i], batch.query_x[i]])
        y = torch.cat([batch.support_y[i], batch.query_y[i]]).squeeze(-1)
        torch.testing.assert_close(x @ weights[j], y)  # the points belong to task j
        assert len({tuple(r.tolist()) for r in x}) == 9  # distinct points
    with pytest.raises(ValueError, match="shots \\+ queries <= 12"):
        overfitting.TaskPool(tasks, shots=8, queries=5)


def test_pool_of_one_task_is_memorised_a_large_pool_is_not():
    """Noise-free linear regression, one inner step with a small rate: on a pool of one task
    MAML's theta_0 goes to that task's weights (training loss ~ 0, held-out loss ~ the prior
    variance), a ratio far above 1; on 200 tasks it learns the prior mean and R ~ 1."""
    family = LinearRegression(dim=4, shots=10, queries=10, w_mean=1.0, w_std=1.0)

    def make():
        return MAML(MLP(4, 1, hidden=(), bias=False), inner_lr=0.01)

    points = overfitting.pool_size_sweep(
        make, family, [1, 200], shots=5, queries=5, iterations=120, outer_lr=0.1, episodes=100
    )
    small, large = points[0].risk, points[1].risk
    assert small.low > 20 and small.train_loss < 0.1
    assert large.low < 1.0 < large.high and small.low > 10 * large.high


def _grouped_family(groups: int = 4, per_group: int = 6, per_class: int = 4):
    """Classes in ``groups`` named groups; class ``c`` is a constant 4x4 image of value
    ``c / classes`` (so a pool's classes are recognisable by their images)."""
    from metaloop.data.dataset import ClassDataset
    from metaloop.data.episodes import EpisodicFamily

    classes = groups * per_group
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = (labels.float() / classes).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    names = ["delta", "alpha", "gamma", "beta", "eps", "zeta"][:groups]
    info = [{"alphabet": names[c // per_group], "name": str(c)} for c in range(classes)]
    return EpisodicFamily(ClassDataset(images, labels, info), ways=3, shots=1, queries=2)


def test_group_pools_take_whole_groups_nested_in_name_order():
    family = _grouped_family()
    pools = overfitting.group_pools(family, [1, 2, 4])
    assert sorted(pools) == [1, 2, 4]
    assert set(pools[1].dataset.values("alphabet")) == {"alpha"}  # sorted first, not "delta"
    assert set(pools[2].dataset.values("alphabet")) == {"alpha", "beta"}
    assert pools[4].num_classes == 24 and pools[1].num_classes == 6
    # every image of the one-group pool is one of alpha's (classes 6..11 of the family)
    values = pools[1].sample(10, torch.Generator().manual_seed(0)).support_x.unique()
    assert set((values * 24).round().int().tolist()) <= set(range(6, 12))
    seeded = overfitting.group_pools(family, [1, 2], seed=3)
    assert set(seeded[1].dataset.values("alphabet")) < set(seeded[2].dataset.values("alphabet"))
    with pytest.raises(ValueError, match=r"1\.\.4"):
        overfitting.group_pools(family, [5])


def test_family_pool_sweep_on_the_held_out_family_itself_finds_no_inflation():
    """A pool that *is* the held-out distribution: both sides score new episodes of the same
    classes, so the ratio's interval must contain 1 (a sweep that scored the pool on its
    training batches, or held out on another seed's learner, would not be pinned there)."""
    from metaloop.models import Conv4

    family = _grouped_family()

    def make():
        model = Conv4(1, ways=3, hidden=4, image_size=4, norm="layer", strided=True, blocks=2)
        return MAML(model, inner_lr=0.4, loss="cross_entropy", vectorize="loop")

    points = overfitting.family_pool_sweep(
        make, {4: family}, family, iterations=5, meta_batch_size=2, episodes=150
    )
    (point,) = points
    assert point.pool_size == 4 and point.iterations == 5
    assert point.risk.low < 1.0 < point.risk.high
    assert 0.0 <= point.train_accuracy <= 1.0 and point.held_out_accuracy is not None
