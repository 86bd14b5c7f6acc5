"""Throughput benchmarks: the workloads of BENCHMARKS.md against a plain per-task loop.

``run_benchmark(workload, repeats=..., engines=..., device=...) -> dict`` and
``format_table(result) -> str``; ``python -m metaloop.bench sinusoid [--json]`` runs one
from the shell.  The data path has its own workload, ``sampler``
(``run_sampler_benchmark(data_root, workers=(0, 1, 2))``: Omniglot episode batches/s
in-process and with ``DataLoader`` workers, beside the training step rate).  See
``metaloop.bench.runner`` (and ``metaloop.bench.sampler``) for what is measured and the
result fields, and ``docs/performance.md`` for numbers.
"""

from metaloop.bench.baselines import PlainLoopMAML, PlainLoopProtoNet, available_libraries
from metaloop.bench.runner import (
    PeakMemory,
    build_engine,
    format_table,
    parse_engine,
    run_benchmark,
)
from metaloop.bench.sampler import format_sampler_table, run_sampler_benchmark
from metaloop.bench.workloads import WORKLOADS, Case, Workload, get_workload

__all__ = [
    "WORKLOADS",
    "Case",
    "PeakMemory",
    "PlainLoopMAML",
    "PlainLoopProtoNet",
    "Workload",
    "available_libraries",
    "build_engine",
    "format_sampler_table",
    "format_table",
    "get_workload",
    "parse_engine",
    "run_benchmark",
    "run_sampler_benchmark",
]
