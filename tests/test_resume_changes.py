"""Planned changes on resume, end to end: `speechbs pretrain` with --allow-change and --restart-from.

A resume with another learning rate is refused unless asked for; asked for, it goes on from the
checkpoint with Adam's moments and the new LR, and says so in resumes.jsonl. A restart from a
named earlier checkpoint ends where a run resumed from that checkpoint ends, keeps the abandoned
branch's files and leaves metrics.jsonl unambiguous. A diverged run's error names a command that,
run as printed, restarts it from a checkpoint that still trained finitely.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_pretrain import RECIPE, REPO, _metrics, _params, _run, _settings
from test_pretrain import digits_manifests  # noqa: F401 - the fixture

# A constant LR after no warm-up: every logged lr is the peak, and a longer run has the same schedule.
CONSTANT = ["schedule.kind=constant", "schedule.warmup_steps=0"]


def _fails(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "speechbs", "pretrain", str(RECIPE), *args], capture_output=True,
                            text=True, timeout=240, env=env, cwd=REPO)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def _resumes(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("speechbs pretrain: error:")]


@pytest.mark.slow
def test_a_changed_lr_needs_the_option_and_goes_on_with_the_moments(digits_manifests, tmp_path):  # noqa: F811
    train, valid = digits_manifests
    run_dir = tmp_path / "lr"
    _run(_settings(train, valid, tmp_path, "lr", 4, *CONSTANT, "optim.lr=2e-3"))
    more = _settings(train, valid, tmp_path, "lr", 6, *CONSTANT, "optim.lr=5e-4")
    refused = _fails(more)
    [line] = _error_lines(refused)
    assert "optim.lr 0.002 -> 0.0005" in line and "add --allow-change optim.lr" in line
    assert not (run_dir / "resumes.jsonl").exists() and "lr = 0.002" in (run_dir / "config.toml").read_text()

    result = _run([*more, "--allow-change", "optim.lr"])
    assert "at step 4" in result.stdout and "optim.lr 0.002 -> 0.0005" in result.stdout
    rows = _metrics(run_dir)
    assert [rows[k]["lr"] for k in range(1, 7)] == [2e-3] * 4 + [5e-4] * 2  # the new peak from step 5 on
    [record] = _resumes(run_dir)
    assert record["step"] == 4 and record["checkpoint"] == "checkpoints/step_00000004.pt"
    assert record["changes"] == {"optim.lr": [2e-3, 5e-4], "train.num_steps": [4, 6]}
    assert record["config_prev"] == "config.prev-1.toml" and not record["restart"]
    assert "lr = 0.002" in (run_dir / "config.prev-1.toml").read_text()
    assert "lr = 0.0005" in (run_dir / "config.toml").read_text()
    # Adam's moments went on: its step count is the run's, not restarted at the change.
    ckpt = torch.load(run_dir / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert {float(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {6.0}
    # Going on again with the new value needs no option: it is the run's config now.
    _run([*_settings(train, valid, tmp_path, "lr", 7, *CONSTANT, "optim.lr=5e-4")])
    assert len(_resumes(run_dir)) == 2 and _resumes(run_dir)[1]["changes"] == {"train.num_steps": [6, 7]}


@pytest.mark.slow
def test_a_restart_from_a_named_checkpoint_equals_a_resume_from_it(digits_manifests, tmp_path):  # noqa: F811
    from speechbs.report.collect import _read_metrics

    train, valid = digits_manifests
    first = _settings(train, valid, tmp_path, "restarted", 6, *CONSTANT, "optim.lr=2e-3")
    _run(first)
    old = _params(tmp_path / "restarted", 6)
    lower = [*_settings(train, valid, tmp_path, "restarted", 6, *CONSTANT, "optim.lr=1e-3"),
             "--allow-change", "optim.lr", "--restart-from", "checkpoints/step_00000002.pt"]
    result = _run(lower)
    assert "restarted at step 2" in result.stdout
    # The same as a run that stopped after its checkpoint of step 2 and was resumed with the lower LR.
    _run(_settings(train, valid, tmp_path, "resumed", 6, *CONSTANT, "optim.lr=2e-3"))
    for later in (4, 6):
        (tmp_path / "resumed" / "checkpoints" / f"step_{later:08d}.pt").unlink()
    _run([*_settings(train, valid, tmp_path, "resumed", 6, *CONSTANT, "optim.lr=1e-3"), "--allow-change", "optim.lr"])
    restarted, resumed = _params(tmp_path / "restarted", 6), _params(tmp_path / "resumed", 6)
    assert all(torch.equal(restarted[k], resumed[k]) for k in resumed)
    assert not all(torch.equal(restarted[k], old[k]) for k in old)

    # Nothing was deleted: the old branch's checkpoints are set aside, and the restart is recorded.
    run_dir = tmp_path / "restarted"
    aside = run_dir / "checkpoints" / "abandoned-1"
    assert sorted(p.name for p in aside.glob("step_*.pt")) == ["step_00000004.pt", "step_00000006.pt"]
    assert all(torch.equal(_params_in(aside / "step_00000006.pt")[k], old[k]) for k in old)
    [record] = _resumes(run_dir)
    assert record["restart"] and record["step"] == 2 and record["set_aside"] == "checkpoints/abandoned-1"
    assert record["changes"] == {"optim.lr": [2e-3, 1e-3]}
    # The same command again (a requeued job) does not restart a second time.
    again = _run(lower)
    assert "done at" in again.stdout and "already complete" in again.stdout
    assert not (run_dir / "checkpoints" / "abandoned-2").exists()

    # Another restart from step 2 that stops at step 4: the steps 5 and 6 of the branch it left are gone.
    _run([*_settings(train, valid, tmp_path, "restarted", 4, *CONSTANT, "optim.lr=5e-4"),
          "--allow-change", "optim.lr", "--restart-from", "2"])
    rows, _valid = _read_metrics(run_dir / "metrics.jsonl", "restarted", [])
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["lr"] for r in rows] == [2e-3, 2e-3, 5e-4, 5e-4]


def _params_in(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_the_divergence_error_names_a_command_that_works(digits_manifests, tmp_path):  # noqa: F811
    """LR 10 gives an infinite gradient at step 3; its tenth, from the checkpoint of step 1, trains on."""
    train, valid = digits_manifests
    args = _settings(train, valid, tmp_path, "diverged", 6, "schedule.kind=constant", "schedule.warmup_steps=2",
                     "optim.lr=10", "train.checkpoint_every=1", "train.max_nonfinite_in_row=2")
    result = _fails(args)
    [line] = _error_lines(result)
    assert "The run has diverged: restart from step 1 (" in line
    lines = result.stderr.splitlines()
    command = lines[lines.index(line) + 1]
    assert command.startswith("  ") and "--set optim.lr=1 --allow-change optim.lr --restart-from 1" in command
    assert "step_00000002.pt" in str(sorted(p.name for p in (tmp_path / "diverged" / "checkpoints").iterdir()))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    rerun = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = _metrics(tmp_path / "diverged")
    assert sorted(rows) == list(range(1, 7)) and all(isinstance(rows[k]["loss"], float) for k in rows)
    assert rows[6]["lr"] == 1.0 and rows[6]["num_skipped"] == 0
    [record] = _resumes(tmp_path / "diverged")
    assert record["restart"] and record["step"] == 1 and record["changes"] == {"optim.lr": [10.0, 1.0]}
    assert (tmp_path / "diverged" / "checkpoints" / "abandoned-1" / "step_00000002.pt").is_file()
