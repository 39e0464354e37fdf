"""Reading run directories into rows: every number comes from a file in a run directory.

A RUN given to ``speechbs report`` is a sweep root (it has ``points/``), one
pretraining run directory (it has ``config.toml``), or a directory whose
subdirectories are run directories. Per pretraining run the row holds the
batch (``config.toml`` batch.seconds), the peak LR (optim.lr, lr_rule,
reference_seconds), steps and hours seen (the last train row of
``metrics.jsonl``), the final train loss (mean of the last N train rows), the
final valid loss (the last valid row), the gradient noise scale and the
gradient std (medians of the last N measurements of ``grad_noise_scale_s`` and
``grad_std``), and WER/CER from every
``decode/<split>/<test>/score.json`` of a sweep point. Anything missing is
None in the row and a line in ``notes``, never an exception.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LAST_ROWS = 10
"""How many of the last train rows (or noise measurements) make a "final" value."""


@dataclass
class Score:
    split: str
    """Fine-tuning split (``train``, ``10min``); ``milestone_h`` set for a milestone checkpoint."""
    test: str
    wer: float | None
    cer: float | None
    milestone_h: float | None = None
    hours_seen: float | None = None
    """Hours of audio the pretrained checkpoint had seen (the milestone, else the run's total)."""


@dataclass
class RunRow:
    label: str
    run_dir: Path
    batch_s: float | None = None
    peak_lr: float | None = None
    steps: int | None = None
    num_steps: int | None = None
    hours_seen: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    grad_noise_s: float | None = None
    """Gradient noise scale B_simple, s of audio."""
    grad_std: float | None = None
    """Per-parameter std of the step's gradient, averaged over parameters (the seed study's figure)."""
    scores: list[Score] = field(default_factory=list)
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    """(step, hours seen, train loss) for every train row: the loss curve plots."""


@dataclass
class Collected:
    rows: list[RunRow]
    notes: list[str]


def collect(paths: list[str | Path], last_rows: int = LAST_ROWS) -> Collected:
    rows: list[RunRow] = []
    notes: list[str] = []
    for path in map(Path, paths):
        if (path / "points").is_dir():
            for point in sorted((path / "points").iterdir(), key=_point_order):
                if point.is_dir():
                    rows.append(read_point(point, notes, last_rows))
        elif (path / "config.toml").is_file() or (path / "metrics.jsonl").is_file():
            rows.append(read_run(path, path.name, notes, last_rows))
        elif path.is_dir() and any((c / "config.toml").is_file() for c in path.iterdir()):
            for child in sorted(path.iterdir()):
                if (child / "config.toml").is_file():
                    rows.append(read_run(child, child.name, notes, last_rows))
        else:
            notes.append(f"{path}: not a sweep root, a run directory or a directory of run directories; skipped")
    rows.sort(key=lambda r: (r.batch_s if r.batch_s is not None else math.inf, r.label))
    return Collected(rows, notes)


def _point_order(path: Path) -> tuple[float, str]:
    config = _read_toml(path / "pretrain" / "config.toml")
    return (float(config.get("batch", {}).get("seconds", math.inf)) if config else math.inf, path.name)


def read_point(point_dir: Path, notes: list[str], last_rows: int = LAST_ROWS) -> RunRow:
    """A sweep point: its pretraining run plus every score under ``decode/``."""
    row = read_run(point_dir / "pretrain", point_dir.name, notes, last_rows)
    row.run_dir = point_dir
    decode_dir = point_dir / "decode"
    for score_path in sorted(decode_dir.glob("*/*/score.json")) if decode_dir.is_dir() else []:
        split_tag, test = score_path.parent.parent.name, score_path.parent.name
        split, _, tag = split_tag.partition("@")
        milestone_h = float(tag.rstrip("h")) if tag else None
        data = _read_json(score_path, notes)
        if data is None:
            continue
        row.scores.append(Score(split, test, _number(data.get("wer")), _number(data.get("cer")), milestone_h,
                                milestone_h if milestone_h is not None else row.hours_seen))
    if decode_dir.is_dir():
        for decoded in sorted(decode_dir.glob("*/*")):
            if decoded.is_dir() and not (decoded / "score.json").is_file():
                notes.append(f"{point_dir.name}: {decoded.relative_to(point_dir)} has no score.json (not scored yet)")
    elif (point_dir / "pretrain").is_dir():
        notes.append(f"{point_dir.name}: no decode/ directory: not fine-tuned and scored yet")
    return row


def read_run(run_dir: Path, label: str, notes: list[str], last_rows: int = LAST_ROWS) -> RunRow:
    row = RunRow(label=label, run_dir=run_dir)
    config = _read_toml(run_dir / "config.toml")
    if config is None:
        notes.append(f"{label}: {run_dir / 'config.toml'} is missing or unreadable: batch and LR unknown")
    else:
        row.batch_s = _number(config.get("batch", {}).get("seconds"))
        row.num_steps = config.get("train", {}).get("num_steps")
        row.peak_lr = _peak_lr(config.get("optim", {}), row.batch_s)
    train, valid = _read_metrics(run_dir / "metrics.jsonl", label, notes)
    if train:
        row.steps = int(train[-1]["step"])
        row.hours_seen = _number(train[-1].get("hours_seen"))
        losses = [r["loss"] for r in train[-last_rows:] if _finite(r.get("loss"))]
        row.train_loss = statistics.fmean(losses) if losses else None
        row.curve = [(int(r["step"]), float(r.get("hours_seen", math.nan)), float(r["loss"]))
                     for r in train if _finite(r.get("loss"))]
        row.grad_noise_s = _last_median(train, "grad_noise_scale_s", last_rows)
        row.grad_std = _last_median(train, "grad_std", last_rows)
    if valid:
        row.valid_loss = _number(valid[-1].get("loss"))
    if row.steps is not None and row.num_steps and row.steps < row.num_steps:
        notes.append(f"{label}: pretraining stopped at step {row.steps} of {row.num_steps} (unfinished)")
    return row


def _last_median(rows: list[dict], key: str, last_rows: int) -> float | None:
    """Median of the last ``last_rows`` finite values of ``key`` (measured every k steps only)."""
    values = [r[key] for r in rows if _finite(r.get(key))]
    return statistics.median(values[-last_rows:]) if values else None


def _peak_lr(optim: dict[str, Any], batch_s: float | None) -> float | None:
    """The same rule as speechbs.train.schedule.peak_lr, from the saved config's numbers."""
    lr, rule, reference = optim.get("lr"), optim.get("lr_rule", "none"), optim.get("reference_seconds")
    if lr is None or batch_s is None or not reference:
        return None
    exponent = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}.get(rule)
    return None if exponent is None else float(lr) * (batch_s / float(reference)) ** exponent


def _read_metrics(path: Path, label: str, notes: list[str]) -> tuple[list[dict], list[dict]]:
    if not path.is_file():
        notes.append(f"{label}: {path} is missing: no losses, steps or hours")
        return [], []
    train, valid, num_bad = [], [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            num_bad += 1  # e.g. the last line of a run killed mid-write
            continue
        if not isinstance(row, dict) or "step" not in row:
            continue
        (valid if row.get("kind") == "valid" else train).append(row)
    if num_bad:
        notes.append(f"{label}: {num_bad} unreadable line(s) in {path} skipped")
    return train, valid


def _read_toml(path: Path) -> dict | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None


def _read_json(path: Path, notes: list[str]) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"{path}: unreadable ({exc.__class__.__name__}); skipped")
        return None
    return data if isinstance(data, dict) else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float | None:
    return float(value) if _finite(value) else None
