"""The data-path workload: how fast Omniglot episode batches are produced.

``run_sampler_benchmark()`` measures, for the two training shapes of the configs, the
rate at which episode batches arrive from

* ``family.sample``: ``EpisodicFamily.sample(meta_batch, generator)`` in the calling
  process (what ``Trainer`` does between meta-steps);
* ``loader w=N``: ``torch.utils.data.DataLoader`` with ``EpisodeSampler`` as batch
  sampler and ``EpisodeCollate`` (``EpisodeSampler.loader(num_workers=N)``), for each
  ``N`` in ``workers`` (default 0, 1 and 2);

and sets it beside the training step rate of the same shape, so the report says whether
sampling can starve training.

=================  ===============================================================
case               shape (Vinyals train split, 28x28, rotations: 4,400 classes)
=================  ===============================================================
maml-5w1s          5-way 1-shot 5-query, meta-batch 32 (``omniglot-5w1s-maml``)
protonet-60w1s     60-way 1-shot 5-query, meta-batch 1 (``omniglot-protonet-1shot``)
=================  ===============================================================

Timing: per loader, the first batch is timed on its own (``first_batch_seconds``: with
workers it includes starting them), then ``warmup`` untimed batches, then ``batches``
timed ones; ``seconds_per_batch`` is the timed window's wall time over ``batches`` (the
consumer does nothing else, so this is the loader's maximum rate), ``batches_per_s`` its
inverse and ``episodes_per_s`` = ``batches_per_s * meta_batch`` (an episode is one task).
``main_cpu_seconds`` is the calling process's CPU time per timed batch (for a loader with
workers: receiving batches, not making them); ``worker_cpu_seconds`` the worker
processes' CPU time per loaded batch (``getrusage(RUSAGE_CHILDREN)`` after the workers
exit; includes their start).  ``headroom`` = ``episodes_per_s`` over the training
rate's tasks/s; ``main_share_of_step`` = ``main_cpu_seconds`` over one training step's
seconds: the fraction of the trainer's own time the data path takes.

Training rates (``reference``) are measured, not re-run here: MAML 5-way 1-shot at 2.4
iterations/s (77 tasks/s: ``docs/results.md``, one idle core), ProtoNet 60-way 1-shot at
about 2 iterations/s (training progress bars on one core).  Override them with
``train_rates={"maml-5w1s": 2.4, ...}``.

The machines these numbers come from are shared: worker processes compete with whatever
else runs, the result records the load averages.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from metaloop.bench.report import fmt, load_average, load_text, machine_facts
from metaloop.bench.sampler_data import (
    _has_archives,  # noqa: F401 (importable from here, as before the split)
    default_data_roots,
    find_data_root,
    load_train_dataset,
)
from metaloop.data.dataset import ClassDataset
from metaloop.data.episodes import EpisodeSampler, EpisodicFamily
from metaloop.functional.speed import num_threads, retained_memory_threshold

__all__ = [
    "CASES",
    "DEFAULT_BATCHES",
    "DEFAULT_WARMUP",
    "DEFAULT_WORKERS",
    "DESCRIPTION",
    "NAME",
    "SamplerCase",
    "add_sampler_arguments",
    "default_data_roots",
    "find_data_root",
    "format_sampler_table",
    "load_train_dataset",
    "run_sampler_benchmark",
    "run_sampler_case",
]

NAME = "sampler"
DESCRIPTION = "Omniglot episode batches/s: in-process sampling and DataLoader workers"
DEFAULT_WORKERS = (0, 1, 2)
DEFAULT_BATCHES = 30
DEFAULT_WARMUP = 3


@dataclass(frozen=True)
class SamplerCase:
    label: str
    ways: int
    shots: int
    queries: int
    meta_batch: int
    config: str
    train_iterations_per_s: float
    train_source: str


CASES: tuple[SamplerCase, ...] = (
    SamplerCase(
        "maml-5w1s",
        5,
        1,
        5,
        32,
        "configs/omniglot-5w1s-maml.toml",
        2.4,
        "docs/results.md: MAML 5-way 1-shot, 2.4 it/s on one idle core",
    ),
    SamplerCase(
        "protonet-60w1s",
        60,
        1,
        5,
        1,
        "configs/omniglot-protonet-1shot.toml",
        2.0,
        "ProtoNet 60-way 1-shot training progress bars, about 2 it/s on one core",
    ),
)


# -- data ------------------------------------------------------------------------------------
def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampler workload's command-line options (``metaloop bench`` and
    ``python -m metaloop.bench`` share them)."""
    parser.add_argument(
        "--data-root",
        default=None,
        help="sampler: directory with the Omniglot archives (default $METALOOP_DATA, else "
        "../shared/data/omniglot next to the repository)",
    )
    parser.add_argument(
        "--workers", default="0,1,2", help="sampler: comma-separated DataLoader worker counts"
    )


# -- timing ----------------------------------------------------------------------------------
def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(
    next_batch: Callable[[], Any],
    batches: int,
    warmup: int,
    finish: Callable[[], None] | None = None,
) -> dict[str, Any]:
    children0 = _children_cpu()
    t0 = time.perf_counter()
    batch = next_batch()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        batch = next_batch()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next_batch()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    if finish is not None:
        finish()
    children = _children_cpu() - children0
    return {
        "first_batch_seconds": first,
        "window_seconds": wall,
        "main_cpu_seconds": cpu / batches,
        "children_cpu_seconds": children,
        "last_batch": batch,
    }


def run_sampler_case(
    case: SamplerCase,
    dataset: ClassDataset,
    workers: Sequence[int],
    batches: int,
    warmup: int,
    seed: int = 0,
    train_iterations_per_s: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    rate = case.train_iterations_per_s if train_iterations_per_s is None else train_iterations_per_s
    step_seconds = 1.0 / rate
    images = case.meta_batch * case.ways * (case.shots + case.queries)
    loaders: list[dict[str, Any]] = []
    total = 1 + warmup + batches

    def record(name: str, n_workers: int | None, m: dict[str, Any]) -> None:
        batch = m.pop("last_batch")
        assert tuple(batch.query_x.shape[:2]) == (case.meta_batch, case.ways * case.queries)
        per_batch = m["window_seconds"] / batches
        children = m.pop("children_cpu_seconds")
        entry = {
            "loader": name,
            "workers": n_workers,
            "seconds_per_batch": per_batch,
            "batches_per_s": 1.0 / per_batch,
            "episodes_per_s": case.meta_batch / per_batch,
            "images_per_s": images / per_batch,
            "headroom": (case.meta_batch / per_batch) / (rate * case.meta_batch),
            "main_share_of_step": m["main_cpu_seconds"] / step_seconds,
            "worker_cpu_seconds": children / total if n_workers else None,
            **m,
        }
        loaders.append(entry)

    if log:
        log(f"  {case.label}: family.sample ...")
    family = EpisodicFamily(dataset, case.ways, case.shots, case.queries)
    generator = torch.Generator().manual_seed(seed)
    record(
        "family.sample",
        None,
        _measure(lambda: family.sample(case.meta_batch, generator), batches, warmup),
    )
    for n in workers:
        if log:
            log(f"  {case.label}: DataLoader, {n} workers ...")
        sampler = EpisodeSampler(
            dataset,
            case.ways,
            case.shots,
            case.queries,
            seed=seed,
            tasks_per_batch=case.meta_batch,
            num_batches=total,
        )
        it = iter(sampler.loader(num_workers=n))

        def finish(it: Any = it) -> None:
            for _ in it:  # exhausting the loader shuts its workers down (joined)
                raise RuntimeError("the loader yielded more batches than its sampler's")

        record(f"loader w={n}", n, _measure(lambda it=it: next(it), batches, warmup, finish))
        del it
    best = max(e["episodes_per_s"] for e in loaders)
    in_process = loaders[0]
    return {
        "case": case.label,
        "config": case.config,
        "ways": case.ways,
        "shots": case.shots,
        "queries": case.queries,
        "meta_batch": case.meta_batch,
        "images_per_batch": images,
        "reference": {
            "train_iterations_per_s": rate,
            "train_tasks_per_s": rate * case.meta_batch,
            "train_step_seconds": step_seconds,
            "source": case.train_source if train_iterations_per_s is None else "given",
        },
        "loaders": loaders,
        "best_episodes_per_s": best,
        # in-process sampling runs between meta-steps: it starves training only if it
        # is slower than the steps, and costs main_share_of_step of the trainer's time
        "can_starve": in_process["headroom"] < 1.0,
    }


def run_sampler_benchmark(
    data_root: str | os.PathLike[str] | None = None,
    *,
    dataset: ClassDataset | None = None,
    workers: Sequence[int] = DEFAULT_WORKERS,
    batches: int | None = None,
    warmup: int | None = None,
    cases: Sequence[str] | None = None,
    threads: int | None = None,
    seed: int = 0,
    train_rates: Mapping[str, float] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Episode batches/s of the data path (see the module docstring).

    Args:
        data_root: directory with the Omniglot archives (default ``$METALOOP_DATA``, else
            ``../shared/data/omniglot`` next to the repository); ignored with ``dataset``.
        dataset: a ``ClassDataset`` to sample from instead of Omniglot (tests).
        workers: DataLoader worker counts to measure (0 = loading in the main process).
        batches: timed batches per loader (default 30); warmup: untimed ones (default 3).
        cases: labels (``maml-5w1s``, ``protonet-60w1s``); default both.
        threads: ``torch.set_num_threads`` in this process (workers use one thread).
        train_rates: training iterations/s per case label, replacing the references.
    """
    batches = DEFAULT_BATCHES if batches is None else int(batches)
    warmup = DEFAULT_WARMUP if warmup is None else int(warmup)
    if batches < 1 or warmup < 0:
        raise ValueError(f"batches must be >= 1 and warmup >= 0, got {batches} and {warmup}")
    workers = [int(w) for w in workers]
    if any(w < 0 for w in workers):
        raise ValueError(f"worker counts must be >= 0, got {workers}")
    selected = [c for c in CASES if cases is None or c.label in cases]
    if not selected:
        raise ValueError(
            f"no case of {NAME} matches {list(cases or [])}; cases: "
            + ", ".join(c.label for c in CASES)
        )
    unknown = set(train_rates or {}) - {c.label for c in CASES}
    if unknown:
        raise ValueError(f"train_rates names unknown cases {sorted(unknown)}")
    source = "given dataset"
    if dataset is None:
        source = str(find_data_root(data_root))
        dataset = load_train_dataset(source)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = load_average()
    t0 = time.perf_counter()
    out = []
    with num_threads(threads):
        used_threads = torch.get_num_threads()
        for case in selected:
            rate = (train_rates or {}).get(case.label)
            out.append(run_sampler_case(case, dataset, workers, batches, warmup, seed, rate, log))
    return {
        "workload": NAME,
        "description": DESCRIPTION,
        "dataset": {
            "name": dataset.name,
            "source": source,
            "classes": dataset.num_classes,
            "items": len(dataset),
            "image_shape": list(dataset.image_shape),
        },
        "device": "cpu",
        "threads": used_threads,
        "retained_memory_threshold": retained_memory_threshold(),
        **machine_facts(),
        "load_avg_start": load_start,
        "load_avg_end": load_average(),
        "batches": batches,
        "warmup": warmup,
        "workers": workers,
        "started": started.isoformat(timespec="seconds"),
        "total_seconds": time.perf_counter() - t0,
        "cases": out,
    }


def format_sampler_table(result: dict[str, Any]) -> str:
    """Plain-text tables (one per case) of a ``run_sampler_benchmark`` result."""
    ds = result["dataset"]
    lines = [
        f"{result['workload']}: {result['description']}",
        f"{ds['name']} ({ds['classes']} classes), torch {result['torch']}, "
        f"{result['threads']} threads, {result['batches']} timed batches, load avg "
        + load_text(result),
    ]
    header = (
        f"{'loader':<16}{'batches/s':>11}{'episodes/s':>12}{'ms/batch':>10}"
        f"{'x train':>10}{'main ms':>9}{'% of step':>11}{'worker ms':>11}{'1st s':>8}"
    )
    for case in result["cases"]:
        ref = case["reference"]
        verdict = (
            "CAN starve training" if case["can_starve"] else "cannot starve training in-process"
        )
        lines += [
            "",
            f"[{case['case']}] {case['ways']}-way {case['shots']}-shot {case['queries']}-query, "
            f"meta-batch {case['meta_batch']} ({case['images_per_batch']} images/batch); "
            f"training {ref['train_iterations_per_s']:.2f} it/s = "
            f"{ref['train_tasks_per_s']:.1f} tasks/s: {verdict}",
            header,
            "-" * len(header),
        ]
        for e in case["loaders"]:
            wcpu = e["worker_cpu_seconds"]
            lines.append(
                f"{e['loader']:<16}{e['batches_per_s']:>11.1f}{e['episodes_per_s']:>12.1f}"
                f"{e['seconds_per_batch'] * 1e3:>10.2f}{e['headroom']:>10.1f}"
                f"{e['main_cpu_seconds'] * 1e3:>9.2f}{e['main_share_of_step'] * 100:>10.1f}%"
                f"{fmt(wcpu and wcpu * 1e3, '.2f'):>11}{e['first_batch_seconds']:>8.2f}"
            )
    return "\n".join(lines)
