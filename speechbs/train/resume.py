"""Planned changes on resume: other optimizer settings, or a restart from an earlier checkpoint.

Starting a command again on its run directory resumes the run from its latest checkpoint, with the
same config up to :data:`~speechbs.rundir.RESUMABLE_CHANGES` (how long, how often). Two departures
are allowed when the command asks for them, and each is recorded in the run directory:

- ``--allow-change KEY`` (repeatable) accepts a difference in one of
  :data:`~speechbs.rundir.PLANNED_CHANGES`: the learning rate, clipping, the schedule, AdamW's decay
  and epsilon, the precision. The optimizer's state (Adam's moments) is kept and the new value
  applies from the resumed step on. config.toml takes the new values; the one it replaces is kept
  as ``config.prev-<n>.toml``.
- ``--restart-from STEP`` (or ``checkpoints/step_00000400.pt``; ``0`` restarts from the
  initialization) resumes from an earlier checkpoint instead of the latest. The checkpoints after it
  are moved, never deleted, to ``checkpoints/abandoned-<n>/``. The same command started again (a
  requeued job) does not restart twice: when the last restart recorded was from that step with the
  same config, it resumes from the latest checkpoint.

Every resume appends a line to ``resumes.jsonl`` (time, step, checkpoint, the values changed since
that checkpoint as ``[old, new]``, the kept previous config, the set-aside folder) and writes a
``resume`` row into ``metrics.jsonl`` at the resumed step: rows written before it with later steps
no longer count (``speechbs report`` drops them), so the record stays unambiguous after a restart
whose new branch stops short of the abandoned one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from speechbs.checkpoint import checkpoint_name, checkpoint_step, latest_checkpoint, load_checkpoint, set_aside_after
from speechbs.configio import config_from_toml, config_hash, describe
from speechbs.dist import DistContext
from speechbs.errors import ConfigError, SpeechbsError
from speechbs.rundir import PLANNED_CHANGES, RESUMES, config_differences, previous_config_path

LR_CUT = 10.0
"""How much lower the learning rate is that the divergence message proposes. Divergence is a cliff,
not a slope: the tiny model at LR 10 gets an infinite gradient at step 3, at 5 and 3 at step 4,
and at 1 it trains on."""


@dataclass(frozen=True)
class ResumeOptions:
    """What the command line asked of a resume."""

    allow_changes: tuple[str, ...] = ()
    """Keys of PLANNED_CHANGES that may differ from the run's config.toml."""
    restart_from: str | None = None
    """A step, or a checkpoint file of the run, to resume from instead of the latest; None: the latest."""
    command: tuple[str, ...] = ()
    """The arguments after ``speechbs`` that started this run, without the two options above."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--allow-change`` and ``--restart-from``, for ``speechbs pretrain`` and ``speechbs finetune``."""
    parser.add_argument("--allow-change", dest="allow_changes", action="append", default=[], metavar="KEY",
                        help="resume the run although KEY differs from its config.toml: an optimizer, schedule or "
                             "precision field such as optim.lr (repeatable); recorded in resumes.jsonl")
    parser.add_argument("--restart-from", metavar="STEP|CHECKPOINT",
                        help="resume from this earlier checkpoint of the run instead of the latest (a step, or "
                             "checkpoints/step_XXXXXXXX.pt; 0: the initialization); the later checkpoints are "
                             "moved to checkpoints/abandoned-<n>/ and the restart recorded in resumes.jsonl")


def options_from_args(command: str, args: argparse.Namespace) -> ResumeOptions:
    """The resume options of ``speechbs <command>``; an --allow-change key outside PLANNED_CHANGES is an error."""
    keys = tuple(key.strip() for item in args.allow_changes for key in item.split(",") if key.strip())
    refused = [key for key in keys if key not in PLANNED_CHANGES]
    if refused:
        raise ConfigError(f"--allow-change {', '.join(refused)}: a resume may change only "
                          f"{', '.join(sorted(PLANNED_CHANGES))}; batch, data, model and seed fields make another "
                          f"experiment (start it under a new --set run.name=...)")
    argv = [command, args.recipe, *(arg for item in args.overrides for arg in ("--set", item))]
    if getattr(args, "backend", "auto") != "auto":
        argv += ["--backend", args.backend]
    return ResumeOptions(keys, args.restart_from, tuple(argv))


@dataclass(frozen=True)
class Start:
    """Which checkpoint training starts from; rank 0 decides it for every rank."""

    checkpoint: Path | None
    """The file to load; None: the initialization."""
    restart_step: int | None = None
    """Set for a restart: the step whose later checkpoints were set aside."""
    set_aside: Path | None = None
    """Where a restart moved the later checkpoints (None when there were none)."""
    note: str = ""
    """A line for the log (e.g. why a repeated --restart-from resumes from the latest checkpoint)."""


def begin(run_dir: Path, cfg: Any, options: ResumeOptions, ctx: DistContext) -> Start:
    """Choose the checkpoint to start from; for a restart, set the later ones aside (rank 0).

    Rank 0 decides and broadcasts, so every rank loads the same file even when another node sees
    the directory late; an error (a restart from a checkpoint that is not there) reaches every rank.
    """
    decision: Start | SpeechbsError | None = None
    if ctx.is_main:
        try:
            decision = _choose(run_dir, cfg, options)
        except SpeechbsError as exc:
            decision = exc
    with ctx.collective("the broadcast of the checkpoint to start from"):
        decision = ctx.broadcast_object(decision)
    if isinstance(decision, SpeechbsError):
        raise decision
    assert isinstance(decision, Start)
    return decision


def _choose(run_dir: Path, cfg: Any, options: ResumeOptions) -> Start:
    latest = latest_checkpoint(run_dir / "checkpoints")
    if options.restart_from is None:
        return Start(latest)
    step, path = resolve_checkpoint(run_dir, options.restart_from)
    done = _last_restart(run_dir)
    if done is not None and done.get("step") == step and done.get("config_hash") == config_hash(cfg):
        return Start(latest, note=f"--restart-from {options.restart_from}: done at {done.get('time')} with this "
                                  f"config (see {RESUMES}); resuming from the latest checkpoint instead")
    return Start(path, restart_step=step, set_aside=set_aside_after(run_dir / "checkpoints", step))


def resolve_checkpoint(run_dir: Path, spec: str) -> tuple[int, Path | None]:
    """(step, file) of ``--restart-from SPEC``: a step, or a ``step_XXXXXXXX.pt`` in the run's checkpoints/."""
    ckpt_dir = run_dir / "checkpoints"
    if spec.strip().isdigit():
        step = int(spec)
        path = None if step == 0 else ckpt_dir / checkpoint_name(step)
    else:
        given = Path(spec)
        path = next((p for p in (given, run_dir / given) if p.is_file()), run_dir / given)
        if path.is_file() and (path.parent.resolve() != ckpt_dir.resolve()
                               or not re.fullmatch(r"step_\d{8}\.pt", path.name)):
            raise ConfigError(f"--restart-from {spec}: not a checkpoint in {ckpt_dir} (step_XXXXXXXX.pt); a restart "
                              f"goes back on this run's own branch")
        step = checkpoint_step(path) if re.fullmatch(r"step_\d{8}\.pt", path.name) else -1
    if path is not None and not path.is_file():
        have = sorted(checkpoint_step(p) for p in ckpt_dir.glob("step_*.pt")) if ckpt_dir.is_dir() else []
        raise ConfigError(f"--restart-from {spec}: {ckpt_dir} holds no such checkpoint; it has steps "
                          f"{', '.join(map(str, have)) or '(none)'}, and 0 restarts from the initialization")
    return step, path


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / RESUMES
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return rows


def _last_restart(run_dir: Path) -> dict[str, Any] | None:
    return next((row for row in reversed(_records(run_dir)) if row.get("restart")), None)


def record(run_dir: Path, cfg: Any, start: Start, ckpt: dict[str, Any] | None, step: int, log: Any) -> None:
    """Append this resume to resumes.jsonl and mark it in metrics.jsonl (rank 0; ``ckpt`` is what was loaded).

    The changes are those since the checkpoint's own config (for a restart, the config that step was
    trained with), or, without a checkpoint, since the config.toml this launch replaced.
    """
    previous = previous_config_path(run_dir)
    old_toml = ckpt.get("config_toml") if ckpt is not None else None
    if old_toml is None and previous.is_file():
        old_toml = previous.read_text(encoding="utf-8")
    if ckpt is None and old_toml is None and start.restart_step is None:
        return  # a fresh run: nothing resumed, nothing changed
    changes = _changes(old_toml, cfg) if old_toml is not None else {}
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
        "checkpoint": _relative(start.checkpoint, run_dir), "restart": start.restart_step is not None,
        "changes": changes, "config_prev": previous.name if previous.is_file() else None,
        "set_aside": _relative(start.set_aside, run_dir), "config_hash": config_hash(cfg), "argv": sys.argv[1:],
    }
    with open(run_dir / RESUMES, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    log.event(step, "resume", {key: entry[key] for key in ("checkpoint", "restart", "changes", "set_aside")})
    if start.note:
        log.message(start.note)
    shown = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in (changes or {}).items())
    if start.restart_step is not None or shown:  # a plain resume has said so already
        verb = "restarted" if start.restart_step is not None else "resumed"
        aside = f"; the later checkpoints are in {entry['set_aside']}" if start.set_aside is not None else ""
        log.message(f"{verb} at step {step} from {entry['checkpoint'] or 'the initialization'}"
                    f"{aside}{'; changed: ' + shown if shown else ''} (recorded in {RESUMES})")


def _changes(old_toml: str, cfg: Any) -> dict[str, list[Any]] | None:
    try:
        old = config_from_toml(old_toml, "the checkpoint's config")
    except SpeechbsError:
        return None  # written by a speechbs with another schema: the record says "unknown"
    a = {key: value for key, value, _doc in describe(old)}
    b = {key: value for key, value, _doc in describe(cfg)}
    return {key: [a.get(key), b.get(key)] for key in config_differences(old, cfg)}


def _relative(path: Path | None, run_dir: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).relative_to(run_dir))
    except ValueError:
        return str(path)


def divergence_advice(run_dir: Path, cfg: Any, options: ResumeOptions, first_bad_step: int) -> str:
    """The end of the divergence error: the checkpoint to restart from and the command that does it.

    The forward of step ``first_bad_step`` ran on the weights after step ``first_bad_step - 1``, and
    gave NaN or inf: that checkpoint (and any saved later, while steps were skipped) would fail
    again whatever the LR. A checkpoint of step s is a good start when step s + 1 was still finite,
    i.e. s <= first_bad_step - 2, and its tensors are finite (checked by loading it).
    """
    ckpt_dir = run_dir / "checkpoints"
    candidates = sorted(ckpt_dir.glob("step_*.pt")) if ckpt_dir.is_dir() else []
    step, path = 0, None
    for candidate in reversed([p for p in candidates if checkpoint_step(p) <= first_bad_step - 2]):
        if _finite(candidate):
            step, path = checkpoint_step(candidate), candidate
            break
    lr = f"{cfg.optim.lr / LR_CUT:.3g}"
    argv = _without_key(list(options.command) or ["pretrain", "RECIPE"], "optim.lr")
    command = f"{_launcher()} {shlex.join([*argv, '--set', f'optim.lr={lr}', '--allow-change', 'optim.lr', '--restart-from', str(step)])}"
    where = (f"step {step} ({path}, the newest checkpoint whose next step still had a finite loss and gradient)"
             if path is not None else
             f"the initialization (no checkpoint from before step {first_bad_step - 1} with finite weights is kept)")
    return (f"restart from {where} with a tenth of the learning rate:\n  {command}\n"
            f"The checkpoints after step {step} are moved to checkpoints/abandoned-<n>/ and the change is recorded "
            f"in {RESUMES}. In place of (or besides) a lower LR: a longer schedule.warmup_steps, optim.clip_norm > 0, "
            f"or train.precision=bf16 instead of fp16, each with --allow-change KEY.")


def _finite(path: Path) -> bool:
    try:
        ckpt = load_checkpoint(path)
    except SpeechbsError:
        return False
    tensors = list(ckpt["model"].values()) + [value for state in ckpt["optimizer"]["state"].values()
                                              for value in state.values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def _without_key(argv: list[str], key: str) -> list[str]:
    """``argv`` without its ``--set KEY=...`` pairs."""
    out: list[str] = []
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--set" and index + 1 < len(argv) and argv[index + 1].split("=", 1)[0].strip() == key:
            skip = True
            continue
        out.append(arg)
    return out


def _launcher() -> str:
    """How this process was started, as the start of a command line."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun [the same torchrun options] -m speechbs"
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "srun [the same srun options] python -m speechbs"
    if sys.argv and sys.argv[0].endswith("__main__.py"):
        return f"{shlex.quote(Path(sys.executable).name)} -m speechbs"
    return "speechbs"
