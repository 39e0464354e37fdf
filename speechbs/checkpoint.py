"""Checkpoints: atomic writes, the last k plus milestones, and safe loading.

A checkpoint is one file, ``checkpoints/step_00001234.pt``, holding a plain
dict of tensors and numbers (model, optimizer, planner position, step, hours
seen, the resolved config as TOML, RNG state). It is written to a temporary
name in the same directory, flushed and renamed, so a crash during a save
never destroys the last good checkpoint. ``checkpoints/index.json`` records
which files are milestones (kept forever), which is the latest, and, when a
task selects on a validation metric, the step and score of ``best.pt``.
Loading uses ``torch.load(weights_only=True)``: no code in a checkpoint runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from speechbs.atomic import remove_partial, write_error, write_text
from speechbs.errors import DataError

INDEX = "index.json"
BEST = "best.pt"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def checkpoint_step(path: Path) -> int:
    """The step of ``step_00001234.pt``."""
    return int(path.stem.split("_")[1])


def milestone_checkpoints(run_dir: Path, marks_h: list[float]) -> list[tuple[float, Path]]:
    """(mark in hours, kept checkpoint) for each mark the run has passed.

    The loop keeps a checkpoint at the first step whose hours seen reach a mark;
    its step's ``hours_seen`` is read back from metrics.jsonl.
    """
    index_path = run_dir / "checkpoints" / "index.json"
    if not index_path.is_file() or not marks_h:
        return []
    names = json.loads(index_path.read_text()).get("milestones", [])
    steps = sorted(checkpoint_step(Path(n)) for n in names if (run_dir / "checkpoints" / n).is_file())
    hours = _hours_at_steps(run_dir / "metrics.jsonl", set(steps))
    result = []
    for mark in sorted(marks_h):
        step = next((s for s in steps if hours.get(s, -1.0) >= mark), None)
        if step is not None:
            result.append((mark, run_dir / "checkpoints" / checkpoint_name(step)))
    return result


def _hours_at_steps(metrics: Path, steps: set[int]) -> dict[int, float]:
    hours: dict[int, float] = {}
    if not metrics.is_file():
        return hours
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if row.get("kind", "train") == "train" and row.get("step") in steps and "hours_seen" in row:
            hours[row["step"]] = float(row["hours_seen"])
    return hours


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    state: dict[str, Any],
    *,
    keep_last: int,
    milestone: bool = False,
) -> Path:
    """Write ``state`` for ``step`` atomically, then prune old rolling checkpoints."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / checkpoint_name(step)
    _atomic_save(state, path)
    index = read_index(ckpt_dir)
    if milestone and path.name not in index["milestones"]:
        index["milestones"].append(path.name)
    index["latest"] = path.name
    _write_index(ckpt_dir, index)
    _prune(ckpt_dir, index, keep_last)
    return path


def save_best(ckpt_dir: str | Path, step: int, state: dict[str, Any], *, metric: str, value: float) -> Path:
    """Write ``state`` as ``best.pt`` (atomically) and record which step and score it holds."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / BEST
    _atomic_save(state, path)
    index = read_index(ckpt_dir)
    index["best"] = {"file": BEST, "step": step, "metric": metric, "value": value}
    _write_index(ckpt_dir, index)
    return path


def best_score(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """``{"step", "metric", "value"}`` of ``best.pt``, or None when no best checkpoint was saved."""
    return read_index(Path(ckpt_dir)).get("best")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None. Temporary files of a crashed save are ignored."""
    ckpt_dir = Path(ckpt_dir)
    candidates = sorted(ckpt_dir.glob("step_*.pt")) if ckpt_dir.is_dir() else []
    return candidates[-1] if candidates else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a speechbs checkpoint safely (``weights_only=True``) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise DataError(f"checkpoint {path} is a directory; give a checkpoint file (.pt) or, where a run "
                        f"directory is accepted, the run directory itself")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: say which and why
        raise DataError(f"checkpoint {path} cannot be loaded safely ({load_failure(exc, path)}). If it is a foreign "
                        f"pickled checkpoint, convert it explicitly; speechbs never unpickles code.") from None
    if not isinstance(ckpt, dict):
        raise DataError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a speechbs checkpoint (a dict "
                        f"with 'model' weights and 'config_toml'); give a file written by speechbs pretrain "
                        f"or finetune")
    return ckpt


def load_failure(exc: BaseException, path: Path | None = None) -> str:
    """The useful part of a ``torch.load(weights_only=True)`` error, on one line.

    torch words a refused pickle as a paragraph of advice; what matters is the
    object it refused (``Unsupported global: GLOBAL argparse.Namespace``), or that
    the file is no PyTorch file at all (a zip archive, or a pickle from torch < 1.6).
    """
    if path is not None:
        try:
            with open(path, "rb") as f:
                head = f.read(2)
        except OSError:
            head = b"PK"
        if head[:2] != b"PK" and head[:1] != b"\x80":
            return "not a PyTorch file: neither a zip archive nor a pickle"
    text = str(exc)
    if "Unpickler error:" in text:
        after = [line.strip() for line in text.split("Unpickler error:", 1)[1].splitlines() if line.strip()]
        if after:
            return after[0].split(" was not an allowed global")[0]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def set_aside_after(ckpt_dir: str | Path, step: int) -> Path | None:
    """Move the checkpoints after ``step`` (and ``best.pt`` if it is later) into ``abandoned-<n>/``.

    A restart from an earlier checkpoint (``--restart-from``) abandons the branch of the run after
    it; its files are kept, never deleted, but out of reach of :func:`latest_checkpoint`, pruning
    and the milestone index. The old ``index.json`` goes with them. Returns the folder, or None
    when nothing came after ``step``.
    """
    ckpt_dir = Path(ckpt_dir)
    later = [p for p in sorted(ckpt_dir.glob("step_*.pt")) if checkpoint_step(p) > step]
    index = read_index(ckpt_dir)
    best = index.get("best")
    best_later = best is not None and best["step"] > step and (ckpt_dir / BEST).is_file()
    if not later and not best_later:
        return None
    num = 1 + sum(1 for p in ckpt_dir.glob("abandoned-*") if p.is_dir())
    dest = ckpt_dir / f"abandoned-{num}"
    dest.mkdir()
    _write_index(dest, index)
    for path in reversed(later + ([ckpt_dir / BEST] if best_later else [])):
        os.replace(path, dest / path.name)
    if best_later:
        index.pop("best")
    index["milestones"] = [name for name in index["milestones"] if (ckpt_dir / name).is_file()]
    kept = ckpt_dir / checkpoint_name(step)
    index["latest"] = kept.name if kept.is_file() else None
    _write_index(ckpt_dir, index)
    return dest


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary name, fsync, rename. A failed write (a full disk) removes the partial file
    and raises a StorageError that says which checkpoint is kept."""
    tmp = path.parent / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        previous = path if path.is_file() else latest_checkpoint(path.parent)
        kept = f"the last checkpoint {previous} is kept" if previous else "no earlier checkpoint existed"
        error = write_error(exc, path, tmp, kept=kept)  # before removing tmp: its size tells a full disk
        remove_partial(tmp)
        if error is None:
            raise
        raise error from None


def read_index(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / INDEX
    if path.is_file():
        return json.loads(path.read_text())
    return {"latest": None, "milestones": []}


def _write_index(ckpt_dir: Path, index: dict[str, Any]) -> None:
    write_text(ckpt_dir / INDEX, json.dumps(index, indent=1) + "\n")


def _prune(ckpt_dir: Path, index: dict[str, Any], keep_last: int) -> None:
    rolling = [p for p in sorted(ckpt_dir.glob("step_*.pt")) if p.name not in index["milestones"]]
    for old in rolling[:-keep_last] if keep_last > 0 else rolling:
        old.unlink(missing_ok=True)
