"""SIGKILL a real ``metaloop train`` process mid-run, resume it from its run directory, and
compare with an uninterrupted run of the same config: same weights, optimizer and RNG
states (bit for bit: same machine, one thread) and the same metrics log (but ``seconds``).

The kill moment is random (after the checkpoint of a random iteration has appeared, plus
a random delay); the seed is printed, and ``METALOOP_KILL_SEED`` replays one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metaloop.cli.main import main
from metaloop.train import load_checkpoint, load_latest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "sinusoid-maml.toml"
ITERATIONS = 150
SETTINGS = [
    f"train.iterations={ITERATIONS}",
    "train.meta_batch_size=4",
    "train.checkpoint_every=5",
    "train.log_every=3",
    "train.validate_every=10",
    "train.validation_tasks=8",
    "train.threads=1",
    "task.shots=5",
    "task.queries=5",
    "model.hidden=[20, 20]",
]


def overrides() -> list[str]:
    return [arg for s in SETTINGS for arg in ("--set", s)]


def spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "metaloop", "train", *args, "--no-progress"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after_checkpoint(proc: subprocess.Popen, run_dir: Path, target: int, delay: float) -> int:
    """Wait for a checkpoint at or past iteration ``target``, sleep ``delay`` (a fraction of
    an iteration or a few), SIGKILL; return the iteration a resume will start from."""
    latest, seen, iteration = run_dir / "latest.pt", None, -1
    deadline = time.monotonic() + 120
    while iteration < target:
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared within 120 s")
        time.sleep(0.005)
        try:
            stamp = latest.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        if stamp != seen:
            seen = stamp
            try:
                iteration = load_latest(run_dir)["iteration"]
            except Exception:
                seen = None
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill"
    return load_latest(run_dir)["iteration"]


def records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        r.pop("seconds", None)
        out.append(r)
    return out


@pytest.mark.slow
def test_sigkill_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    seed = int(os.environ.get("METALOOP_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    target, delay = rng.randrange(5, 60), rng.uniform(0.0, 0.1)
    run = tmp_path / "killed"
    torch.set_num_threads(1)

    # a real `python -m metaloop train` process, SIGKILLed at a random moment after the
    # checkpoint of iteration >= target; then `metaloop train RUN_DIR` resumes it
    proc = spawn(str(CONFIG), "--run-dir", str(run), *overrides())
    resumed_from = kill_after_checkpoint(proc, run, target, delay)
    assert target <= resumed_from < ITERATIONS
    assert main(["train", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["iterations"] == ITERATIONS

    # the uninterrupted reference (same code, one thread)
    ref = tmp_path / "reference"
    assert main(["train", str(CONFIG), "--run-dir", str(ref), "--no-progress", *overrides()]) == 0
    capsys.readouterr()

    with capsys.disabled():
        print(
            f"\nMETALOOP_KILL_SEED={seed}: killed {delay:.3f}s after the checkpoint of "
            f"iteration >= {target}; resumed from iteration {resumed_from}"
        )
    a, b = load_checkpoint(ref / "latest.pt"), load_checkpoint(run / "latest.pt")
    assert a["iteration"] == b["iteration"] == ITERATIONS
    assert a["learner"].keys() == b["learner"].keys()
    for k in a["learner"]:
        assert torch.equal(a["learner"][k], b["learner"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in pa:
            assert torch.equal(pa[k], pb[k]), k
    assert torch.equal(a["generator"], b["generator"])
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert records(run) == records(ref)
    best_a, best_b = load_checkpoint(ref / "best.pt"), load_checkpoint(run / "best.pt")
    assert best_a["iteration"] == best_b["iteration"]
    assert all(torch.equal(best_a["learner"][k], best_b["learner"][k]) for k in best_a["learner"])
    assert not list(run.glob(".*.tmp")), "a temporary file was left behind"
