"""The ``metaloop`` command: one module per subcommand, dispatched by ``set_defaults(func=...)``.

    metaloop train configs/sinusoid-maml.toml --run-dir runs/sine [--set train.iterations=1000]
    metaloop train runs/sine                       # resume                   (cli/train.py)
    metaloop eval runs/sine --episodes 600 --steps 1,5,10 --shots 5 [--json]  (cli/eval.py)
    metaloop combine preds/a.pt preds/b.pt [--balanced]                       (cli/eval.py)
    metaloop lake-runs runs/omni --runs all_runs.zip [--json]                 (cli/eval.py)
    metaloop bench sinusoid [--json]                                          (cli/bench.py)
    metaloop plot runs/sine [--out curve.png]                                 (cli/plot.py)
    metaloop diagnose runs/sine [--json]                                      (cli/diagnose.py)
    metaloop data build double-mnist [--out DIR]                              (cli/images.py)
    metaloop verify runs/orl [--part test] [--json]                           (cli/images.py)
    metaloop rl train configs/bandit-rl2.toml --run-dir runs/rl2 / rl eval / rl plot (cli/rl.py)

Every error the user can fix is printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from metaloop.cli import bench, diagnose, images, plot, rl, train
from metaloop.cli import eval as eval_
from metaloop.cli.config import ConfigError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metaloop", description="Meta-learning on PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)
    train.add_parser(sub)
    eval_.add_parsers(sub)
    bench.add_parser(sub)
    plot.add_parser(sub)
    diagnose.add_parser(sub)
    images.add_parsers(sub)
    rl.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"metaloop {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, FloatingPointError) as err:
        # data, task, checkpoint, lock and non-finite (NonFiniteError) errors carry a
        # message meant for the user
        from metaloop.train import CheckpointError, NonFiniteError
        from metaloop.train.lock import RunLockedError

        if not isinstance(err, (ValueError, CheckpointError, NonFiniteError, RunLockedError)):
            raise
        print(f"metaloop {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metaloop {args.command}: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
