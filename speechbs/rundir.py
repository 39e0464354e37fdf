"""The run directory: ``<output_dir>/<name>/`` with config, environment, metrics and checkpoints.

Pointing a command at an existing run directory resumes it, provided the
config differs at most in how long or how often it trains
(:data:`RESUMABLE_CHANGES`), or in an optimizer setting that the command
explicitly allows to change (:data:`PLANNED_CHANGES`, ``--allow-change KEY``:
see :mod:`speechbs.train.resume`); any other difference is refused with a
message naming the fields, because mixing two experiments in one directory
would make its curves meaningless. When the config changes, the config.toml it
replaces is kept as ``config.prev-<n>.toml``, where n is the number of the
resume recorded in ``resumes.jsonl`` (its line number).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

from speechbs import __version__
from speechbs.configio import describe, load_config, save_config
from speechbs.atomic import write_text
from speechbs.errors import ConfigError
from speechbs.runlock import lock_run_dir


# Fields that may differ when a run is resumed: they change how long or how often, not what is learned.
# The train.compile fields are execution settings like batch.max_device_seconds: they change the
# kernels and, through the padded lengths, how a step is cut into micro-batches, never which audio
# forms a step or what the step computes beyond float rounding (and dropout's random draws, which
# inductor's kernels make their own way). Checkpoints are the same dict either way
# (speechbs/train/compile.py), so a run started compiled may go on eager, as after a compiler bug.
RESUMABLE_CHANGES = frozenset({
    "train.num_steps", "train.log_every", "train.valid_every", "train.checkpoint_every",
    "train.keep_last", "train.milestone_steps", "train.milestone_hours", "data.num_workers",
    "data.valid_manifest", "batch.max_device_seconds",
    "train.compile", "train.compile_num_lengths", "train.compile_backend",
    "train.max_nonfinite_in_row", "train.collective_timeout_s",
})

# Fields a resume may change only when the command names them (--allow-change KEY), because they
# change what is learned from the resumed step on. Each is read afresh at every step, and the
# optimizer state (Adam's moments, the step count) means the same under the new value:
# the peak LR and its rule, the LR schedule (a pure function of the step: the new one applies from
# the resumed step, whatever step the run is at), gradient clipping (applied by the loop), AdamW's
# weight decay and epsilon (written into the optimizer after its state is loaded), and the
# precision (the weights and moments are fp32 in any precision; an fp16 loss scale is kept only in
# fp16). Never batch, data, audio, model or seed fields: the batch plan and the weights were made
# for them. Nor optim.betas (the moments are averages under the old betas, which Adam's bias
# correction would mistake for the new ones'), nor the Gumbel temperature (the quantizer's objective).
PLANNED_CHANGES = frozenset({
    "optim.lr", "optim.lr_rule", "optim.reference_seconds", "optim.clip_norm", "optim.weight_decay",
    "optim.eps", "schedule.kind", "schedule.warmup_steps", "schedule.warmup_fraction", "schedule.power",
    "schedule.end_lr_scale", "schedule.hold_steps", "schedule.init_lr_scale", "schedule.cycle_steps",
    "schedule.cycle_min_scale", "train.precision",
})
RESUMES = "resumes.jsonl"
"""One JSON line per resume: time, step, checkpoint, the config's old -> new values, a restart's set-aside files."""


def config_differences(old: Any, new: Any) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a, b = _values(old), _values(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def run_dir_of(cfg: Any) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def prepare_run_dir(cfg: Any, *, world_size: int, is_main: bool, allow_changes: Collection[str] = (),
                    broadcast: Callable[[Any], Any] | None = None) -> Path:
    """Create (or check, when resuming) the run directory; rank 0 locks it first and writes the files.

    ``allow_changes``: keys of :data:`PLANNED_CHANGES` that may differ from the run's config.toml.
    ``broadcast`` (``DistContext.broadcast_object``) tells every rank whether rank 0 got the lock.
    """
    run_dir = run_dir_of(cfg)
    lock_run_dir(run_dir, is_main=is_main, broadcast=broadcast)  # one run per directory (speechbs/runlock.py)
    existing = run_dir / "config.toml"
    differences = []
    if existing.is_file():
        old = load_config(existing)
        differences = config_differences(old, cfg)
        _check_resumable(run_dir, old, cfg, differences, allow_changes)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if differences:
            previous = previous_config_path(run_dir)
            if not previous.is_file():  # kept already by a launch that stopped before recording its resume
                write_text(previous, existing.read_text(encoding="utf-8"))
        save_config(cfg, run_dir)
        write_env(run_dir, world_size)
    return run_dir


def _check_resumable(run_dir: Path, old: Any, new: Any, differences: list[str], allow: Collection[str]) -> None:
    changed = [k for k in differences if k not in RESUMABLE_CHANGES and k not in PLANNED_CHANGES]
    if changed:
        raise ConfigError(
            f"run directory {run_dir} holds a run with another config: {', '.join(changed)} differ. "
            f"Choose a new --set run.name=..., or delete the directory to start over. Only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change when a run is resumed, and "
            f"{', '.join(sorted(PLANNED_CHANGES))} with --allow-change KEY.")
    planned = [k for k in differences if k in PLANNED_CHANGES and k not in allow]
    if planned:
        a, b = _values(old), _values(new)
        shown = ", ".join(f"{k} {a[k]!r} -> {b[k]!r}" for k in planned)
        raise ConfigError(
            f"run directory {run_dir} was trained with other settings ({shown}); to resume it "
            f"with the new ones from its latest checkpoint, add {' '.join(f'--allow-change {k}' for k in planned)} "
            f"(recorded in {RESUMES}), or give the run's values to go on unchanged")


def _values(cfg: Any) -> dict[str, Any]:
    return {key: value for key, value, _doc in describe(cfg)}


def previous_config_path(run_dir: Path) -> Path:
    """Where the config.toml that the next recorded resume replaces is kept: ``config.prev-<n>.toml``."""
    path = run_dir / RESUMES
    num_resumes = len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0
    return run_dir / f"config.prev-{num_resumes + 1}.toml"


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a run or a measurement depends on: versions, commit, platform, threads (and ``device``'s name)."""
    env = {
        "speechbs": __version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
    }
    if device is not None:
        device = torch.device(device)
        env["device"] = device.type
        env["device_name"] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                              else platform.processor() or platform.machine())
    return env


def write_env(run_dir: Path, world_size: int) -> None:
    """Versions, git commit, world size and devices, appended per launch (a resume is a new launch)."""
    env = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **environment(),
        "host": socket.gethostname(),
        "world_size": world_size,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"],
        "argv": sys.argv,
    }
    path = run_dir / "env.json"
    launches = json.loads(path.read_text()) if path.is_file() else []
    launches.append(env)
    write_text(path, json.dumps(launches, indent=1) + "\n")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
