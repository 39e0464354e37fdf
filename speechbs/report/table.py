"""The report table: one row per group of pretraining runs that differ only by seed, as Markdown and CSV.

A group of several seeds shows mean ± sample sd; missing values are ``-`` in Markdown and empty in CSV. WER/CER columns are
named ``WER <split>/<test>`` for every (fine-tuning split, test set) found;
scores of milestone checkpoints go to a second table (hours seen x WER).
"""

from __future__ import annotations

import csv
import io

from speechbs.report.collect import Collected, mean_sd

BASE_COLUMNS = ["run", "seeds", "batch_s", "batch_min", "peak_lr", "steps", "hours_seen", "train_loss",
                "valid_loss", "noise_hours", "grad_noise_s", "grad_std"]
HEADERS = {"run": "run", "seeds": "seeds", "schedule": "batch schedule", "batch_s": "batch (s)", "batch_min": "batch (min)", "peak_lr": "peak LR",
           "steps": "steps", "hours_seen": "hours seen", "train_loss": "final train loss",
           "valid_loss": "final valid loss", "noise_hours": "noise at (h seen)", "grad_noise_s": "grad noise B (s)",
           "grad_std": "grad std"}
_ROW_ATTRS = ("batch_s", "batch_min", "peak_lr", "steps", "hours_seen", "train_loss", "valid_loss", "noise_hours",
              "grad_noise_s", "grad_std")

Cell = tuple[float | None, float | None]
"""(mean, sample sd) over a group's seeds; sd None for a single run."""


def score_columns(collected: Collected) -> list[tuple[str, str]]:
    """(split, test) pairs of final (not milestone) scores, in first-seen order."""
    pairs: list[tuple[str, str]] = []
    for row in collected.rows:
        for score in row.scores:
            if score.milestone_h is None and (score.split, score.test) not in pairs:
                pairs.append((score.split, score.test))
    return pairs


def probe_tasks(collected: Collected) -> list[str]:
    """Probe task names found in any run, in first-seen order."""
    return list(dict.fromkeys(task for row in collected.rows for task in row.probes))


def table_rows(collected: Collected) -> tuple[list[str], list[list[str | int | Cell]]]:
    """Column names and, per group of seeds, its label, its number of runs and a (mean, sd) per column."""
    pairs = score_columns(collected)
    tasks = probe_tasks(collected)
    # The schedule column only when some run's batch moved (its "batch (s)" is the recipe's batch.seconds:
    # a ramp's end, an adaptive run's first batch).
    schedules = any(r.schedule != "constant" for r in collected.rows)
    columns = (BASE_COLUMNS[:2] + ["schedule"] * schedules + BASE_COLUMNS[2:]
               + [f"{m} {s}/{t}" for s, t in pairs for m in ("WER", "CER")]
               + [f"probe {task} acc %" for task in tasks])
    values = []
    for group in collected.groups:
        line: list[str | int | Cell] = [group.label, len(group.rows)]
        if schedules:
            line.append(" / ".join(dict.fromkeys(r.schedule for r in group.rows)))
        for attr in _ROW_ATTRS:
            if attr == "batch_min":
                line.append(mean_sd([b / 60 for b in group.values("batch_s")]))
            else:
                line.append(mean_sd(group.values(attr)))
        for split, test in pairs:
            line += [mean_sd(group.score_values(split, test, "wer")), mean_sd(group.score_values(split, test, "cer"))]
        for task in tasks:
            line.append(mean_sd([100 * r.probes[task] for r in group.rows if task in r.probes]))
        values.append(line)
    return columns, values


def _number(column: str, value: float) -> str:
    if column == "steps":
        return f"{value:.0f}"
    if column == "peak_lr":
        return f"{value:.3g}"
    if column.startswith(("WER", "CER", "probe")):
        return f"{value:.1f}"
    return f"{value:.4g}"


def _fmt(column: str, value: str | int | Cell) -> str:
    if not isinstance(value, tuple):
        return str(value)
    mean, sd = value
    if mean is None:
        return "-"
    # Equal over the seeds (the batch, the LR, the steps): the spread says nothing, so none is shown.
    return _number(column, mean) + (f" ± {_number(column, sd)}" if sd else "")


def markdown(collected: Collected) -> str:
    columns, values = table_rows(collected)
    headers = [HEADERS.get(c, c) for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for line in values:
        lines.append("| " + " | ".join(_fmt(c, v) for c, v in zip(columns, line)) + " |")
    if any(len(g.rows) > 1 for g in collected.groups):
        lines += ["", "Runs that differ only by seed are one line: mean ± sample sd over the seeds."]
    milestones = milestone_markdown(collected)
    if milestones:
        lines += ["", "At equal hours seen (milestone checkpoints, and final ones where a mark fell on the last step):",
                  "", milestones]
    if collected.notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in collected.notes]
    return "\n".join(lines) + "\n"


def milestone_markdown(collected: Collected) -> str:
    """Scores at equal hours seen: per mark, one line per group of seeds (mean ± sd)."""
    keys = sorted({(s.milestone_h, s.split, s.test) for r in collected.rows for s in r.scores
                   if s.milestone_h is not None})
    if not keys:
        return ""
    lines = ["| hours seen | run | seeds | split | test | WER | CER |", "|---|---|---|---|---|---|---|"]
    for mark, split, test in keys:
        for group in collected.groups:
            wer = group.score_values(split, test, "wer", milestone_h=mark)
            cer = group.score_values(split, test, "cer", milestone_h=mark)
            if wer or cer:
                lines.append(f"| {mark:g} | {group.label} | {max(len(wer), len(cer))} | {split} | {test} | "
                             f"{_fmt('WER', mean_sd(wer))} | {_fmt('CER', mean_sd(cer))} |")
    return "\n".join(lines)


def to_csv(collected: Collected) -> str:
    """One line per group: the mean of each column and, beside it, ``<column>_sd`` (empty for one run)."""
    columns, values = table_rows(collected)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for c, v in zip(columns, values[0] if values else columns)
                     for name in ((c, f"{c}_sd") if isinstance(v, tuple) else (c,))])
    for line in values:
        cells: list[str | int] = []
        for value in line:
            if isinstance(value, tuple):  # (mean, sd)
                mean, sd = value
                cells += ["" if mean is None else f"{mean:.6g}", "" if sd is None else f"{sd:.6g}"]
            else:  # the label, the number of seeds, the schedule
                cells.append(value)
        writer.writerow(cells)
    return buffer.getvalue()
