"""Fuzzing the command line: generated argument lists and config values across every
command (train, resume, eval, combine, lake-runs, bench, plot, diagnose).

Each generated call must either succeed or exit with status 2 and a one-line
``metaloop <cmd>: error: ...`` (argparse's usage text before its error line is allowed),
never a traceback and never the catch-all "internal error" line; and on failure no file
of the existing run directory may change (a successful resume may write).

Run in-process (``metaloop.cli.main.main``) so hundreds of cases fit in the suite: the
examples are derandomized (the same every run) and capped at 60 s (50 s of generated
calls, then three real processes through ``python -m metaloop``).  A longer run is
opt-in: ``METALOOP_FUZZ=1 pytest -m fuzz tests/cli/test_fuzz.py -s`` (examples from
``METALOOP_FUZZ_EXAMPLES``, default 1500, random each run).  Counts are printed at the end
(``-s``) and reported in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaloop.cli.main import main

torch.set_num_threads(1)

SUITE_SECONDS = 50.0
SUITE_EXAMPLES = 300

CONFIG = """
name = "fuzz"
seed = 1
[task]
family = "sinusoid"
shots = 3
queries = 3
[model]
name = "mlp"
hidden = [4]
[algorithm]
name = "maml"
inner_lr = 0.01
inner_steps = 1
[train]
iterations = 2
meta_batch_size = 2
validate_every = 2
validation_tasks = 2
checkpoint_every = 2
log_every = 1
threads = 1
progress = false
[eval]
episodes = 2
steps = [0, 1]
"""

COUNTS: Counter = Counter()


class World:
    """The files the generated calls point at, built once: a trained run directory (kept
    pristine: restored after a successful call that changed it), a config file, broken
    files of several kinds, and a counter for fresh run directories."""

    def __init__(self, root: Path):
        self.root = root
        (root / "fuzz.toml").write_text(CONFIG)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert (
                main(["train", str(root / "fuzz.toml"), "--run-dir", str(root / "pristine")]) == 0
            )
        shutil.copytree(root / "pristine", root / "run")
        (root / "empty.toml").write_text("")
        (root / "binary.toml").write_bytes(bytes(range(256)))
        (root / "bad.toml").write_text("[train\niterations = ")
        (root / "notes.txt").write_text("not a checkpoint")
        (root / "garbage.pt").write_bytes(os.urandom(200))
        (root / "emptydir").mkdir()
        self.fresh = 0

    def path(self, name: str) -> str:
        if name == "fresh":
            self.fresh += 1
            return str(self.root / "fresh" / str(self.fresh))
        return str(self.root / name)

    def digest(self) -> dict[str, str]:
        run = self.root / "run"
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.iterdir())
            if p.is_file()
        }

    def restore(self) -> None:
        shutil.rmtree(self.root / "run")
        shutil.copytree(self.root / "pristine", self.root / "run")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("fuzz"))


# -- strategies ---------------------------------------------------------------------------

PATHS = [
    "run",
    "fuzz.toml",
    "empty.toml",
    "binary.toml",
    "bad.toml",
    "notes.txt",
    "garbage.pt",
    "emptydir",
    "missing",
    "fresh",
    "notes.txt/below",
    "run/latest.pt",
]
NUMBERS = [
    "0",
    "1",
    "2",
    "-1",
    "-3",
    "3",
    "1e30",
    "nan",
    "inf",
    "99999999999999999999",
    "x",
    "",
    "1.5",
    "0x10",
    " 2",
]
SET_KEYS = [
    "train.iterations",
    "train.meta_batch_size",
    "train.outer_lr",
    "train.nonfinite",
    "train.optimizer",
    "train.patience",
    "train.grad_clip",
    "train.log_every",
    "train.checkpoint_every",
    "train.init_from",
    "train.progress",
    "algorithm.inner_lr",
    "algorithm.inner_steps",
    "algorithm.name",
    "algorithm.first_order",
    "model.hidden",
    "model.name",
    "task.shots",
    "task.family",
    "task.dtype",
    "eval.episodes",
    "eval.ways",
    "eval.steps",
    "seed",
    "device",
    "name",
    "bogus.key",
    "train.foo",
    "train",
    "train.iterations.x",
]
SET_VALUES = [
    "1",
    "2",
    "0",
    "-1",
    "1e30",
    "nan",
    "inf",
    "true",
    "false",
    '"skip"',
    '"stop"',
    '"sgd"',
    '"lbfgs"',
    '"protonet"',
    '"maml"',
    '"cpu"',
    '"tpu"',
    "[4]",
    "[]",
    '"x"',
    "[1, 2]",
    "{a = 1}",
    '"' + "y" * 40 + '"',
    "99999999999999999999",
    "",
    '"\\u0000"',
    "'''",
    "[[1]]",
]


#: keys whose valid values scale the work: a huge one would train or evaluate for hours
WORK_KEYS = {"train.iterations", "eval.episodes", "train.meta_batch_size", "model.hidden"}


def _set(value: tuple[str, str]) -> list[str]:
    key, text = value
    if key in WORK_KEYS and text == "99999999999999999999":
        text = "3"
    return ["--set", f"{key}={text}"]


sets = st.lists(st.tuples(st.sampled_from(SET_KEYS), st.sampled_from(SET_VALUES)), max_size=3)
paths = st.sampled_from(PATHS)
numbers = st.sampled_from(NUMBERS)

# each command: its positional arguments and a pool of options (name, value strategy or None)
OPTIONS = {
    "eval": [
        "--episodes",
        "--steps",
        "--shots",
        "--ways",
        "--queries",
        "--seed",
        "--tta-shift",
        "--balance-temperature",
        "--checkpoint",
        "--save-predictions",
        "--protocol",
        "--part",
        "--attack-epsilon",
        "--balanced",
        "--json",
        "--no-progress",
    ],
    "lake-runs": ["--runs", "--steps", "--checkpoint", "--tta-shift", "--json", "--balanced"],
    "combine": ["--steps", "--balanced", "--balance-temperature", "--json"],
    "bench": ["--repeats", "--device", "--threads", "--json", "--workers", "--data-root"],
    "plot": ["--out"],
    "diagnose": ["--max-steps", "--tasks", "--batches", "--checkpoint", "--json"],
    "train": ["--run-dir", "--no-progress"],
}
FLAGS = {"--balanced", "--json", "--no-progress"}
CHOICES = {
    "--checkpoint": ["best", "latest", "worst"],
    "--protocol": ["standard", "x"],
    "--part": ["test", "val", "train", "x"],
    "--device": ["cpu", "tpu", "cuda:9", ""],
}
SIZE_OPTIONS = {"--episodes", "--tasks", "--batches", "--max-steps", "--repeats"}


@st.composite
def calls(draw) -> list[str]:
    command = draw(st.sampled_from([*sorted(OPTIONS), "resume"]))
    argv: list[str]
    if command == "resume":
        argv = ["train", draw(paths)] + [a for s in draw(sets) for a in _set(s)]
    elif command == "train":
        argv = [
            "train",
            draw(
                st.sampled_from(
                    [
                        "fuzz.toml",
                        "bad.toml",
                        "binary.toml",
                        "empty.toml",
                        "missing",
                        "run",
                        "emptydir",
                    ]
                )
            ),
        ]
        argv += ["--no-progress"] if draw(st.booleans()) else []
        if draw(st.integers(0, 5)):
            argv += ["--run-dir", draw(paths)]
        argv += [a for s in draw(sets) for a in _set(s)]
    elif command == "bench":
        argv = ["bench", draw(st.sampled_from(["sinusoid", "omniglot", "sampler", "x", ""]))]
    elif command == "combine":
        argv = ["combine", *draw(st.lists(paths, min_size=0, max_size=2))]
    else:
        argv = [command, draw(paths)]
    options = OPTIONS.get(command, [])
    for option in draw(st.lists(st.sampled_from(options), max_size=3)) if options else []:
        if option in FLAGS:
            argv.append(option)
        elif option in CHOICES:
            argv += [option, draw(st.sampled_from(CHOICES[option]))]
        elif option in ("--save-predictions", "--out", "--runs", "--run-dir", "--data-root"):
            argv += [option, draw(paths)]
        elif option in SIZE_OPTIONS:  # keep the work of valid calls small
            argv += [option, draw(st.sampled_from(["0", "-2", "1", "2", "x", "1e9"]))]
        else:
            argv += [option, draw(numbers)]
    if command == "bench":  # a valid benchmark takes minutes: fuzz its refusals only
        argv += ["--data-root", "missing"] if argv[1] == "sampler" else ["--device", "tpu"]
    if command == "eval" and "--episodes" not in argv:
        argv += ["--episodes", "2"]
    return argv


# -- the check ----------------------------------------------------------------------------


def _resolve(world: World, argv: list[str]) -> list[str]:
    out = []
    for i, a in enumerate(argv):
        previous = argv[i - 1] if i else ""
        is_path = a in PATHS and (
            i == 1
            or previous in ("--save-predictions", "--out", "--runs", "--run-dir", "--data-root")
            or argv[0] == "combine"
        )
        out.append(world.path(a) if is_path else a)
    return out


def check_call(world: World, argv: list[str]) -> str:
    """Run ``argv``; assert the contract; return the outcome ("ok", "error", "usage")."""
    argv = _resolve(world, argv)
    before = world.digest()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse
            code = stop.code if isinstance(stop.code, int) else 2
    text = err.getvalue()
    lines = [
        line
        for line in text.splitlines()
        if line.strip() and "Warning" not in line and "%|" not in line and "it/s]" not in line
    ]
    assert "Traceback" not in text, (argv, text)
    assert "internal error" not in text, (argv, text)
    if code == 0:
        if world.digest() != before:
            world.restore()
        return "ok"
    assert code == 2, (argv, code, text)
    assert lines and lines[-1].startswith("metaloop") and ": error: " in lines[-1], (argv, text)
    usage = lines[0].startswith("usage:")
    if not usage:
        assert len(lines) == 1, (argv, text)
    assert world.digest() == before, ("a failed call changed the run", argv, text)
    return "usage" if usage else "error"


def _run(world: World, argv: list[str], deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        COUNTS["not run (time cap)"] += 1
        return
    started = time.monotonic()
    if os.environ.get("METALOOP_FUZZ_LOG"):
        with open(os.environ["METALOOP_FUZZ_LOG"], "a") as log:
            log.write(f"start {argv}\n")
    outcome = check_call(world, argv)
    if os.environ.get("METALOOP_FUZZ_LOG"):
        with open(os.environ["METALOOP_FUZZ_LOG"], "a") as log:
            log.write(f"{time.monotonic() - started:.2f}s {outcome} {argv}\n")
    COUNTS["tried"] += 1
    COUNTS[f"{argv[0]}: {outcome}"] += 1
    COUNTS[outcome] += 1


_DEADLINE: list[float] = []


@settings(
    max_examples=SUITE_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(argv=calls())
def test_fuzz_the_command_line(world, argv):
    if not _DEADLINE:
        _DEADLINE.append(time.monotonic() + SUITE_SECONDS)
    _run(world, argv, _DEADLINE[0])


@pytest.mark.fuzz
@pytest.mark.skipif(not os.environ.get("METALOOP_FUZZ"), reason="opt-in: METALOOP_FUZZ=1")
@settings(
    max_examples=int(os.environ.get("METALOOP_FUZZ_EXAMPLES", "1500")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(argv=calls())
def test_fuzz_the_command_line_long(world, argv):
    _run(world, argv, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "{root}/binary.toml", "--run-dir", "{root}/x"],
        ["eval", "{root}/garbage.pt"],
        ["combine", "{root}/garbage.pt"],
    ],
)
def test_fuzz_cases_as_real_processes(world, argv):
    """The same contract through ``python -m metaloop`` (the real entry point)."""
    argv = [a.replace("{root}", str(world.root)) for a in argv]
    before = world.digest()
    proc = subprocess.run(
        [sys.executable, "-m", "metaloop", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"metaloop {argv[0]}: error: "), proc.stderr
    assert world.digest() == before
    COUNTS["subprocess"] += 1


def teardown_module() -> None:
    if COUNTS:
        print("\nCLI fuzz:", ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))
