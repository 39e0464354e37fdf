"""The four report plots (matplotlib, Agg backend: no display needed).

- ``wer_vs_batch.png``: WER (and CER, dashed) of each (split, test) against the pretraining batch, log x;
- ``wer_vs_hours.png``: WER against hours of audio seen in pretraining (final and milestone
  checkpoints), log x: the seed study's "data seen" view;
- ``grad_noise_vs_batch.png``: the per-parameter gradient std against the batch, log-log, with
  the 1/sqrt(2)-per-doubling slope the seed study found up to ~40 min, and beside it the
  gradient noise scale B_simple (s of audio) against the batch with the B_simple = batch line;
- ``loss_curves.png``: pretraining train loss per batch size against steps and against hours seen.

A plot with nothing to show is still written, with a line saying what is missing.
"""

from __future__ import annotations

import math
from pathlib import Path

from speechbs.report.collect import Collected
from speechbs.report.table import score_columns

PLOT_NAMES = ("wer_vs_batch.png", "wer_vs_hours.png", "grad_noise_vs_batch.png", "loss_curves.png")


def write_plots(collected: Collected, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    writers = (_wer_vs_batch, _wer_vs_hours, _noise_vs_batch, _loss_curves)
    paths = []
    for name, writer in zip(PLOT_NAMES, writers):
        fig = writer(plt, collected)
        path = out_dir / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=10, wrap=True)


def _wer_vs_batch(plt, collected: Collected):
    fig, ax = plt.subplots(figsize=(6, 4))
    pairs = score_columns(collected)
    for split, test in pairs:
        for metric, style in (("wer", "-"), ("cer", "--")):  # CER too: small models sit near 100% WER
            points = sorted((r.batch_s, getattr(s, metric)) for r in collected.rows for s in r.scores
                            if r.batch_s is not None and getattr(s, metric) is not None and s.milestone_h is None
                            and s.split == split and s.test == test)
            if points:
                ax.plot(*zip(*points), marker="o", linestyle=style, label=f"{metric.upper()} {split} / {test}")
    ax.set_xscale("log")
    ax.set_xlabel("pretraining batch (s of audio per step)")
    ax.set_ylabel("WER (solid) / CER (dashed), %")
    ax.set_title("WER and CER vs batch size")
    if pairs:
        ax.legend(title="fine-tune / test")
    else:
        _empty(ax, "no score.json found: no fine-tuned and scored runs yet")
    return fig


def _wer_vs_hours(plt, collected: Collected):
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for row in collected.rows:
        for split, test in {(s.split, s.test) for s in row.scores}:
            points = sorted((s.hours_seen, s.wer) for s in row.scores if s.split == split and s.test == test
                            and s.hours_seen and s.wer is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{row.label}: {split} / {test}")
                drawn = True
    ax.set_xlabel("hours of audio seen in pretraining")
    ax.set_ylabel("WER (%)")
    ax.set_title("WER vs hours seen")
    if drawn:
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no scored runs with hours seen yet")
    return fig


def _noise_vs_batch(plt, collected: Collected):
    """Left: gradient std against the batch (the seed study's figure); right: B_simple against it.

    The std of a step's gradient falls as 1/sqrt(batch) while the batch is noise-dominated (the
    dashed slope); where it stops falling, more audio per step no longer buys a better gradient.
    B_simple is a property of the model at that point of training, not of the batch: a point
    above the dashed diagonal (batch = B_simple) trained below its critical batch, one below it
    beyond.
    """
    fig, (std_ax, scale_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, attr, key, ylabel, title in (
            (std_ax, "grad_std", "grad_std", "gradient std per parameter", "gradient std vs batch size"),
            (scale_ax, "grad_noise_s", "grad_noise_scale_s", "gradient noise scale B_simple (s)",
             "critical batch estimate vs batch")):
        ax.set_xlabel("pretraining batch (s of audio per step)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        points = sorted((r.batch_s, getattr(r, attr)) for r in collected.rows
                        if r.batch_s is not None and getattr(r, attr) is not None and getattr(r, attr) > 0)
        if not points:
            _empty(ax, f"no {key} in metrics.jsonl\n(set train.grad_noise_every > 0;\n"
                       "needs >= 2 micro-batches per step)")
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label="measured (median of the last rows)")
        if attr == "grad_std":  # pure noise: a factor 1/sqrt(2) per doubling, through the first point
            ax.plot(xs, [ys[0] * (x / xs[0]) ** -0.5 for x in xs], linestyle="--", color="gray",
                    label="1/sqrt(2) per doubling")
        else:
            low, high = min(min(xs), min(ys)), max(max(xs), max(ys))
            ax.plot([low, high], [low, high], linestyle="--", color="gray", label="B_simple = batch")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    return fig


def _loss_curves(plt, collected: Collected):
    fig, (by_step, by_hours) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for row in collected.rows:
        if not row.curve:
            continue
        steps, hours, losses = zip(*row.curve)
        label = f"{row.batch_s:g} s" if row.batch_s is not None else row.label
        by_step.plot(steps, losses, label=label, linewidth=1)
        by_hours.plot(hours, losses, label=label, linewidth=1)
        drawn = True
    by_step.set_xlabel("optimizer step")
    by_hours.set_xlabel("hours of audio seen")
    for ax in (by_step, by_hours):
        ax.set_ylabel("pretraining train loss")
    fig.suptitle("pretraining loss per batch size")
    if drawn:
        by_step.legend(title="batch")
    else:
        _empty(by_step, "no metrics.jsonl with train losses found")
    return fig


def batch_axis(ax, batches_s) -> None:
    """A log batch axis ticked at the batch sizes that ran (15, 30, 60 s), not at powers of ten."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted({float(b) for b in batches_s if b})
    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}" for t in ticks])


def fixed_state_axes(axes, records: list[dict]) -> None:
    """grad std, B_simple and grad RMS against the batch, one line per ``noise.json`` record, with intervals.

    Each record is one checkpoint measured at every batch size (``speechbs noise``): a fixed model
    state, so the 1/sqrt(2)-per-doubling line applies to its std and is drawn through its points.
    """
    std_ax, b_ax, rms_ax = axes
    batches = []
    for record in records:
        rows = [r for r in record.get("batches", []) if r.get("grad_std")]
        if not rows:
            continue
        xs = [r["batch_s"] for r in rows]  # the std is computed at the real seconds; the axis names the setting
        batches += [r["batch_s"] for r in rows]
        label = f"step {record.get('step')} ({record.get('hours_seen') or 0:.3g} h seen)"
        for ax, key in ((std_ax, "grad_std"), (b_ax, "b_simple_s"), (rms_ax, "grad_rms")):
            points = [(x, r[key], r.get(f"{key}_ci") or [None, None]) for x, r in zip(xs, rows) if r.get(key)]
            if not points:
                continue
            px, py, ci = zip(*points)
            low = [y - (c[0] if c[0] is not None else y) for y, c in zip(py, ci)]
            high = [(c[1] if c[1] is not None else 10 * y) - y for y, c in zip(py, ci)]  # unbounded: a long bar
            line = ax.errorbar(px, py, yerr=[low, high], marker="o", capsize=3, label=label)
            if key == "grad_std":  # fixed state: the std of a mean of independent targets
                anchor_x = math.exp(sum(math.log(x) for x in px) / len(px))
                anchor_y = math.exp(sum(math.log(y) for y in py) / len(py))
                ax.plot(px, [anchor_y * (x / anchor_x) ** -0.5 for x in px], linestyle="--",
                        color=line.lines[0].get_color(), alpha=0.6)
    if not batches:
        for ax in axes:
            _empty(ax, "no noise.json with measurements")
        return
    b_ax.plot(sorted(batches), sorted(batches), linestyle=":", color="gray", label="B_simple = batch")
    titles = (("gradient std per parameter (dashed: 1/sqrt(2) per doubling)", "grad std"),
              ("critical batch B_simple (s of audio)", "B_simple (s)"),
              ("RMS of the batch-mean gradient", "grad RMS"))
    for ax, (title, ylabel) in zip(axes, titles):
        batch_axis(ax, batches)
        ax.set_yscale("log")
        ax.set_xlabel("batch (s of audio per step)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)


def write_noise_plot(record: dict, path: Path) -> Path:
    """``noise.png`` of one ``speechbs noise`` run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    fixed_state_axes(axes, [record])
    fig.suptitle(f"gradient noise at a fixed state: {record.get('model')} {Path(str(record.get('checkpoint'))).name}, "
                 f"{record.get('repeats')} batches per size (95% intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
