"""Meta-Dataset-style sampler: bounds over many draws, and its distributions (fixed seed)."""

from __future__ import annotations

import math

import pytest
import torch

from metaloop.data.dataset import ClassDataset
from metaloop.data.multidomain import (
    EpisodeSizes,
    MultiDomainSampler,
    mean_rank,
    support_counts,
)
from metaloop.tasks.base import TaskError


def domain(sizes: list[int], name: str) -> ClassDataset:
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    images = torch.arange(labels.numel(), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    return ClassDataset(images.contiguous(), labels, name=name)


def test_bounds_over_many_draws() -> None:
    g = torch.Generator().manual_seed(0)
    sampler = MultiDomainSampler(
        {
            "small": domain([3, 5, 8, 20, 2, 9, 4], "small"),
            "large": domain([30 + 7 * c for c in range(60)], "large"),
        }
    )
    seen = {"small": 0, "large": 0}
    for _ in range(150):
        plan = sampler.draw(g)
        name = plan["domain"]
        seen[name] += 1
        ds = sampler.domains[name]
        classes, shots, q = plan["classes"], plan["shots"], plan["queries"]
        ways = classes.numel()
        assert 5 <= ways <= min(50, ds.num_classes)
        n = ds.class_sizes[classes]
        assert 1 <= q <= min(10, int((n // 2).min()))
        assert bool((shots >= 1).all()) and bool((shots <= n - q).all())
        assert int(shots.sum()) <= 500
        items = torch.cat([plan["support"], plan["query"]])
        assert items.unique().numel() == items.numel()  # support and query disjoint
        assert torch.equal(ds.labels[plan["support"]], classes.repeat_interleave(shots))
    assert min(seen.values()) > 40  # both domains drawn
    batch = sampler.sample(1, torch.Generator().manual_seed(1))
    offset = 0 if batch.info["domain"] == "small" else 7
    assert sampler.num_classes == 67
    assert bool((batch.info["classes"] >= offset).all())
    batch = sampler.only("large").sample(1, torch.Generator().manual_seed(1))
    assert batch.info["domain"] == "large" and len(batch) == 1
    assert batch.support_y.shape[1] == int(batch.info["shots"].sum())
    with pytest.raises(TaskError, match="batch holds one episode"):
        sampler.sample(4)


def test_ways_are_uniform() -> None:
    sampler = MultiDomainSampler({"d": domain([40] * 12, "d")})
    g = torch.Generator().manual_seed(1)
    draws = 800
    counts = torch.zeros(13)
    for _ in range(draws):
        counts[sampler.draw(g)["classes"].numel()] += 1
    observed = counts[5:]
    expected = draws / 8
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 24.32  # chi-square, 7 degrees of freedom, p = 0.001


def _share_cdf(r: torch.Tensor) -> torch.Tensor:
    """P(R_1 <= r) for two classes: R_1 = 1 / (1 + exp(d)), d = alpha_2 - alpha_1 the
    difference of two U[log 0.5, log 2) draws (triangular on [-L, L], L = log 4)."""
    big_l = math.log(4.0)
    t = torch.log(1 / r - 1)  # R_1 <= r  <=>  d >= t
    upper = (big_l - t).clamp(min=0) ** 2 / (2 * big_l**2)
    lower = 1 - (big_l + t).clamp(min=0) ** 2 / (2 * big_l**2)
    return torch.where(t >= 0, upper, lower).clamp(0, 1)


def test_class_shares_follow_the_specified_distribution() -> None:
    sizes = EpisodeSizes(max_support=10**6, max_support_per_class=10**5)
    g = torch.Generator().manual_seed(2)
    n = torch.tensor([10**6, 10**6])
    shares = []
    for _ in range(2000):
        k = support_counts(n, 10, sizes, g).double()
        if k.sum() > 200:  # beta not tiny: the floor's error is below 1%
            shares.append(float((k[0] - 1) / (k.sum() - 2)))
    r = torch.tensor(sorted(shares), dtype=torch.float64)
    assert float(r.min()) >= 0.2 - 0.01 and float(r.max()) <= 0.8 + 0.01  # factor 4 at most
    empirical = torch.arange(1, r.numel() + 1, dtype=torch.float64) / r.numel()
    ks = float((empirical - _share_cdf(r)).abs().max())
    assert ks < 1.95 / math.sqrt(r.numel()) + 0.01  # Kolmogorov-Smirnov, p = 0.001


def test_support_size_follows_beta() -> None:
    # five classes with room for 100 shots each: |S| = 5 ceil(100 beta), beta ~ U(0, 1]
    g = torch.Generator().manual_seed(3)
    totals = torch.tensor(
        [
            int(support_counts(torch.full((5,), 1000), 10, EpisodeSizes(), g).sum())
            for _ in range(3000)
        ],
        dtype=torch.float64,
    )
    assert float(totals.min()) >= 5 and float(totals.max()) <= 500
    # |S| = 5 (ceil(100 beta) - 1) + 5 - floor errors: mean 5 * 50.5 minus at most 4
    assert abs(float(totals.mean()) - 252.5) < 4 + 3 * float(totals.std()) / math.sqrt(3000)


def test_mean_rank_and_errors() -> None:
    acc = {
        "protonet": {"a": 0.9, "b": 0.5, "c": 0.7},
        "maml": {"a": 0.8, "b": 0.6, "c": 0.7},
        "finetune": {"a": 0.7, "b": 0.4, "c": 0.6},
    }
    # a: 1, 2, 3; b: 2, 1, 3; c: 1.5, 1.5, 3
    assert mean_rank(acc) == pytest.approx({"protonet": 4.5 / 3, "maml": 4.5 / 3, "finetune": 3.0})
    with pytest.raises(TaskError, match="one image shape"):
        MultiDomainSampler(
            {"a": domain([5] * 6, "a"), "b": ClassDataset(torch.zeros(6, 1, 3, 3), [0] * 6)}
        )
    with pytest.raises(TaskError, match="min_ways = 5"):
        MultiDomainSampler({"a": domain([5, 5, 1, 1, 1, 5], "a")})
