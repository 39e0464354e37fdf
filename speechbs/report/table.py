"""The report table: one row per pretraining run, as Markdown and CSV.

Missing values are ``-`` in Markdown and empty in CSV. WER/CER columns are
named ``WER <split>/<test>`` for every (fine-tuning split, test set) found;
scores of milestone checkpoints go to a second table (hours seen x WER).
"""

from __future__ import annotations

import csv
import io

from speechbs.report.collect import Collected, RunRow

BASE_COLUMNS = ["run", "batch_s", "batch_min", "peak_lr", "steps", "hours_seen", "train_loss", "valid_loss",
                "grad_noise_s", "grad_std"]
HEADERS = {"run": "run", "batch_s": "batch (s)", "batch_min": "batch (min)", "peak_lr": "peak LR",
           "steps": "steps", "hours_seen": "hours seen", "train_loss": "final train loss",
           "valid_loss": "final valid loss", "grad_noise_s": "grad noise B (s)", "grad_std": "grad std"}


def score_columns(collected: Collected) -> list[tuple[str, str]]:
    """(split, test) pairs of final (not milestone) scores, in first-seen order."""
    pairs: list[tuple[str, str]] = []
    for row in collected.rows:
        for score in row.scores:
            if score.milestone_h is None and (score.split, score.test) not in pairs:
                pairs.append((score.split, score.test))
    return pairs


def table_rows(collected: Collected) -> tuple[list[str], list[list[float | int | str | None]]]:
    """Column names and raw values (None where missing)."""
    pairs = score_columns(collected)
    columns = BASE_COLUMNS + [f"{m} {s}/{t}" for s, t in pairs for m in ("WER", "CER")]
    values = []
    for row in collected.rows:
        line: list[float | int | str | None] = [
            row.label, row.batch_s, None if row.batch_s is None else row.batch_s / 60, row.peak_lr, row.steps,
            row.hours_seen, row.train_loss, row.valid_loss, row.grad_noise_s, row.grad_std]
        for split, test in pairs:
            score = _final_score(row, split, test)
            line += [score.wer if score else None, score.cer if score else None]
        values.append(line)
    return columns, values


def _final_score(row: RunRow, split: str, test: str):
    return next((s for s in row.scores if s.milestone_h is None and s.split == split and s.test == test), None)


def _fmt(column: str, value: float | int | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if column in ("steps",):
        return f"{int(value)}"
    if column == "peak_lr":
        return f"{value:.3g}"
    if column.startswith(("WER", "CER")):
        return f"{value:.1f}"
    if column in ("batch_s", "batch_min", "hours_seen"):
        return f"{value:.4g}"
    return f"{value:.4g}"


def markdown(collected: Collected) -> str:
    columns, values = table_rows(collected)
    headers = [HEADERS.get(c, c) for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for line in values:
        lines.append("| " + " | ".join(_fmt(c, v) for c, v in zip(columns, line)) + " |")
    milestones = milestone_markdown(collected)
    if milestones:
        lines += ["", "Milestone checkpoints (fine-tuned at hours seen):", "", milestones]
    if collected.notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in collected.notes]
    return "\n".join(lines) + "\n"


def milestone_markdown(collected: Collected) -> str:
    rows = [(r.label, s) for r in collected.rows for s in r.scores if s.milestone_h is not None]
    if not rows:
        return ""
    lines = ["| run | hours seen | split | test | WER | CER |", "|---|---|---|---|---|---|"]
    for label, s in sorted(rows, key=lambda x: (x[0], x[1].milestone_h, x[1].split, x[1].test)):
        lines.append(f"| {label} | {s.milestone_h:g} | {s.split} | {s.test} | {_fmt('WER', s.wer)} | "
                     f"{_fmt('CER', s.cer)} |")
    return "\n".join(lines)


def to_csv(collected: Collected) -> str:
    columns, values = table_rows(collected)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for line in values:
        writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in line])
    return buffer.getvalue()
