"""Multi-domain episodes in the style of Meta-Dataset (Triantafillou et al., ICLR 2020).

Every episode first draws a *domain* (a dataset: Omniglot, Double MNIST, faces, ...),
uniformly or with ``domain_weights``, then a variable-way, variable-shot,
class-imbalanced episode from that domain's classes, following the paper's sampling
procedure (its Section 3.2 and Appendix; ImageNet's hierarchy-based and Omniglot's
alphabet-based class choice are left out: classes are drawn uniformly):

1. **ways** ``N ~ U{min_ways, ..., min(max_ways, |C|)}`` (paper: 5 and 50), the classes
   drawn uniformly without replacement among the domain's classes with at least 2 images;
2. **queries per class**, the same for every class of the episode:
   ``q = min(max_query_per_class, min_c floor(n_c / 2))`` (paper: 10), ``n_c`` the images
   of class ``c``;
3. **support size** ``|S| = min(max_support, sum_c ceil(beta * min(max_support_per_class,
   n_c - q)))`` with ``beta ~ U(0, 1]`` (paper: 500 and 100);
4. **shots per class** ``k_c = min(floor(R_c * (|S| - N)) + 1, n_c - q)`` with the
   shares ``R_c = exp(alpha_c) / sum_c' exp(alpha_c')``, ``alpha_c ~ U[log 0.5, log 2)``:
   every class gets at least one shot, and shares differ by up to a factor 4.

Because sizes vary, an episode is a ``TaskBatch`` of one task (support and query laid
out class-major, labels ``0 .. N-1`` in random class order); ``info`` holds
``domain``, ``classes`` (ids unique over all domains: the domain's class id plus the
number of classes of the domains before it, so ``num_classes`` heads such as the
fine-tuning baseline's pretraining head work on the mixture) and ``shots`` (``k_c`` per
label).  ``only(domain)`` restricts
the sampler to one domain (per-domain evaluation); ``mean_rank`` ranks methods per
domain and averages, as the paper's tables do.

All domains must share one image shape (resize them when loading).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metaloop.data.dataset import ClassDataset, to_float_images
from metaloop.tasks.base import TaskBatch, TaskError
from metaloop.validate import is_int


@dataclass(frozen=True)
class EpisodeSizes:
    """The paper's bounds (defaults: Meta-Dataset's values)."""

    min_ways: int = 5
    max_ways: int = 50
    max_query_per_class: int = 10
    max_support: int = 500
    max_support_per_class: int = 100

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise TaskError(f"EpisodeSizes.{name} must be a positive integer, got {value!r}")
        if self.min_ways > self.max_ways:
            raise TaskError(f"min_ways ({self.min_ways}) exceeds max_ways ({self.max_ways})")


def query_count(class_sizes: Tensor, sizes: EpisodeSizes) -> int:
    """``q = min(max_query_per_class, min_c floor(n_c / 2))``."""
    return int(min(sizes.max_query_per_class, int((class_sizes // 2).min())))


def support_counts(
    class_sizes: Tensor, queries: int, sizes: EpisodeSizes, generator: torch.Generator | None
) -> Tensor:
    """Shots ``k_c`` per class (steps 3 and 4 of the module docstring), ``long [N]``."""
    n = class_sizes.numel()
    room = class_sizes - queries
    beta = 1.0 - torch.rand((), generator=generator, dtype=torch.float64)  # U(0, 1]
    total = int(torch.ceil(beta * room.clamp(max=sizes.max_support_per_class).double()).sum())
    total = min(sizes.max_support, total)
    alpha = math.log(0.5) + math.log(4.0) * torch.rand(n, generator=generator, dtype=torch.float64)
    share = torch.softmax(alpha, 0)
    shots = torch.floor(share * (total - n)).long() + 1
    return torch.minimum(shots, room)


class MultiDomainSampler:
    """Variable-way variable-shot episodes over several domains (a task family).

    Args:
        domains: ``{name: ClassDataset}``, all with one image shape.
        sizes: the episode bounds (``EpisodeSizes``; Meta-Dataset's by default).
        domain_weights: probability of each domain (default uniform).
        normalize: ``(mean, std)`` after scaling to ``[0, 1]``.
    """

    loss = "cross_entropy"

    def __init__(
        self,
        domains: Mapping[str, ClassDataset],
        sizes: EpisodeSizes | None = None,
        domain_weights: Sequence[float] | None = None,
        normalize: tuple[float, float] | None = None,
    ) -> None:
        if not domains:
            raise TaskError("MultiDomainSampler needs at least one domain")
        self.sizes = sizes or EpisodeSizes()
        self.domains = dict(domains)
        shapes = {d.image_shape for d in self.domains.values()}
        if len(shapes) != 1:
            raise TaskError(
                f"every domain must have one image shape, got {sorted(shapes)}; resize them "
                "when loading"
            )
        self.usable: dict[str, Tensor] = {}
        for name, ds in self.domains.items():
            classes = torch.nonzero(ds.class_sizes >= 2).reshape(-1)
            if classes.numel() < self.sizes.min_ways:
                raise TaskError(
                    f"domain {name!r} has {classes.numel()} classes with at least 2 images; "
                    f"episodes need min_ways = {self.sizes.min_ways}"
                )
            self.usable[name] = classes
        self.names = list(self.domains)
        weights = [1.0] * len(self.names) if domain_weights is None else list(domain_weights)
        if len(weights) != len(self.names) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise TaskError(
                f"domain_weights needs {len(self.names)} non-negative numbers with a positive "
                f"sum, got {domain_weights!r}"
            )
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.normalize = normalize
        self.class_offset: dict[str, int] = {}
        offset = 0
        for name, ds in self.domains.items():
            self.class_offset[name] = offset
            offset += ds.num_classes
        #: classes over all domains (the range of ``info["classes"]``)
        self.num_classes = offset

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return next(iter(self.domains.values())).image_shape

    def only(self, domain: str) -> MultiDomainSampler:
        """The same sampler restricted to one domain."""
        if domain not in self.domains:
            raise TaskError(f"unknown domain {domain!r}; choose one of {', '.join(self.names)}")
        return MultiDomainSampler({domain: self.domains[domain]}, self.sizes, None, self.normalize)

    def draw(self, generator: torch.Generator | None = None) -> dict[str, object]:
        """One episode's plan without images: ``domain``, ``classes [N]``, ``queries`` and
        ``shots [N]``, ``support`` and ``query`` (item indices, class-major)."""
        g = generator
        d = int(torch.multinomial(self.weights, 1, generator=g))
        name = self.names[d]
        ds, usable = self.domains[name], self.usable[name]
        top = min(self.sizes.max_ways, usable.numel())
        ways = int(torch.randint(self.sizes.min_ways, top + 1, (), generator=g))
        classes = usable[torch.randperm(usable.numel(), generator=g)[:ways]]
        counts = ds.class_sizes[classes]
        queries = query_count(counts, self.sizes)
        shots = support_counts(counts, queries, self.sizes, g)
        support, query = [], []
        for c, k in zip(classes.tolist(), shots.tolist()):
            items = ds.items_of(c)
            order = items[torch.randperm(items.numel(), generator=g)]
            support.append(order[:k])
            query.append(order[k : k + queries])
        return {
            "domain": name,
            "classes": classes,
            "queries": queries,
            "shots": shots,
            "support": torch.cat(support),
            "query": torch.cat(query),
        }

    def sample(self, batch_size: int = 1, generator: torch.Generator | None = None) -> TaskBatch:
        """One episode as a ``TaskBatch`` of one task (sizes vary between episodes)."""
        if batch_size != 1:
            raise TaskError(
                f"multi-domain episodes vary in size, so a batch holds one episode; got "
                f"batch_size={batch_size} (use meta_batch_size = 1)"
            )
        plan = self.draw(generator)
        ds = self.domains[plan["domain"]]  # type: ignore[index]
        shots, queries = plan["shots"], plan["queries"]
        ways = len(shots)  # type: ignore[arg-type]
        sx = to_float_images(ds.gather(plan["support"]), self.normalize)  # type: ignore[arg-type]
        qx = to_float_images(ds.gather(plan["query"]), self.normalize)  # type: ignore[arg-type]
        sy = torch.arange(ways).repeat_interleave(shots)  # type: ignore[arg-type]
        qy = torch.arange(ways).repeat_interleave(queries)  # type: ignore[arg-type]
        return TaskBatch(
            sx[None],
            sy[None],
            qx[None],
            qy[None],
            ways,
            info={
                "domain": plan["domain"],
                "classes": plan["classes"][None] + self.class_offset[plan["domain"]],  # type: ignore[index]
                "shots": shots[None],  # type: ignore[index]
            },
        )

    def __repr__(self) -> str:
        return f"MultiDomainSampler(domains={self.names}, sizes={self.sizes})"


def mean_rank(accuracy: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{method: mean rank}`` from ``{method: {domain: accuracy}}``: per domain, rank 1 is
    the most accurate method (ties share their mean rank); ranks averaged over the domains
    every method reports."""
    methods = list(accuracy)
    if not methods:
        raise TaskError("mean_rank needs at least one method")
    domains = set.intersection(*(set(v) for v in accuracy.values()))
    if not domains:
        raise TaskError("the methods share no domain to rank on")
    total = dict.fromkeys(methods, 0.0)
    for d in domains:
        for m in methods:
            better = sum(accuracy[o][d] > accuracy[m][d] for o in methods)
            tied = sum(accuracy[o][d] == accuracy[m][d] for o in methods)  # includes m
            total[m] += better + (tied + 1) / 2
    return {m: total[m] / len(domains) for m in methods}
