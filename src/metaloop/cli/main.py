"""The ``metaloop`` command: one module per subcommand, dispatched by ``set_defaults(func=...)``.

    metaloop train configs/sinusoid-maml.toml --run-dir runs/sine [--set train.iterations=1000]
    metaloop train runs/sine                       # resume                   (cli/train.py)
    metaloop eval runs/sine --episodes 600 --steps 1,5,10 --shots 5 [--json]  (cli/eval.py)
    metaloop combine preds/a.pt preds/b.pt [--balanced]                       (cli/combine.py)
    metaloop lake-runs runs/omni --runs all_runs.zip [--json]                 (cli/lake.py)
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
import os
import sys

from metaloop.cli import bench, combine, diagnose, images, lake, plot, rl, train
from metaloop.cli import eval as eval_
from metaloop.cli.config import ConfigError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metaloop", description="Meta-learning on PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)
    train.add_parser(sub)
    eval_.add_parser(sub)
    combine.add_parser(sub)
    lake.add_parser(sub)
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
    except KeyboardInterrupt:
        print(f"metaloop {args.command}: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    except Exception as err:
        return report(args.command, err)


def report(command: str, err: Exception) -> int:
    """Print ``err`` as one ``metaloop COMMAND: error: ...`` line; return the exit status.

    Configuration, data, task, checkpoint, lock and non-finite (``NonFiniteError``) errors
    carry a message meant for the user (status 2); a file-system fault names the path and
    the problem (status 2); anything else is a bug, reported on one line as an internal
    error (status 3), or raised with its traceback when ``METALOOP_DEBUG`` is set.
    """
    from metaloop.train import CheckpointError, NonFiniteError
    from metaloop.train.lock import RunLockedError

    if isinstance(err, (ConfigError, ValueError, CheckpointError, NonFiniteError, RunLockedError)):
        message, status = one_line(err), 2
    elif isinstance(err, OSError):
        message, status = describe_os_error(err), 2
    else:
        if os.environ.get("METALOOP_DEBUG"):
            raise err
        message = (
            f"internal error ({type(err).__name__}: {one_line(err)[:300]}); rerun with "
            "METALOOP_DEBUG=1 for the traceback and please report it"
        )
        status = 3
    print(f"metaloop {command}: error: {message}", file=sys.stderr)
    return status


def one_line(err: BaseException) -> str:
    """An error's message on one line (torch and other libraries write several)."""
    return " ".join(str(err).split()) or type(err).__name__


def describe_os_error(err: OSError) -> str:
    """``cannot write PATH: Permission denied``-style text for an ``OSError``."""
    import errno

    reason = err.strerror or str(err) or type(err).__name__
    if err.errno == errno.ENOSPC:
        reason = "no space left on the device"
    if err.filename is None:
        return f"{reason} ({type(err).__name__})"
    where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
    return f"{where}: {reason}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
