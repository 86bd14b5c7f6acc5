"""``python -m metaloop.bench WORKLOAD [--json] [--repeats N] [--engines a,b] ...``

``python -m metaloop.bench sampler [--data-root DIR] [--workers 0,1,2] [--repeats N]``
measures the data path (``metaloop.bench.sampler``): ``--repeats`` is then the number of
timed batches per loader.
"""

from __future__ import annotations

import argparse
import json
import sys

from metaloop.bench.runner import format_table, profile_engine, run_benchmark
from metaloop.bench.sampler import NAME as SAMPLER
from metaloop.bench.sampler import add_sampler_arguments, run_sampler_benchmark
from metaloop.bench.workloads import WORKLOADS
from metaloop.functional.speed import retain_freed_memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metaloop.bench",
        description="meta-training throughput and peak memory against a plain per-task loop",
    )
    parser.add_argument("workload", choices=[*sorted(WORKLOADS), SAMPLER])
    parser.add_argument("--repeats", type=int, default=None, help="timed meta-steps per engine")
    parser.add_argument("--warmup", type=int, default=None, help="untimed meta-steps first")
    parser.add_argument(
        "--engines",
        default=None,
        help="comma-separated, e.g. plain,vmap,vmap+compile (plain always runs)",
    )
    parser.add_argument("--cases", default=None, help="comma-separated case labels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probe step")
    parser.add_argument(
        "--retain-memory",
        action="store_true",
        help="keep freed memory for reuse (glibc mallopt; what `metaloop train` does)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="ENGINE",
        help="print a torch.profiler table of this engine instead",
    )
    add_sampler_arguments(parser)
    args = parser.parse_args(argv)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    if args.retain_memory and not retain_freed_memory():
        parser.error("--retain-memory needs glibc (Linux); this C library has no mallopt")

    def split(s: str) -> list[str]:
        return [x for x in s.split(",") if x]

    if args.workload == SAMPLER:
        if args.profile or args.engines or args.device != "cpu":
            parser.error("the sampler workload takes no --profile, --engines or --device")
        try:
            workers = [int(w) for w in split(args.workers)]
        except ValueError:
            parser.error(f"--workers must be comma-separated integers, got {args.workers!r}")
        try:
            result = run_sampler_benchmark(
                args.data_root,
                workers=workers,
                batches=args.repeats,
                warmup=args.warmup,
                cases=split(args.cases) if args.cases else None,
                threads=args.threads,
                seed=args.seed,
                log=log,
            )
        except ValueError as err:  # OmniglotError (missing archives) is a ValueError
            print(f"python -m metaloop.bench sampler: {err}", file=sys.stderr)
            return 2
        return _emit(result, args.json, args.out)
    if args.profile:
        case = args.cases.split(",")[0] if args.cases else None
        print(
            profile_engine(
                args.workload,
                args.profile,
                case=case,
                device=args.device,
                threads=args.threads,
                steps=args.repeats or 5,
            )
        )
        return 0

    result = run_benchmark(
        args.workload,
        repeats=args.repeats,
        engines=split(args.engines) if args.engines else None,
        device=args.device,
        cases=split(args.cases) if args.cases else None,
        warmup=args.warmup,
        threads=args.threads,
        memory=not args.no_memory,
        seed=args.seed,
        log=log,
    )
    return _emit(result, args.json, args.out)


def _emit(result: dict, as_json: bool, out: str | None) -> int:
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result) if as_json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
