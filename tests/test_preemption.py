"""Preemption under every launcher, with real processes and real signals.

The contract (speechbs/train/preempt.py): SIGTERM or SIGUSR1 to a rank, to its whole
process group (DataLoader workers included) or to the torchrun agent saves the step in
flight and exits with 75; the run resumes to where an uninterrupted run ends. The torchrun
tests start the shipped templates themselves (recipes/launch/multinode.sh, and
slurm.sbatch with stand-ins for srun and scontrol), so their options are what is tested.

Every process runs in a session of its own; each test waits with timeouts, and the
``launch`` fixture kills whatever is left (process groups, and ranks found by the test's
own directory on their command line) however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_pretrain import RECIPE, REPO, _free_port, _metrics, _params, _run, _settings, digits_manifests  # noqa: F401

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
       # `torchrun` in the templates is the one of the Python under test
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
SLOW_STEPS = ["train.log_every=1", "train.checkpoint_every=100000"]


class Job:
    """A command started in a session of its own, output to a file."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.log.name}: still running after {timeout:.0f} s\n{self.output()[-3000:]}")

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)


def _pids_running_in(directory: Path) -> list[int]:
    """Processes with ``directory`` on their command line (ranks run in sessions of their own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(directory) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
    return [p for p in pids if p != os.getpid()]


@pytest.fixture
def launch(tmp_path):
    jobs: list[Job] = []

    def start(cmd: list[str], name: str, env: dict[str, str] | None = None) -> Job:
        jobs.append(Job(cmd, tmp_path / f"{name}.log", env or ENV))
        return jobs[-1]

    yield start
    for job in jobs:
        job.signal_group(signal.SIGKILL)
    for pid in _pids_running_in(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pretrain(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "speechbs", "pretrain", str(RECIPE), *args]


def _num_rows(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count('"kind": "train"') if path.is_file() else 0


def _wait_rows(job: Job, run_dir: Path, num_rows: int, timeout: float = 240) -> int:
    """Wait until ``num_rows`` steps are logged; return how many are (a step may have ended meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _num_rows(run_dir)
        if rows >= num_rows:
            return rows
        if job.proc.poll() is not None:
            pytest.fail(f"ended with {job.proc.returncode} before step {num_rows}\n{job.output()[-3000:]}")
        time.sleep(0.01)
    pytest.fail(f"no step {num_rows} after {timeout:.0f} s\n{job.output()[-3000:]}")


def _signal_at_row(job: Job, run_dir: Path, num_rows: int, send, settle_s: float = 0.0) -> tuple[int, int]:
    """``send()`` the signal once ``num_rows`` steps are logged; the rows logged before it and ``settle_s`` after."""
    before = _wait_rows(job, run_dir, num_rows)
    send()
    time.sleep(settle_s)
    return before, _num_rows(run_dir)


def _saved_step(run_dir: Path) -> int:
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    return torch.load(run_dir / "checkpoints" / index["latest"], weights_only=True)["step"]


def _assert_stopped_at_the_step_in_flight(run_dir: Path, rows: tuple[int, int], output: str) -> int:
    """The checkpoint is the step that was computing when the signal came, and nothing ran after it.

    ``rows``: steps logged just before the signal and just after it was sent. The flag is read
    when a step packs its all-reduce, a few ms before its metrics row; only when that row was
    already out may the step after it be the one saved. (The exact boundary is tested in process.)
    """
    assert (run_dir / "checkpoints" / "index.json").is_file(), f"no checkpoint\n{output[-3000:]}"
    saved = _saved_step(run_dir)
    before, after = rows
    assert before + 1 <= saved <= after + 1, (saved, rows, output[-2000:])
    assert _num_rows(run_dir) == saved and f"at step {saved}; checkpoint saved, exit 75" in output
    return saved


@pytest.mark.slow
def test_sigterm_saves_the_step_in_flight_and_the_resume_ends_like_an_uninterrupted_run(
        digits_manifests, tmp_path, launch):
    train, valid = digits_manifests
    num_steps = 10
    cut = _settings(train, valid, tmp_path, "cut", num_steps, *SLOW_STEPS)
    job = launch(_pretrain(cut), "cut")
    rows = _signal_at_row(job, tmp_path / "cut", 2, lambda: job.proc.send_signal(signal.SIGTERM))
    assert job.wait(120) == 75, job.output()[-2000:]
    saved = _assert_stopped_at_the_step_in_flight(tmp_path / "cut", rows, job.output())

    result = _run(cut)  # the same command again resumes
    assert "resumed from" in result.stdout and f"at step {saved}" in result.stdout
    _run(_settings(train, valid, tmp_path, "whole", num_steps, *SLOW_STEPS))
    cut_rows, whole_rows = _metrics(tmp_path / "cut"), _metrics(tmp_path / "whole")
    records = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, num_steps + 1))  # each step once
    assert [cut_rows[k]["loss"] for k in cut_rows] == [whole_rows[k]["loss"] for k in whole_rows]
    a, b = _params(tmp_path / "cut", num_steps), _params(tmp_path / "whole", num_steps)
    assert all(torch.equal(a[k], b[k]) for k in b)  # one process, same hardware: bit-identical


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_data_workers_saves_and_exits_75(digits_manifests, tmp_path, launch):
    """docker stop, Kubernetes and scancel signal every process: the workers must not die of it."""
    train, valid = digits_manifests
    args = _settings(train, valid, tmp_path, "group", 1000, *SLOW_STEPS, "data.num_workers=2")
    job = launch(_pretrain(args), "group")
    rows = _signal_at_row(job, tmp_path / "group", 2, lambda: job.signal_group(signal.SIGTERM))
    assert job.wait(120) == 75, job.output()[-2000:]
    assert "killed by signal" not in job.output()
    _assert_stopped_at_the_step_in_flight(tmp_path / "group", rows, job.output())
    assert _pids_running_in(tmp_path) == []  # the workers were shut down by their rank


def test_a_signal_during_step_k_saves_step_k(digits_manifests, tmp_path):
    """In process, deterministic: a real SIGUSR1 sent from inside step 3's forward stops after step 3;
    one sent after step 3's all-reduce (from the task's step_logs, which the loop calls when it logs the
    step) stops after step 4."""
    from speechbs.configio import load_config
    from speechbs.dist import DistContext
    from speechbs.tasks.ssl import SSLTask
    from speechbs.train.loop import EXIT_REQUEUE, train

    train_tsv, valid = digits_manifests
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, when, expected in (("in_step", "forward", 3), ("after_step", "step_logs", 4)):
            sets = _settings(train_tsv, valid, tmp_path, name, 1000, *SLOW_STEPS)
            cfg = load_config(RECIPE, [s for s in sets if s != "--set"])

            class SignallingTask(SSLTask):
                signal_in = when

                def forward(self, m, mb, *, step, **kw):
                    if self.signal_in == "forward" and step == 2:  # 0-based: the third step
                        os.kill(os.getpid(), signal.SIGUSR1)
                    return super().forward(m, mb, step=step, **kw)

                def step_logs(self, step):  # step: steps taken, after the all-reduce
                    if self.signal_in == "step_logs" and step == 3:
                        os.kill(os.getpid(), signal.SIGUSR1)
                    return super().step_logs(step)

            before = signal.getsignal(signal.SIGUSR1)
            with pytest.raises(SystemExit) as stopped:
                train(cfg, SignallingTask, DistContext())
            assert stopped.value.code == EXIT_REQUEUE
            assert _saved_step(tmp_path / name) == expected and _num_rows(tmp_path / name) == expected
            assert signal.getsignal(signal.SIGUSR1) is before  # the loop put the old handler back
    finally:
        torch.set_num_threads(threads)


def _stand_ins(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """srun and scontrol for slurm.sbatch on a machine without SLURM; returns (env, scontrol's log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun runs its command in place: a signal to "srun" reaches torchrun, as srun forwards it.
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/bin/bash\ncase $1 in\n  show) echo 127.0.0.1 ;;\n'
                                      '  requeue) echo "requeue $2" >> "$SCONTROL_LOG" ;;\nesac\n')
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "scontrol.log"
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}", "SCONTROL_LOG": str(log),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node01", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_GPUS_ON_NODE": "2", "RDZV_PORT": str(_free_port())}
    return env, log


def _torchrun_stopped_cleanly(run_dir: Path, rows: tuple[int, int], output: str, signame: str) -> None:
    _assert_stopped_at_the_step_in_flight(run_dir, rows, output)
    assert f"stopped by {signame}" in output  # rank 0 got the signal from torchrun, not a kill
    assert "forcefully exiting via" not in output  # both ranks exited by themselves, no SIGKILL
    assert "does not pass SIGUSR1" not in output


@pytest.mark.dist
@pytest.mark.slow
def test_slurm_template_sigusr1_reaches_every_rank_through_torchrun_and_requeues(digits_manifests, tmp_path, launch):
    """SLURM's --signal=B:USR1 goes to the batch script; it passes it to srun, srun to torchrun."""
    train, valid = digits_manifests
    env, scontrol_log = _stand_ins(tmp_path)
    args = _settings(train, valid, tmp_path, "slurm", 1000, *SLOW_STEPS)
    job = launch(["bash", str(REPO / "recipes" / "launch" / "slurm.sbatch"), str(RECIPE), *args], "slurm", env)
    # To the batch script only, as --signal=B:USR1 does; the ranks get it some ms later.
    rows = _signal_at_row(job, tmp_path / "slurm", 2, lambda: job.proc.send_signal(signal.SIGUSR1), settle_s=0.2)
    assert job.wait(90) == 0, job.output()[-3000:]  # 90 s < the template's 100 s before torchrun's SIGKILL
    output = job.output()
    _torchrun_stopped_cleanly(tmp_path / "slurm", rows, output, "SIGUSR1")
    assert "srun (torchrun) exited with status 1" in output  # torchrun's status after passing a signal on
    assert scontrol_log.read_text() == "requeue 4242\n"
    time.sleep(1)
    assert _pids_running_in(tmp_path) == []  # no orphaned rank trains on


@pytest.mark.dist
@pytest.mark.slow
def test_multinode_template_sigterm_to_torchrun_reaches_every_rank(digits_manifests, tmp_path, launch):
    """torchrun signals each rank's process group, so the ranks' DataLoader workers get it too."""
    train, valid = digits_manifests
    env = {**ENV, "HEAD": "127.0.0.1", "NUM_NODES": "1", "GPUS_PER_NODE": "2", "RDZV_PORT": str(_free_port()),
           "RUN_ID": tmp_path.name}
    args = _settings(train, valid, tmp_path, "multi", 1000, *SLOW_STEPS, "data.num_workers=1")
    job = launch(["bash", str(REPO / "recipes" / "launch" / "multinode.sh"), str(RECIPE), *args], "multi", env)
    # The script execs torchrun: this is the agent, which passes the signal on.
    rows = _signal_at_row(job, tmp_path / "multi", 2, lambda: job.proc.send_signal(signal.SIGTERM), settle_s=0.2)
    assert job.wait(60) == 1, job.output()[-3000:]  # torchrun exits 1 after passing a signal on (30 s < SIGKILL)
    _torchrun_stopped_cleanly(tmp_path / "multi", rows, job.output(), "SIGTERM")
    time.sleep(1)
    assert _pids_running_in(tmp_path) == []


def test_rank_0_warns_under_a_torchrun_in_slurm_that_would_die_of_sigusr1():
    from speechbs.train.preempt import TORCHRUN_SIGNALS, torchrun_signal_warning

    job = {"TORCHELASTIC_RUN_ID": "x", "SLURM_JOB_ID": "1"}
    assert "--signals-to-handle=" in torchrun_signal_warning({**job, "TORCHELASTIC_SIGNALS_TO_HANDLE":
                                                              "SIGTERM,SIGINT,SIGHUP,SIGQUIT"})
    assert torchrun_signal_warning(job)  # a torchrun older than the option passes SIGUSR1 on never
    assert torchrun_signal_warning({**job, "TORCHELASTIC_SIGNALS_TO_HANDLE": TORCHRUN_SIGNALS}) == ""
    assert torchrun_signal_warning({"TORCHELASTIC_RUN_ID": "x"}) == ""  # no SLURM: no time-limit SIGUSR1


def test_a_process_that_leaves_its_step_iterator_open_still_exits(digits_manifests, tmp_path):
    """Workers ignore SIGTERM, and multiprocessing's exit handler SIGTERMs them and joins without a
    timeout: an iterator kept alive past exit (here by a reference cycle, as a traceback can) must
    have its workers shut down first, or the process never ends."""
    train, _ = digits_manifests
    code = (f"from speechbs.configio import load_config\nfrom speechbs.data.manifest import read_manifest\n"
            f"from speechbs.data.loader import build_planner, iter_steps\n"
            f"cfg = load_config({str(RECIPE)!r}, [])\nmanifest = read_manifest({str(train)!r})\n"
            f"steps = iter_steps(build_planner(manifest, cfg.batch, cfg.audio, 0), manifest, cfg.audio, rank=0, "
            f"world_size=1, num_workers=2)\nnext(steps)\ncycle = [steps]\ncycle.append(cycle)\nprint('exiting')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=120, start_new_session=True)
    assert result.returncode == 0 and "exiting" in result.stdout, result.stderr[-2000:]
