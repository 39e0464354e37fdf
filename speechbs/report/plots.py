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
