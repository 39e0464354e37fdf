"""The run directory: ``<output_dir>/<name>/`` with config, environment, metrics and checkpoints.

Pointing a command at an existing run directory resumes it, provided the
config differs at most in how long or how often it trains
(:data:`RESUMABLE_CHANGES`); any other difference is refused with a message
naming the fields, because mixing two experiments in one directory would make
its curves meaningless.
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
from collections.abc import Callable
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
})


def config_differences(old: Any, new: Any) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a = {key: value for key, value, _doc in describe(old)}
    b = {key: value for key, value, _doc in describe(new)}
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def run_dir_of(cfg: Any) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def prepare_run_dir(cfg: Any, *, world_size: int, is_main: bool,
                    broadcast: Callable[[Any], Any] | None = None) -> Path:
    """Create (or check, when resuming) the run directory; rank 0 locks it first and writes the files.

    ``broadcast`` (``DistContext.broadcast_object``) tells every rank whether rank 0 got the lock.
    """
    run_dir = run_dir_of(cfg)
    lock_run_dir(run_dir, is_main=is_main, broadcast=broadcast)  # one run per directory (speechbs/runlock.py)
    existing = run_dir / "config.toml"
    if existing.is_file():
        changed = [k for k in config_differences(load_config(existing), cfg) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"run directory {run_dir} holds a run with another config: {', '.join(changed)} differ. "
                f"Choose a new --set run.name=..., or delete the directory to start over. Only "
                f"{', '.join(sorted(RESUMABLE_CHANGES))} may change when a run is resumed.")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
        write_env(run_dir, world_size)
    return run_dir


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
