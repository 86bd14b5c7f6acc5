"""The run-directory lock: exactly one of two processes racing for it wins, every time; a
killed holder never blocks; re-entrant within a process; one-line messages."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys

import pytest

from metaloop.train import lock as lock_module
from metaloop.train.lock import LOCK_NAME, RunLockedError, acquire_run_lock

ROUNDS = 100


def _racer(root: str, rounds: int, barrier, results) -> None:
    """Each round: wait for the other racer, grab the round's lock, report, wait until both
    reported, release."""
    for r in range(rounds):
        run_dir = os.path.join(root, str(r))
        barrier.wait()
        try:
            release = acquire_run_lock(run_dir)
            won = True
        except RunLockedError:
            release, won = None, False
        results.put((r, os.getpid(), won))
        barrier.wait()  # the winner holds the lock until the loser has tried
        if release is not None:
            release()


def test_two_processes_racing_for_the_lock_never_both_win(tmp_path):
    """100 rounds of two processes released by a barrier at the same instant (the previous
    read-then-write lock let both win in 37 of 100 such rounds)."""
    for r in range(ROUNDS):
        (tmp_path / str(r)).mkdir()
    ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_racer, args=(str(tmp_path), ROUNDS, barrier, results)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    outcomes: dict[int, list[bool]] = {}
    for _ in range(2 * ROUNDS):
        r, _, won = results.get(timeout=60)
        outcomes.setdefault(r, []).append(won)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    winners = [sum(o) for o in outcomes.values()]
    both = sum(w == 2 for w in winners)
    assert len(winners) == ROUNDS and all(w == 1 for w in winners), (
        f"{both} of {ROUNDS} rounds had two winners, {winners.count(0)} none"
    )
    assert not any((tmp_path / str(r) / LOCK_NAME).exists() for r in range(ROUNDS))


def _holder(run_dir) -> subprocess.Popen:
    """A process that takes the lock of ``run_dir``, says so, and sleeps."""
    script = (  # lock.py alone, without importing torch through the package
        "import importlib.util, sys, time\n"
        "spec = importlib.util.spec_from_file_location('lock', sys.argv[2])\n"
        "lock = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(lock)\n"
        "lock.acquire_run_lock(sys.argv[1])\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(run_dir), lock_module.__file__],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_holder_refuses_and_a_killed_one_never_blocks(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as info:
            acquire_run_lock(tmp_path)
        text = str(info.value)
        assert "\n" not in text and f"process {holder.pid}" in text
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).read_text() == str(holder.pid)  # left behind by the kill
    release = acquire_run_lock(tmp_path)  # the kernel dropped the dead holder's lock
    assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
    release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_reentrant_within_a_process_and_released_by_the_last_release(tmp_path):
    first = acquire_run_lock(tmp_path)
    second = acquire_run_lock(tmp_path)
    second()
    second()  # releasing twice is harmless
    assert (tmp_path / LOCK_NAME).exists()
    first()
    assert not (tmp_path / LOCK_NAME).exists()
    acquire_run_lock(tmp_path)()


def test_a_pid_only_lock_of_a_live_process_is_respected(tmp_path):
    """What an older metaloop wrote: a PID and no flock."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(str(sleeper.pid))
        with pytest.raises(RunLockedError, match=f"process {sleeper.pid}"):
            acquire_run_lock(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    acquire_run_lock(tmp_path)()


def test_an_unwritable_run_directory_is_a_one_line_error(tmp_path, monkeypatch):
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(RunLockedError, match=r"cannot create the run lock .*Permission denied"):
        acquire_run_lock(tmp_path)
