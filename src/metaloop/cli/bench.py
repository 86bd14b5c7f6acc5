"""``metaloop bench WORKLOAD``: meta-training throughput against a plain per-task loop, or
the data path's episode batches/s (``sampler``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from metaloop.cli.args import positive_int
from metaloop.cli.config import ConfigError


def add_parser(sub: Any) -> None:
    from metaloop.bench.sampler import add_sampler_arguments

    b = sub.add_parser("bench", help="meta-training throughput against a plain per-task loop")
    b.add_argument(
        "workload",
        help="sinusoid, omniglot, memory or protonet (meta-steps), or sampler (the data path: "
        "Omniglot episode batches/s)",
    )
    b.add_argument(
        "--repeats", type=positive_int, default=None, help="timed steps (sampler: timed batches)"
    )
    b.add_argument("--device", default="cpu")
    b.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine more threads "
        "slow small models down; docs/performance.md)",
    )
    b.add_argument(
        "--retain-memory",
        action="store_true",
        help="keep freed memory for reuse, as train and eval do (glibc; docs/performance.md)",
    )
    add_sampler_arguments(b)
    b.add_argument("--json", action="store_true")

    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from metaloop.bench import format_table, run_benchmark
    except ImportError as err:  # pragma: no cover
        raise ConfigError(f"benchmarks are not available: {err}") from err
    from metaloop.runtime import retain_freed_memory

    if args.retain_memory and not retain_freed_memory():
        raise ConfigError("--retain-memory needs glibc (Linux); this C library has no mallopt")
    if args.workload != "sampler":
        from metaloop.cli.config import _check_device

        try:
            _check_device(args.device)
        except ConfigError as err:
            raise ConfigError(f"--device: {err}") from err
    kwargs: dict[str, Any] = {"threads": args.threads}
    try:
        if args.workload == "sampler":
            from metaloop.bench.sampler import run_sampler_benchmark

            try:
                workers = [int(w) for w in args.workers.split(",") if w]
            except ValueError:
                raise ConfigError(
                    f"--workers must be comma-separated integers, got {args.workers!r}"
                ) from None
            result = run_sampler_benchmark(
                args.data_root, workers=workers, batches=args.repeats, **kwargs
            )
        else:
            if args.repeats:
                kwargs["repeats"] = args.repeats
            result = run_benchmark(args.workload, device=args.device, **kwargs)
    except (KeyError, ValueError) as err:
        raise ConfigError(str(err).strip("'\"")) from err
    print(json.dumps(result) if args.json else format_table(result))
    return 0
