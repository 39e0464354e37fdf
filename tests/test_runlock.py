"""One run per directory: the second run in a directory stops at once with one line, the first is untouched.

Without the lock two identical commands wrote into one directory: one crashed renaming a
temporary checkpoint the other had moved, and metrics.jsonl held 15 rows for 8 steps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechbs.runlock import LOCK_NAME, RunDirLockedError, acquire, lock_run_dir
from test_pretrain import RECIPE, REPO, _free_port, _settings, digits_manifests  # noqa: F401

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
HOLD = "import sys; from pathlib import Path; from speechbs.runlock import acquire; acquire(Path(sys.argv[1])); " \
       "print('held', flush=True); sys.stdin.read()"


def _holder(run_dir: Path) -> subprocess.Popen:
    """A process that holds ``run_dir``'s lock until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def _can_lock(run_dir: Path) -> bool:
    """Whether a fresh process gets the lock (it lets go when it exits)."""
    code = "import sys; from pathlib import Path; from speechbs.runlock import acquire; acquire(Path(sys.argv[1]))"
    return subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=REPO, env=ENV, timeout=60).returncode == 0


def test_a_held_directory_is_refused_with_the_holders_pid_and_host(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        with pytest.raises(RunDirLockedError) as refused:
            acquire(run_dir)
        message = str(refused.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message and "--set run.name=" in message
        assert f"kill {holder.pid}" in message and "\n" not in message
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        holder.stdin.close()
        holder.wait(30)
    acquire(run_dir)  # free once the holder has exited
    acquire(run_dir)  # and a process may take its own lock again (in-process callers train twice)
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    holder.kill()  # SIGKILL: no cleanup runs
    holder.wait(30)
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == holder.pid  # the file stays ...
    assert _can_lock(run_dir)  # ... and blocks nothing


def test_ranks_other_than_0_share_rank_0s_outcome(tmp_path):
    """Under torchrun only rank 0 locks; the others raise rank 0's error instead of going on."""
    lock_run_dir(tmp_path / "free", is_main=False, broadcast=lambda error: None)
    assert not (tmp_path / "free").exists()  # another rank creates nothing
    with pytest.raises(RunDirLockedError, match="in use by pid 123"):
        lock_run_dir(tmp_path / "held", is_main=False, broadcast=lambda error: "run directory x is in use by pid 123")


def test_a_forked_child_does_not_keep_the_lock_of_its_parent(tmp_path):
    """DataLoader workers are forked; one that outlives its killed rank for a few seconds must not hold the lock."""
    run_dir = tmp_path / "run"
    code = ("import os, sys, time; from pathlib import Path; from speechbs.runlock import acquire; "
            "acquire(Path(sys.argv[1]))\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\n"
            "print('forked', flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=REPO, env=ENV, text=True,
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert parent.stdout.readline() == "forked\n"
        assert not _can_lock(run_dir)  # the parent holds it
        parent.kill()
        parent.wait(30)
        assert _can_lock(run_dir)  # its child, still alive, does not
    finally:
        os.killpg(parent.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_second_run_in_the_same_directory_fails_at_once_and_the_first_finishes_alone(digits_manifests, tmp_path):
    train, valid = digits_manifests
    num_steps = 24  # long enough to outlast the other two commands' start (torch's import)
    args = _settings(train, valid, tmp_path, "one", num_steps, "train.log_every=1")
    cmd = [sys.executable, "-m", "speechbs", "pretrain", str(RECIPE)]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([*cmd, *args], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        metrics = tmp_path / "one" / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and metrics.read_text()) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        # The same command, and one with other settings (which would otherwise be told the config differs).
        # (The batch planner's warning about this tiny training set, printed before, is not the refusal.)
        quiet = {**ENV, "PYTHONWARNINGS": "ignore::UserWarning"}
        seconds = [subprocess.Popen([*cmd, *a], cwd=REPO, env=quiet, text=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE) for a in (args, [*args, "--set", "batch.seconds=6"])]
        for second in seconds:
            out, err = second.communicate(timeout=120)
            assert second.returncode == 2, out[-2000:] + err[-2000:]
            assert len(err.splitlines()) == 1, err
            assert err.startswith("speechbs pretrain: error: run directory ")
            assert f"in use by pid {first.pid} on {socket.gethostname()}" in err
        assert first.poll() is None  # the refusals came while the first was training
        assert first.wait(240) == 0, (tmp_path / "first.log").read_text()[-2000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, num_steps + 1))  # one row per step


@pytest.mark.dist
@pytest.mark.slow
def test_under_torchrun_no_rank_goes_on_when_rank_0_cannot_lock(digits_manifests, tmp_path):
    train, valid = digits_manifests
    holder = _holder(tmp_path / "held")
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "-m", "speechbs", "pretrain", str(RECIPE),
               *_settings(train, valid, tmp_path, "held", 4)]
        result = subprocess.run(cmd, cwd=REPO, env=ENV, text=True, capture_output=True, timeout=180,
                                start_new_session=True)
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert result.returncode != 0
    assert result.stderr.count(f"error: run directory {tmp_path / 'held'} is in use by pid {holder.pid}") == 2
    assert sorted(p.name for p in (tmp_path / "held").iterdir()) == [LOCK_NAME]  # nothing was written
