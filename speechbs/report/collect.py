"""Reading run directories into rows: every number comes from a file in a run directory.

A RUN given to ``speechbs report`` is a sweep root (it has ``points/``), one
pretraining run directory (it has ``config.toml``), or a directory whose
subdirectories are run directories. Per pretraining run the row holds the
batch (``config.toml`` batch.seconds), the peak LR (optim.lr, lr_rule,
reference_seconds), steps and hours seen (the last train row of
``metrics.jsonl``; a step logged twice, as a resumed run replays the steps after
its last checkpoint, counts once with its last record, and a ``resume`` row at
step k drops the rows before it with steps after k: after a restart from an
earlier checkpoint they are an abandoned branch), the final train loss
(mean of the last N train rows), the final valid loss (the last valid row), WER/CER
from every ``decode/<split>/<test>/score.json`` of a sweep point, and every
``noise.json`` of ``speechbs noise`` under the point's or run's ``noise/``.

Gradient noise is compared like with like. The online ``noise_*`` values of
different runs are taken at matched hours seen: each run's windowed value at
its measurement nearest (in log hours) to the largest hours seen that every
measuring run reached; the table's "noise at" column says which. Runs that differ only in ``run.seed`` form a :class:`Group`, whose
numbers are mean and sample sd over its seeds. Anything missing is None in the
row and a line in ``notes``, never an exception.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechbs.checkpoint import checkpoint_step, milestone_checkpoints

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
    from_final: bool = False
    """The final model's score listed again at a mark it was kept for (plotted once, as the final)."""


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
    noise_hours: float | None = None
    """Hours seen of the online measurement behind ``grad_noise_s`` and ``grad_std`` (the matched hours)."""
    scores: list[Score] = field(default_factory=list)
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    """(step, hours seen, train loss) for every train row: the loss curve plots."""
    noise_series: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    """(hours seen, windowed B_simple s, windowed grad std at the run's batch) of every online measurement."""
    fixed_noise: list[dict] = field(default_factory=list)
    """``noise.json`` records of this run's checkpoints (fixed-state measurements)."""
    probes: dict[str, float] = field(default_factory=dict)
    """Probe task -> test accuracy in [0, 1] (``probe/<task>/probe.json`` of ``speechbs probe``)."""
    seed: int | None = None
    """``run.seed`` of the pretraining run."""
    schedule: str = "constant"
    """The batch schedule in words (``batch.schedule``): ``constant``, ``ramp 15->60 s / 100 steps``,
    ``adaptive 30->120 s`` (its first and last scheduled batch)."""
    group_key: str = ""
    """The config without :data:`NOT_THE_EXPERIMENT` (the seed, the run's place, the checkpoints it keeps):
    equal for runs that differ only by seed."""


@dataclass
class Group:
    """Runs that differ only by seed: one line of the table, one point (mean +- sd) of each plot."""

    label: str
    rows: list[RunRow]

    @property
    def batch_s(self) -> float | None:
        return self.rows[0].batch_s

    def values(self, attr: str) -> list[float]:
        return [v for v in (getattr(r, attr) for r in self.rows) if v is not None]

    def score_values(self, split: str, test: str, metric: str, milestone_h: float | None = None) -> list[float]:
        return [getattr(s, metric) for r in self.rows for s in r.scores
                if s.split == split and s.test == test and s.milestone_h == milestone_h
                and getattr(s, metric) is not None]


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample sd (None for one value: no spread is known)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Collected:
    rows: list[RunRow]
    notes: list[str]
    groups: list[Group] = field(default_factory=list)
    matched_hours: float | None = None
    """Hours seen at which the online gradient noise of the runs is compared; None when none measured it."""


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
    collected = Collected(rows, notes, groups=group_rows(rows))
    collected.matched_hours = match_noise_hours(rows, notes)
    return collected


def group_rows(rows: list[RunRow]) -> list[Group]:
    """Runs with equal ``group_key`` (all but the seed) in one group, in row order."""
    groups: dict[str, list[RunRow]] = {}
    for row in rows:
        groups.setdefault(row.group_key or row.label, []).append(row)
    out = []
    for members in groups.values():
        labels = {re.sub(r"-seed-?\d+$", "", r.label) for r in members}
        out.append(Group(labels.pop() if len(labels) == 1 else members[0].label, members))
    return out


def match_noise_hours(rows: list[RunRow], notes: list[str]) -> float | None:
    """Set each row's online noise values at the hours every measuring run reached; return those hours."""
    measured = [r for r in rows if any(b is not None and h > 0 for h, b, _ in r.noise_series)]
    if not measured:
        return None
    matched = min(max(h for h, b, _ in r.noise_series if b is not None) for r in measured)
    for row in measured:
        usable = [m for m in row.noise_series if m[0] > 0 and m[1] is not None]
        hours, b_simple, grad_std = min(usable, key=lambda m: abs(math.log(m[0] / matched)))
        row.grad_noise_s, row.grad_std, row.noise_hours = b_simple, grad_std, hours
    if len(measured) > 1:
        notes.append(f"online gradient noise (grad noise B, grad std) compared at {matched:.3g} h seen, the most "
                     f"that every measuring run reached: different models at equal audio seen; the fixed-state "
                     f"figure (speechbs noise) compares one model across batch sizes")
    return matched


def _point_order(path: Path) -> tuple[float, str]:
    config = _read_toml(path / "pretrain" / "config.toml")
    return (float(config.get("batch", {}).get("seconds", math.inf)) if config else math.inf, path.name)


def read_point(point_dir: Path, notes: list[str], last_rows: int = LAST_ROWS) -> RunRow:
    """A sweep point: its pretraining run plus every score under ``decode/``."""
    row = read_run(point_dir / "pretrain", point_dir.name, notes, last_rows)
    row.run_dir = point_dir
    row.fixed_noise += [record for path in sorted(point_dir.glob("noise/**/noise.json"))
                        if (record := _read_json(path, notes)) is not None]
    for path in sorted(point_dir.glob("probe/*/probe.json")):
        record = _read_json(path, notes)
        if record is not None and _number(record.get("accuracy")) is not None:
            row.probes[str(record.get("task") or path.parent.name)] = float(record["accuracy"])
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
    row.scores += _final_as_milestones(point_dir / "pretrain", row)
    if decode_dir.is_dir():
        for decoded in sorted(decode_dir.glob("*/*")):
            if decoded.is_dir() and not (decoded / "score.json").is_file():
                notes.append(f"{point_dir.name}: {decoded.relative_to(point_dir)} has no score.json (not scored yet)")
    elif (point_dir / "pretrain").is_dir():
        notes.append(f"{point_dir.name}: no decode/ directory: not fine-tuned and scored yet")
    return row


def _final_as_milestones(pretrain_dir: Path, row: RunRow) -> list[Score]:
    """The final model's scores again at each hours mark whose kept checkpoint is the last one.

    The sweep does not fine-tune that checkpoint twice, but the milestone table and the
    equal-hours comparison list the point at that mark too.
    """
    config = _read_toml(pretrain_dir / "config.toml") or {}
    marks = config.get("train", {}).get("milestone_hours", [])
    last = row.num_steps or row.steps
    extra = []
    for mark, ckpt in milestone_checkpoints(pretrain_dir, [float(m) for m in marks]):
        if checkpoint_step(ckpt) != last:
            continue
        extra += [Score(s.split, s.test, s.wer, s.cer, mark, mark, from_final=True) for s in row.scores
                  if s.milestone_h is None and not any(t.milestone_h == mark and (t.split, t.test) == (s.split, s.test)
                                                       for t in row.scores)]
    return extra


def read_run(run_dir: Path, label: str, notes: list[str], last_rows: int = LAST_ROWS) -> RunRow:
    row = RunRow(label=label, run_dir=run_dir)
    config = _read_toml(run_dir / "config.toml")
    if config is None:
        notes.append(f"{label}: {run_dir / 'config.toml'} is missing or unreadable: batch and LR unknown")
    else:
        row.seed = config.get("run", {}).get("seed")
        row.group_key = _group_key(config)
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
        if config is not None:
            row.schedule = _schedule_words(config.get("batch", {}), train)
        row.noise_series = [(float(r.get("hours_seen", math.nan)), _number(r.get("noise_b_simple_s")),
                             _number(r.get("noise_grad_std_at_batch"))) for r in train if "noise_window" in r]
    if valid:
        row.valid_loss = _number(valid[-1].get("loss"))
    row.fixed_noise = [record for path in sorted(run_dir.glob("noise/**/noise.json"))
                       if (record := _read_json(path, notes)) is not None]
    if row.steps is not None and row.num_steps and row.steps < row.num_steps:
        notes.append(f"{label}: pretraining stopped at step {row.steps} of {row.num_steps} (unfinished)")
    return row


def _schedule_words(batch: dict[str, Any], train: list[dict]) -> str:
    """``batch.schedule`` in a few words, with the batches the run actually had scheduled."""
    kind = batch.get("schedule", "constant")
    targets = [r["batch_target_s"] for r in train if _finite(r.get("batch_target_s"))]
    if kind == "ramp":
        ramp = batch.get("ramp", {})
        span = f"{ramp.get('steps')} steps" if ramp.get("steps") else f"{ramp.get('hours'):g} h"
        return f"ramp {float(ramp.get('start_seconds', 0)):g}->{float(batch.get('seconds', 0)):g} s / {span}"
    if kind == "adaptive":
        return f"adaptive {targets[0]:g}->{targets[-1]:g} s" if targets else "adaptive"
    return str(kind)


NOT_THE_EXPERIMENT = ("run.seed", "run.name", "run.output_dir", "train.milestone_steps", "train.milestone_hours",
                      "train.checkpoint_every", "train.keep_last", "train.log_every", "data.num_workers",
                      "train.collective_timeout_s")
"""Config keys that say where a run lives and which checkpoints it keeps, not what it learns: runs that
differ only in these (and the seed) are one group. (A point whose checkpoints a [[noise]] stage measures
keeps more milestones than its other seeds.)"""


def _group_key(config: dict[str, Any]) -> str:
    """The config without :data:`NOT_THE_EXPERIMENT`: equal for runs that differ only by seed."""
    kept = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    for dotted in NOT_THE_EXPERIMENT:
        section, key = dotted.split(".", 1)
        if isinstance(kept.get(section), dict):
            kept[section].pop(key, None)
    return json.dumps(kept, sort_keys=True, default=str)


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
        if row.get("kind") == "resume":
            # Training went on from this step's checkpoint: rows written before with later steps are
            # replays or, after a restart from an earlier checkpoint, an abandoned branch.
            train = [r for r in train if r["step"] <= row["step"]]
            valid = [r for r in valid if r["step"] <= row["step"]]
            continue
        (valid if row.get("kind") == "valid" else train).append(row)
    if num_bad:
        notes.append(f"{label}: {num_bad} unreadable line(s) in {path} skipped")
    return _last_per_step(train), _last_per_step(valid)


def _last_per_step(rows: list[dict]) -> list[dict]:
    """One record per step, the last one written: a resume replays the steps after its checkpoint."""
    last = {}
    for row in rows:
        last[row["step"]] = row
    return sorted(last.values(), key=lambda r: r["step"])


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
